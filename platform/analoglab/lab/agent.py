"""The lab agent: the lab's process that runs approved jobs on its frontier models.

It only ever calls out to the hub (nothing calls in): it long-polls for the next approved job
of its lab, holds the job's lease with heartbeats while the executor runs it, checks the result
against the release checks (:mod:`.release`) and posts it (or, when a check fails, reports it
withheld and keeps it on the lab site), and gives the job back when the run fails (an attempt
counted) or when it is told to stop (no attempt counted).

- **Warm workers and claim-ahead.** The agent claims up to ``agent.batch`` approved jobs in
  one call (``POST /api/labs/{lab}/claims``: long-polling for the first, taking those then
  waiting, in the queue's fair order; from a hub without that endpoint, one claim after
  another) and runs them grouped by frontier, so jobs for one model run back to back in one
  warm worker that loaded the weights once. Every held lease is renewed while any of them
  waits or runs.
- **Batched execution.** Where the executor can run several jobs as one batch (the local
  one, ``executor.batch_tokens`` > 0), the jobs claimed together are planned into groups
  (:func:`analoglab.experiments.batching.plan_groups`, in claim order: the queue's fair
  order): shareable jobs for the same frontier run as one batch, their forward passes shared;
  any other job (ablation, patching, the mapped methods, a job whose result waits in the
  outbox) runs alone. Each job of a batch gets its own outcome, and each result goes through
  the same release checks, outbox and signature as a job run alone; the results that pass
  are posted together (``POST /api/labs/{lab}/results``, each answered on its own; from a hub
  without that endpoint, one post each). A batch's results are checked and posted in the
  background while the executor runs the next group (:meth:`Agent._hand_over`): at most one
  batch's delivery is in flight, and its jobs stay held (leases renewed) until it ends; the
  next claim is made once the executor is free, so the claims keep the queue's fair order,
  and goes first (the delivery waits for its answer, at most :data:`CLAIM_HEAD_START`).
- **The hub unreachable** (connection errors, 5xx, 503 from a busy database): every call is
  retried with exponential backoff (capped at ``agent.backoff_max_seconds``).
- **Nothing lost.** A result that passed the release checks is written to the site's outbox
  (:mod:`.outbox`) before it is posted and removed only once the hub has it (posting is
  idempotent on the hub). On start the agent replays what a crash or a stop left there: under
  the stored lease while it holds, else when it claims the same job (same spec hash) again —
  the stored result is posted and the frontier is not run twice.
- **A lost lease** (the hub answers 409: the lease expired and the job went to another agent):
  the agent stops the run and forgets the job; the hub has given it to someone else.
- **Stopping** (SIGTERM/SIGINT, or :meth:`Agent.stop`): the running job is cancelled and given
  back with every claimed-ahead job, then :meth:`Agent.run` returns.
- **Frontiers verified when it starts.** With an executor that keeps a warm worker (the local
  one), the agent first has it load each frontier of the site and verify its hook layout
  (:meth:`Agent.verify_frontiers`), logging each layout's summary, before it claims anything;
  a frontier whose layout fails its self-test is logged with the failing invariant and not
  served — the agent claims no job for it — while the others are. With the
  Kubernetes executor each Job's worker verifies the layout when it loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import tenacity
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analoglab.errors import ConfigError
from analoglab.experiments.batching import JobShape, plan_groups
from analoglab.files import atomic_write
from analoglab.lab.config import LabConfig
from analoglab.lab.executor import BatchRunner, Executor, Outcome, Preloader, Task
from analoglab.lab.outbox import Entry, Outbox
from analoglab.lab.release import (
    Checked,
    checked_release,
    for_release,
    sign_checked,
)
from analoglab.models.catalog import FrontierPolicy
from analoglab.queue.client import QueueClient
from analoglab.queue.errors import QueueError
from analoglab.signing import key_id, load_or_create_private_key, public_key_text

log = logging.getLogger("analoglab.lab.agent")
T = TypeVar("T")

#: What a reason sent to the hub may hold; the full text stays in the agent's log.
REASON_CHARS = 500
#: How long a stopping agent keeps trying to land a result or a give-back.
STOP_GRACE_SECONDS = 20.0
#: Job states in which an outbox entry may still be posted (after the job is claimed again).
REPLAYABLE_STATES = frozenset({"approved", "running"})
#: Results posted in one call to the hub's results endpoint: at most this many, and this many
#: bytes of JSON (under the hub's default 1 MiB request cap); a larger result goes alone.
POST_RESULTS = 64
POST_BYTES = 512 * 1024
#: What a post holds beside its result, at most: job id, lease id, signature and key id.
POST_FIELDS_BYTES = 512
#: How long a batch's delivery lets the next claim go first (the claim keeps the executor
#: busy; the two would wait on each other at the hub): until it is answered, at most this.
CLAIM_HEAD_START = 0.2


def _short(reason: str, limit: int = REASON_CHARS) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


class Stopping(Exception):
    """The agent was told to stop while waiting for the hub."""


@dataclass
class AgentStats:
    """What one :meth:`Agent.run` did."""

    claimed: int = 0
    posted: int = 0
    withheld: int = 0
    failed: int = 0
    given_back: int = 0
    lost: int = 0
    replayed: int = 0  # results posted from the outbox instead of running the frontier again
    undeliverable: int = 0
    hub_retries: int = 0
    # Frontiers of the site it verified when it started: id → layout summary, and the
    # frontiers it does not serve: id → why (the failing invariant).
    frontiers_verified: dict[str, str] = field(default_factory=dict)
    frontiers_refused: dict[str, str] = field(default_factory=dict)
    outcomes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Held:
    """A job this agent holds a lease on."""

    job: dict[str, Any]
    lease_id: str
    claimed_at: float  # monotonic time the claim call began
    lost: threading.Event = field(default_factory=threading.Event)
    # Set when the lease is lost or the agent stops: the executor stops the run.
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> int:
        return int(self.job["id"])


def _retryable(exc: QueueError) -> bool:
    return exc.status == 0 or exc.status >= 500 or exc.status == 429


class Agent:
    """Claims, runs, checks and posts the lab's jobs; see the module docstring."""

    def __init__(
        self,
        config: LabConfig,
        client: QueueClient,
        executor: Executor,
        *,
        withheld_dir: Path | None = None,
        outbox_dir: Path | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        policy_ttl: float = 60.0,
    ) -> None:
        """``outbox_dir`` defaults to ``outbox`` beside ``withheld_dir`` (the site's folder);
        ``signing_key`` to the site's key (``signing_key`` in lab.toml, created on first use).
        """
        self.config = config
        self.client = client
        self.executor = executor
        self.withheld_dir = withheld_dir
        if outbox_dir is None and withheld_dir is not None:
            outbox_dir = withheld_dir.parent / "outbox"
        self.outbox = Outbox(outbox_dir) if outbox_dir is not None else None
        if signing_key is None and config.signing_key is not None:
            signing_key = load_or_create_private_key(config.signing_key)
        self.signing_key = signing_key
        self.stats = AgentStats()
        self._stop = threading.Event()
        self._done = threading.Event()  # run() returned: heartbeats end
        self._held: dict[int, _Held] = {}
        self._lock = threading.RLock()  # stop() may take it from a signal handler
        self._policies: dict[str, tuple[float, FrontierPolicy]] = {}
        self._policy_ttl = policy_ttl
        self._bulk_claims = True  # until a hub answers that it has no claims endpoint
        self._bulk_results = True  # likewise for its results endpoint
        self._refused: dict[str, str] = {}  # frontiers not served: id → why
        self._delivering: threading.Thread | None = None  # a batch's delivery in flight
        self._claimed = threading.Event()  # the next claim was answered (or is not next)
        self._counting = threading.Lock()  # the stats' counters, kept from two threads

    # -- control ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to give back what it holds and return (signal-handler safe)."""
        self._stop.set()
        with self._lock:
            for held in self._held.values():
                held.cancel.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _count(self, what: str) -> None:
        """One more of ``what`` in :attr:`stats` (from the main loop or a delivery)."""
        with self._counting:
            setattr(self.stats, what, getattr(self.stats, what) + 1)

    def run(self, max_jobs: int | None = None, idle_exit: float | None = None) -> AgentStats:
        """Serve until stopped (or ``max_jobs`` finished, or idle for ``idle_exit`` seconds)."""
        cfg = self.config.agent
        if not self.config.models:
            raise ConfigError(
                f'lab site {self.config.lab} serves no frontier: add [models."<id>"] with its '
                "weights to lab.toml"
            )
        if self.signing_key is not None:
            log.info(
                "results are signed with key %s (%s): the hub's catalog must list it for lab %s",
                key_id(self.signing_key),
                public_key_text(self.signing_key),
                self.config.lab,
            )
        self.verify_frontiers()
        self._done.clear()
        beat = threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True)
        beat.start()
        idle_since = time.monotonic()
        done = 0
        try:
            with contextlib.suppress(Stopping):
                done += self._replay()
            while not self.stopping and (max_jobs is None or done < max_jobs):
                room = cfg.batch if max_jobs is None else min(cfg.batch, max_jobs - done)
                try:
                    batch = self._claim_batch(cfg.wait_seconds, room)
                except Stopping:
                    break
                finally:
                    self._claimed.set()
                if not batch:
                    if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                        break
                    continue
                for group in self._groups(batch):
                    if self.stopping:
                        break
                    self._claimed.set()  # what runs next is this group, not a claim
                    if len(group) == 1:
                        self._work(group[0])
                    else:
                        self._work_batch(group)
                    done += len(group)
                idle_since = time.monotonic()
        except BaseException:
            self._stop.set()  # a delivery in flight stops retrying an unreachable hub too
            raise
        finally:
            self._claimed.set()
            self._await_delivery()
            self._stop.set()
            self._give_back_all("the lab agent is stopping")
            self._done.set()
            beat.join(timeout=5)
        return self.stats

    def verify_frontiers(self) -> dict[str, str]:
        """Have the executor load each frontier of the site and verify its layout, before any
        claim (only where it keeps a warm worker: :class:`~.executor.Preloader`); the
        frontiers refused, id → why. A frontier whose layout fails its self-test is not
        served; if none is left, a :class:`ConfigError` says why each failed. A load that
        fails otherwise (weights missing, a crash) is logged, and the frontier served: its
        jobs fail with the reason, as they would have."""
        if not isinstance(self.executor, Preloader):
            return {}
        for frontier in sorted(self.config.models):
            if self.stopping:
                break
            weights = self.config.models[frontier]
            task = Task(
                job_id=0,
                frontier=frontier,
                spec={},
                weights=str(weights.path),
                weights_sha256=weights.sha256,
            )
            try:
                outcome = self.executor.preload(task, self._stop)
            except Exception as exc:  # an executor bug: say so, serve the frontier as before
                log.exception("%s: the executor could not load it ahead of jobs", frontier)
                outcome = Outcome("cancelled", reason=str(exc))
            if outcome.ok:
                summary = str(outcome.details.get("summary") or "loaded (no layout report)")
                self.stats.frontiers_verified[frontier] = summary
                log.info("%s: %s (loaded in %.1f s)", frontier, summary, outcome.seconds)
            elif outcome.details.get("layout_refused"):
                self._refused[frontier] = outcome.reason
                self.stats.frontiers_refused[frontier] = outcome.reason
                log.error("%s: not served by this site: %s", frontier, outcome.reason)
            elif outcome.status == "failed":  # weights missing, a crash: each job says why
                log.warning("%s: could not be loaded ahead of jobs: %s", frontier, outcome.reason)
        if self._refused and len(self._refused) == len(self.config.models):
            why = "; ".join(f"{k}: {v}" for k, v in sorted(self._refused.items()))
            raise ConfigError(f"lab site {self.config.lab} can serve none of its frontiers: {why}")
        return dict(self._refused)

    @property
    def served(self) -> list[str]:
        """The frontiers this site claims jobs for: its [models], less those refused."""
        return sorted(f for f in self.config.models if f not in self._refused)

    # -- talking to the hub -------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], *, must_land: bool = False) -> T:
        """``fn()`` retried with backoff while the hub is unreachable or failing.

        The waits double from 0.5 s up to ``agent.backoff_max_seconds`` (tenacity). A stop
        ends the retries (:class:`Stopping`), except for calls that ``must_land`` (a result, a
        give-back), which keep trying a little longer, at most every 2 s: the lease or
        :data:`STOP_GRACE_SECONDS`, whichever is shorter. Any other refusal is raised at once.
        """
        grace = min(float(self.config.agent.lease_seconds), STOP_GRACE_SECONDS)
        give_up_at: list[float] = []  # set when the stop is first seen
        backoff = tenacity.wait_exponential(
            multiplier=0.5, max=self.config.agent.backoff_max_seconds
        )

        def retry_it(exc: BaseException) -> bool:
            if isinstance(exc, QueueError) and _retryable(exc):
                self._count("hub_retries")
                return True
            return False

        def stopped(state: tenacity.RetryCallState) -> bool:
            if not self.stopping:
                return False
            if not must_land:
                return True
            if not give_up_at:
                give_up_at.append(time.monotonic() + grace)
            return time.monotonic() > give_up_at[0]

        def wait(state: tenacity.RetryCallState) -> float:
            delay = backoff(state)
            return min(delay, 2.0) if self.stopping else delay

        def sleep(seconds: float) -> None:
            if self.stopping:
                time.sleep(seconds)
            else:
                self._stop.wait(seconds)  # a stop cuts the wait short

        def say(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s: %s; retrying in %.1f s", what, exc, delay)

        def gave_up(state: tenacity.RetryCallState) -> T:
            raise Stopping()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry_it),
            stop=stopped,
            wait=wait,
            sleep=sleep,
            before_sleep=say,
            retry_error_callback=gave_up,
        )
        return retrying(fn)

    def _claim_batch(self, wait: float, room: int) -> list[_Held]:
        """Up to ``room`` jobs: one call to the hub's claims endpoint (the same lease ids on
        every retry: a lost answer costs nothing); a hub without it (404, 405: older than the
        agent) is claimed from one job at a time from then on."""
        cfg = self.config.agent
        lab = self.config.lab
        mine = self.served  # only jobs for frontiers this site has weights for (and verified)
        if room > 1 and self._bulk_claims:
            began = time.monotonic()
            keys = [secrets.token_hex(16) for _ in range(room)]
            try:
                claims = self._call(
                    "claim",
                    lambda: self.client.claim_many(
                        lab,
                        room,
                        wait=wait,
                        lease_seconds=cfg.lease_seconds,
                        frontiers=mine,
                        lease_ids=keys,
                    ),
                )
            except QueueError as exc:
                if exc.status not in (404, 405):
                    raise
                log.info("the hub claims one job at a time (%s)", exc)
                self._bulk_claims = False
            else:
                return [self._hold(claim, began) for claim in claims]
        began = time.monotonic()
        key = secrets.token_hex(16)  # the same key on every retry: a lost answer costs nothing
        first = self._call(
            "claim",
            lambda: self.client.claim(
                lab, wait=wait, lease_seconds=cfg.lease_seconds, frontiers=mine, lease_id=key
            ),
        )
        if first is None:
            return []
        batch = [self._hold(first, began)]
        while len(batch) < room and not self.stopping:
            began = time.monotonic()
            more_key = secrets.token_hex(16)
            more = self._call(
                "claim",
                lambda key=more_key: self.client.claim(  # type: ignore[misc]
                    lab, wait=0, lease_seconds=cfg.lease_seconds, frontiers=mine, lease_id=key
                ),
            )
            if more is None:
                break
            batch.append(self._hold(more, began))
        return batch

    def _hold(self, claim: dict[str, Any], began: float) -> _Held:
        held = _Held(claim["job"], claim["lease_id"], began)
        with self._lock:
            self._held[held.id] = held
        self._count("claimed")
        log.info(
            "job %s (%s, %s): claimed", held.id, held.job["frontier"], held.job["spec"]["method"]
        )
        return held

    def _release_hold(self, held: _Held) -> None:
        with self._lock:
            self._held.pop(held.id, None)

    def _heartbeats(self) -> None:
        cfg = self.config.agent
        while not self._done.wait(cfg.heartbeat_seconds):
            with self._lock:
                holding = list(self._held.values())
            for held in holding:
                try:
                    self.client.heartbeat(held.id, held.lease_id, cfg.lease_seconds)
                except QueueError as exc:
                    if exc.status in (404, 409):
                        log.warning("job %s: lease lost (%s); stopping it", held.id, exc)
                        held.lost.set()
                        held.cancel.set()
                    elif not _retryable(exc):
                        log.warning("job %s: heartbeat refused: %s", held.id, exc)
                    # unreachable: try again at the next beat; the lease may still hold
                except Exception:  # never let the heartbeats die: every lease would expire
                    log.exception("job %s: heartbeat failed", held.id)

    def policy(self, frontier: str) -> FrontierPolicy:
        """The frontier's effective policy from the hub (cached for a minute)."""
        now = time.monotonic()
        cached = self._policies.get(frontier)
        if cached is not None and now - cached[0] < self._policy_ttl:
            return cached[1]
        data = self._call("policy", lambda: self.client.policy(frontier))
        pol = FrontierPolicy.model_validate(data)
        self._policies[frontier] = (now, pol)
        return pol

    # -- the outbox ---------------------------------------------------------------------------

    def _replay(self) -> int:
        """Deliver what a crash or a stop left in the outbox; how many results landed."""
        if self.outbox is None:
            return 0
        landed = 0
        for entry in self.outbox.pending():
            if self.stopping:
                break
            log.info(
                "job %s: replaying its finished result from %s", entry.job_id, self.outbox.folder
            )
            held = _Held(self.outbox.job(entry), entry.lease_id, time.monotonic())
            if self._deliver(held, entry, replay=True):
                landed += 1
        return landed

    def _stored(self, held: _Held) -> Entry | None:
        """The outbox's result for a claimed job, if it answers the same spec."""
        if self.outbox is None:
            return None
        entry = self.outbox.get(held.id)
        if entry is None:
            return None
        if entry.spec_hash != str(held.job["spec_hash"]):
            self.outbox.undeliverable(entry, "the job now asks a different spec")
            self._count("undeliverable")
            return None
        return entry

    def _wire(self, entry: Entry, checked: Checked) -> dict[str, Any]:
        """What posting ``entry`` sends: the job, its lease, the result and, where the site has
        a key, the lab's signature over the result (over the canonical bytes its release
        checks made: ``checked``)."""
        post: dict[str, Any] = {
            "job_id": entry.job_id,
            "lease_id": entry.lease_id,
            "result": entry.result,
        }
        if self.signing_key is not None:
            signed = sign_checked(self.signing_key, checked)
            post |= {"signature": signed.signature, "key_id": signed.key_id}
        return post

    def _post(self, entry: Entry, wire: dict[str, Any]) -> tuple[str, str]:
        """Post an outbox entry under its lease (``wire``: its :meth:`_wire` form):
        ``posted``, ``refused``, ``kept`` or ``lost``, with the hub's answer.

        ``refused`` (422: the hub's checks refused it) is left to the caller; ``kept`` means
        the hub stayed unreachable while the agent stopped (the entry waits for the next
        start); ``lost`` means the lease has gone (the entry waits for a re-claim of the same
        job, or is moved aside when the job can no longer take it).
        """
        try:
            out = self._call(
                "post result",
                lambda: self.client.post_result(
                    entry.job_id,
                    entry.result,
                    lease_id=entry.lease_id,
                    signature=wire.get("signature"),
                    key_id=wire.get("key_id"),
                ),
                must_land=True,
            )
        except Stopping:
            return self._unreachable(entry)
        except QueueError as exc:
            return self._answered(entry, {"status": exc.status, "detail": str(exc)})
        return self._answered(entry, {"status": 200, "state": out["state"]})

    def _post_all(self, pending: list[tuple[Entry, Checked]]) -> list[tuple[str, str]]:
        """Post several outbox entries, each with its result as the release checks left it:
        per entry what :meth:`_post` answers. They go in as
        few calls to the hub's results endpoint as its bounds allow (:data:`POST_RESULTS`,
        :data:`POST_BYTES`), each stored by the hub in one transaction; one entry, a result
        too large to share a call, or a hub without that endpoint, one post each."""
        lab = self.config.lab
        out: dict[int, tuple[str, str]] = {}
        calls: list[list[tuple[Entry, dict[str, Any]]]] = []
        size = 0
        for entry, checked in pending:
            post = self._wire(entry, checked)
            # its size on the wire: the result's canonical JSON (httpx >= 0.28 sends it compact
            # and as UTF-8, no longer than these ASCII escapes; an older httpx adds a space
            # after each separator, well inside POST_BYTES's half of the hub's 1 MiB cap) and
            # the post's other fields
            n = len(checked.canonical) + POST_FIELDS_BYTES
            if not calls or len(calls[-1]) >= POST_RESULTS or size + n > POST_BYTES:
                calls.append([])
                size = 0
            calls[-1].append((entry, post))
            size += n
        for call in calls:
            if len(call) == 1 or not self._bulk_results:
                for entry, post in call:
                    out[entry.job_id] = self._post(entry, post)
                continue
            posts = [post for _, post in call]
            try:
                answers = self._call(
                    "post results",
                    lambda posts=posts: self.client.post_results(lab, posts),  # type: ignore[misc]
                    must_land=True,
                )
            except Stopping:
                for entry, _ in call:
                    out[entry.job_id] = self._unreachable(entry)
                continue
            except QueueError as exc:
                if exc.status in (404, 405):
                    log.info("the hub takes one result a call (%s)", exc)
                    self._bulk_results = False
                if exc.status in (404, 405, 413):
                    for entry, post in call:
                        out[entry.job_id] = self._post(entry, post)
                    continue
                for entry, _ in call:
                    out[entry.job_id] = self._answered(
                        entry, {"status": exc.status, "detail": str(exc)}
                    )
                continue
            for (entry, _), answer in zip(call, answers, strict=True):
                out[entry.job_id] = self._answered(entry, answer)
        if self.outbox is not None:  # what the hub has leaves the outbox (one folder sync)
            self.outbox.done_many(e.job_id for e, _ in pending if out[e.job_id][0] == "posted")
        return [out[entry.job_id] for entry, _ in pending]

    def _unreachable(self, entry: Entry) -> tuple[str, str]:
        log.warning(
            "job %s: the hub stayed unreachable; the result waits in the outbox "
            "for the agent's next start",
            entry.job_id,
        )
        return "kept", "the hub is unreachable"

    def _answered(self, entry: Entry, answer: dict[str, Any]) -> tuple[str, str]:
        """What the hub's answer to an entry's post means (see :meth:`_post`); a posted
        entry leaves the outbox in :meth:`_post_all`."""
        status = int(answer["status"])
        if status == 200:
            self._count("posted")
            log.info("job %s: result posted; now %s", entry.job_id, answer["state"])
            return "posted", str(answer["state"])
        why = str(answer.get("detail") or f"HTTP {status}")
        if status == 422:
            return "refused", why
        if status not in (404, 409):
            log.error(
                "job %s: the hub refused the result (%s); it stays in the outbox",
                entry.job_id,
                why,
            )
            return "kept", why
        self._lease_gone(entry, QueueError(why, status=status))
        return "lost", why

    def _lease_gone(self, entry: Entry, why: QueueError) -> None:
        """The hub took no result under the entry's lease: wait for a re-claim, or give up."""
        if self.outbox is None:
            return
        try:
            state = str(self._call("job state", lambda: self.client.get(entry.job_id))["state"])
        except QueueError as exc:
            if exc.status == 404:
                self.outbox.undeliverable(entry, f"the hub does not know job {entry.job_id}")
                self._count("undeliverable")
            return
        except Stopping:
            return
        if state in REPLAYABLE_STATES:
            log.warning(
                "job %s: result not taken (%s); it stays in the outbox and is posted "
                "when this site claims the job again",
                entry.job_id,
                why,
            )
        else:
            self.outbox.undeliverable(entry, f"the lease was lost and the job is {state}")
            self._count("undeliverable")

    # -- batches ------------------------------------------------------------------------------

    def _groups(self, batch: list[_Held]) -> list[list[_Held]]:
        """The claimed jobs in the groups they run in: with a batching executor, shareable
        jobs for one frontier together (see the module docstring); else (or batching off)
        one by one, grouped by frontier so one warm worker serves each in turn."""
        tokens = self.executor.batch_tokens if isinstance(self.executor, BatchRunner) else 0
        if tokens <= 0:
            return [[h] for h in sorted(batch, key=lambda h: (str(h.job["frontier"]), h.id))]
        by_id = {h.id: h for h in batch}
        shapes = []
        for h in batch:
            frontier = str(h.job["frontier"])
            weights = self.config.models.get(frontier)
            alone = (
                weights is None
                or h.lost.is_set()
                or (self.outbox is not None and self.outbox.get(h.id) is not None)
            )
            spec = {"method": ""} if alone else h.job["spec"]
            shapes.append(JobShape(h.id, frontier, str(weights.path) if weights else "", spec))
        return [[by_id[k] for k in group] for group in plan_groups(shapes, tokens)]

    def _task(self, held: _Held) -> Task | None:
        """The executor's task for a held job (None, the job failed, without weights)."""
        frontier = str(held.job["frontier"])
        weights = self.config.models.get(frontier)
        if weights is None:
            self._fail(held, f"this lab site has no weights configured for {frontier!r}")
            return None
        return Task(
            job_id=held.id,
            frontier=frontier,
            spec=held.job["spec"],
            weights=str(weights.path),
            weights_sha256=weights.sha256,
            maps=None if self.config.maps is None else str(self.config.maps),
        )

    def _work_batch(self, group: list[_Held]) -> None:
        """Run a group of shareable jobs for one frontier as one batch; each job's outcome
        then goes its own way, exactly as :meth:`_work` takes a job run alone."""
        assert isinstance(self.executor, BatchRunner)
        tasks = [self._task(h) for h in group]
        ready = [(h, t) for h, t in zip(group, tasks, strict=True) if t is not None]
        if not ready:
            return
        log.info("jobs %s: running as one batch", ", ".join(str(h.id) for h, _ in ready))
        try:
            outcomes = self.executor.run_batch([t for _, t in ready], self._stop)
        except Exception as exc:  # an executor bug must fail the jobs, not the agent
            log.exception("jobs %s: the executor failed", [h.id for h, _ in ready])
            outcomes = [Outcome("failed", reason=f"the lab's executor failed: {exc}")] * len(ready)
        finished = []
        for (held, _), outcome in zip(ready, outcomes, strict=True):
            got = self._finish(held, outcome, deliver=False)
            if got is not None:
                finished.append((held, *got))
        if finished:
            self._hand_over(finished)

    def _hand_over(self, finished: list[tuple[_Held, Entry, dict[str, Any]]]) -> None:
        """Deliver a batch's finished results (:meth:`_deliver_batch`) in the background, so
        that the executor can run the next group meanwhile; first wait for the delivery before
        (at most one in flight: the hub is not sent more than the executor makes)."""
        self._await_delivery()
        self._claimed.clear()
        thread = threading.Thread(
            target=self._deliver_batch, args=(finished,), name="deliver", daemon=True
        )
        self._delivering = thread
        thread.start()

    def _await_delivery(self) -> None:
        """Wait for the batch's delivery in flight, if any."""
        thread, self._delivering = self._delivering, None
        if thread is not None:
            thread.join()

    def _deliver_batch(self, finished: list[tuple[_Held, Entry, dict[str, Any]]]) -> None:
        """Put a batch's results in the outbox (together: one sync of its folder), then check
        and post them, each job's hold ended after its own, once the next claim has been
        answered (at most :data:`CLAIM_HEAD_START` later). This runs beside the executor's
        next batch, so neither the disk nor the hub holds that batch up."""
        try:
            if self.outbox is not None:
                self.outbox.put_many([entry for _, entry, _ in finished])
            self._claimed.wait(CLAIM_HEAD_START)
            # the batch's results go to the hub together: one call, one transaction there
            self._deliver_all([(held, entry) for held, entry, _ in finished])
        except Exception as exc:  # a delivery bug must fail the jobs, not the agent
            log.exception("jobs %s: delivering the results failed", [h.id for h, _, _ in finished])
            for held, _, _ in finished:
                with self._lock:
                    holding = held.id in self._held
                if holding:
                    self._fail(held, f"the lab agent could not deliver the result: {exc}")
            return
        for held, _, record in finished:
            self._done_with(held, record)

    # -- one job ------------------------------------------------------------------------------

    def _work(self, held: _Held) -> None:
        if held.lost.is_set():  # claimed ahead, and its lease went while it waited
            self._count("lost")
            self._release_hold(held)
            return
        stored = self._stored(held)
        if stored is not None:
            log.info("job %s: its result is already in the outbox; posting it, no run", held.id)
            stored.lease_id = held.lease_id
            if self.outbox is not None:
                self.outbox.put(stored)
            self._deliver(held, stored, replay=True)
            return
        task = self._task(held)
        if task is None:
            return
        log.info("job %s: running", held.id)
        try:
            outcome = self.executor.run(task, held.cancel)
        except Exception as exc:  # an executor bug must fail the job, not the agent
            log.exception("job %s: the executor failed", held.id)
            outcome = Outcome("failed", reason=f"the lab's executor failed: {exc}")
        self._finish(held, outcome)

    def _finish(
        self, held: _Held, outcome: Outcome, *, deliver: bool = True
    ) -> tuple[Entry, dict[str, Any]] | None:
        """Take a run's outcome: post or withhold the result (release checks, outbox), fail
        the job, or drop it (lease lost, cancelled). With ``deliver`` off a result is returned
        as an outbox entry with the job's record, for the caller to put in the outbox and
        deliver (:meth:`_deliver_batch`)."""
        job = held.job
        frontier = str(job["frontier"])
        record: dict[str, Any] = {
            "job_id": held.id,
            "status": outcome.status,
            "seconds": outcome.seconds,
            **outcome.details,
        }
        self.stats.outcomes.append(record)
        if held.lost.is_set():
            self._count("lost")
            self._release_hold(held)
            log.warning("job %s: the lease was lost; the hub gave it to another agent", held.id)
            return None
        if outcome.status == "cancelled":
            return None  # given back by _give_back_all as the agent stops
        if not outcome.ok:
            self._fail(held, outcome.reason)
            return None
        assert outcome.result is not None
        entry = Entry(
            job_id=held.id,
            spec_hash=str(job["spec_hash"]),
            frontier=frontier,
            lease_id=held.lease_id,
            spec=job["spec"],
            result=outcome.result,
        )
        if not deliver:
            return entry, record  # the batch's delivery puts it in the outbox first
        try:
            if self.outbox is not None:
                self.outbox.put(entry)  # on disk before anything else: a crash loses nothing
            self._deliver(held, entry)
        except Exception as exc:
            log.exception("job %s: delivering the result failed", held.id)
            self._fail(held, f"the lab agent could not deliver the result: {exc}")
            return None
        self._done_with(held, record)
        return None

    def _done_with(self, held: _Held, record: dict[str, Any]) -> None:
        log.info("job %s: done in %.1f s", held.id, record["seconds"])
        record["claim_to_done_seconds"] = round(time.monotonic() - held.claimed_at, 4)

    def _deliver(self, held: _Held, entry: Entry, *, replay: bool = False) -> bool:
        """Check ``entry``'s result and post it (or withhold it); whether it was posted."""
        return self._deliver_all([(held, entry)], replay=replay)[0]

    def _deliver_all(
        self, pending: list[tuple[_Held, Entry]], *, replay: bool = False
    ) -> list[bool]:
        """:meth:`_deliver` for several jobs: each result checked on its own, those that pass
        posted together (:meth:`_post_all`); per job whether its result was posted."""
        ready: list[tuple[int, Checked]] = []
        for k, (held, entry) in enumerate(pending):
            try:
                pol = self.policy(str(held.job["frontier"]))
            except Stopping:
                continue  # given back as the agent stops; the entry waits for the next start
            checked = self._settle(
                held, entry, partial(self._checked, held, entry, pol), release=False
            )
            if checked is not None:
                ready.append((k, checked))
        landed = [False] * len(pending)
        answers = self._post_all([(pending[k][1], c) for k, c in ready]) if ready else []
        for (k, _), (posted, answer) in zip(ready, answers, strict=True):
            held, entry = pending[k]
            step = partial(self._took, held, entry, posted, answer, replay)
            landed[k] = bool(self._settle(held, entry, step, release=True))
        return landed

    def _checked(self, held: _Held, entry: Entry, pol: FrontierPolicy) -> Checked | None:
        """Put ``entry``'s result through the release checks: withheld (None), or made what
        the hub stores, defaults filled in, which is what is posted and signed (its
        :class:`Checked`, with the canonical bytes the signature covers)."""
        job = held.job
        entry.result = for_release(entry.result, self.config.release)
        checked = checked_release(
            entry.result,
            spec=job["spec"],
            spec_hash=str(job["spec_hash"]),
            policy=pol,
            config=self.config.release,
        )
        if isinstance(checked, list):
            self._withhold(held, entry.result, "; ".join(checked))
            return None
        entry.result = checked.result
        return checked

    def _took(self, held: _Held, entry: Entry, posted: str, answer: str, replay: bool) -> bool:
        """Act on a post's outcome (:meth:`_post`); whether the result landed."""
        if posted == "refused":
            # The hub's own checks refused it: no rerun makes it pass; withhold it.
            self._withhold(held, entry.result, f"the hub refused the result: {answer}")
        elif posted == "posted":
            if replay:
                self._count("replayed")
            return True
        elif posted == "lost":
            self._count("lost")
        return False

    def _settle(
        self, held: _Held, entry: Entry, step: Callable[[], T | None], *, release: bool
    ) -> T | None:
        """Run one step of a job's delivery and give back what it gave (None where the hub
        was unreachable or refused: that is taken here). The job's hold ends after it when
        ``release`` or when the step did not go on (gave nothing, or False)."""
        ok: T | None = None
        try:
            ok = step()
        except Stopping:
            log.warning("job %s: the hub stayed unreachable; its lease will expire", held.id)
        except QueueError as exc:
            if exc.status in (404, 409):
                self._count("lost")
                self._lease_gone(entry, exc)
            else:
                log.error("job %s: the hub refused the result: %s", held.id, exc)
                self._fail(held, f"the hub refused the result: {exc}")
        finally:
            if release or not ok:
                self._release_hold(held)
        return ok

    def _withhold(self, held: _Held, result: dict[str, Any], reason: str) -> None:
        self._keep(held, result, reason)
        short = _short(reason, 2000)
        self._call(
            "withhold",
            lambda: self.client.withhold(held.id, short, lease_id=held.lease_id),
            must_land=True,
        )
        if self.outbox is not None:
            self.outbox.done(held.id)  # kept among the withheld results instead
        self._count("withheld")
        log.warning("job %s: withheld by the lab's release checks: %s", held.id, reason)

    def _keep(self, held: _Held, result: dict[str, Any], reason: str) -> None:
        """Keep a withheld result on the lab site, for the lab's own eyes."""
        if self.withheld_dir is None:
            return
        self.withheld_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps({"reason": reason, "result": result}, indent=2) + "\n"
        atomic_write(self.withheld_dir / f"job-{held.id}.json", text, perms=0o600)

    def _fail(self, held: _Held, reason: str) -> None:
        self._count("failed")
        log.warning("job %s: failed: %s", held.id, reason)
        short = _short(reason)
        try:
            self._call(
                "give back",
                lambda: self.client.give_back(
                    held.id, lease_id=held.lease_id, reason=short, error=True
                ),
                must_land=True,
            )
        except (QueueError, Stopping) as exc:
            log.warning(
                "job %s: could not give it back (%s); its lease will expire",
                held.id,
                exc or "the hub is unreachable",
            )
        self._release_hold(held)

    def _give_back_all(self, reason: str) -> None:
        with self._lock:
            holding = list(self._held.values())
            self._held.clear()
        for held in holding:
            if held.lost.is_set():
                continue
            try:
                self.client.give_back(held.id, lease_id=held.lease_id, reason=reason)
                self._count("given_back")
                log.info("job %s: given back", held.id)
            except QueueError as exc:
                log.warning(
                    "job %s: could not give it back (%s); its lease will expire", held.id, exc
                )
