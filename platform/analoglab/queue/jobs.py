"""The queue's operations on jobs, each one database transaction: what the REST service calls.

:class:`JobQueue` holds no HTTP and no authorisation (the service decides who may call what);
it vets, applies state transitions by compare-and-set (:mod:`.states`), audits them
(:mod:`.audit`) and keeps leases. Time comes from an injectable clock so tests can expire
leases without sleeping.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import CursorResult, Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from analoglab import signing
from analoglab.config import Settings
from analoglab.errors import AnalogLabError, ModelNotFoundError
from analoglab.experiments.result import ExperimentResult, canonical_json, result_problems
from analoglab.experiments.spec import (
    AnySpec,
    SpecError,
    parse_spec,
    resolve_task_sets,
    spec_hash,
    spec_to_dict,
)
from analoglab.models.catalog import Catalog, FrontierModel, FrontierPolicy
from analoglab.queue import audit, fairshare, policy
from analoglab.queue.bounds import MAX_REQUEST_BYTES, bools_read_as_numbers
from analoglab.queue.db import make_sessionmaker
from analoglab.queue.errors import (
    Conflict,
    Forbidden,
    Invalid,
    LeaseLost,
    NotFound,
    QueueError,
    TransitionRefused,
)
from analoglab.queue.models import AuditEntry, Job, Review, utcnow
from analoglab.queue.states import FINAL, State, Then, check, transition
from analoglab.queue.vetting import Finding, VettingLimits, usage, vet

ReviewDecision = Literal["approve", "reject", "request_changes"]
ReleaseDecision = Literal["release", "withhold"]
_REVIEW_TARGET = {
    "approve": State.APPROVED,
    "reject": State.REJECTED,
    "request_changes": State.CHANGES_REQUESTED,
}
_RELEASE_TARGET = {"release": State.RELEASED, "withhold": State.WITHHELD}
RELEASE_CHECK = "release-check"
#: What a result whose frontier releases automatically goes on to, in the hand-in's step.
AUTOMATIC_RELEASE = Then(
    State.RELEASED,
    actor=RELEASE_CHECK,
    action="release",
    detail={"decision": "release", "reason": "passed the automatic release check"},
    values={"release_decision": "release", "release_reason": "automatic"},
)
LEASE_ID = re.compile(r"[A-Za-z0-9_-]{32,64}")
SWEEPER = "lease-sweeper"
#: The most jobs one claim takes.
MAX_CLAIM = 64


#: Bounds on the hub groups kept with a job (for its fair-share weight).
MAX_GROUPS = 64
MAX_GROUP_CHARS = 200


@dataclass(frozen=True)
class QueueSettings:
    """How the queue runs: vetting limits, leases, retries."""

    limits: VettingLimits = field(default_factory=VettingLimits)
    lease_seconds: int = 300
    max_lease_seconds: int = 3600
    max_attempts: int = 3
    sweep_seconds: float = 30.0
    max_request_bytes: int = MAX_REQUEST_BYTES
    # Fair share counts each submitter's claims in this window (see .fairshare); estimates of
    # a waiting job's start use the last `pace_jobs` jobs finished on its frontier.
    fair_share_window_seconds: int = 3600
    pace_jobs: int = 20


class CatalogFrontiers:
    """Frontier models by id from the catalog on disk, read again when an id is not known or
    a lab's catalog file changed (a newly published layout or policy applies to the next job
    without restarting the service)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._seen = self._labs_state()
        self._catalog = Catalog.load(settings)

    def _labs_state(self) -> tuple[tuple[str, int, int], ...]:
        labs = self._settings.catalog_path / "labs"
        try:
            return tuple(
                (p.name, st.st_mtime_ns, st.st_size)
                for p in sorted(labs.glob("*.json"))
                for st in [p.stat()]
            )
        except OSError:  # a file replaced while listed: read the catalog again
            return (("", -1, -1),)

    def __call__(self, frontier_id: str) -> FrontierModel:
        state = self._labs_state()
        if state != self._seen:
            self._seen = state
            self._catalog = Catalog.load(self._settings)
        try:
            return self._catalog.frontier(frontier_id)
        except ModelNotFoundError:
            self._catalog = Catalog.load(self._settings)
        try:
            return self._catalog.frontier(frontier_id)
        except ModelNotFoundError as exc:
            raise NotFound(str(exc)) from exc


def canonical_hash(data: dict[str, Any]) -> tuple[str, int]:
    """sha256 and byte size of ``data``'s canonical JSON."""
    return _hash_of(canonical_json(data).encode())


def _hash_of(raw: bytes) -> tuple[str, int]:
    return hashlib.sha256(raw).hexdigest(), len(raw)


def _vetting_failed(findings: list[Finding]) -> Invalid:
    reasons = "; ".join(f.message for f in findings)
    return Invalid(
        f"the submission failed vetting: {reasons}",
        detail={"findings": [f.to_dict() for f in findings]},
    )


def prepare_spec(spec: dict[str, Any]) -> AnySpec:
    """Validate a submitted spec and inline its task sets (a frontier spec is self-contained)."""
    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        raise _vetting_failed([Finding("invalid_spec", str(exc))]) from exc
    coerced = bools_read_as_numbers(spec, spec_to_dict(parsed))
    if coerced:
        raise _vetting_failed(
            [Finding("invalid_spec", f"{p}: a number, not true or false") for p in coerced]
        )
    try:
        return resolve_task_sets(parsed)
    except AnalogLabError:
        return parsed  # vetting reports it as not self-contained


def lease_held(lease_id: str | None, agent: str | None, now: dt.datetime) -> list[Any]:
    """The conditions under which an agent's write lands: ``lease_id`` is the job's current
    lease, held by ``agent`` (when given), and not expired at ``now``. They go into the write's
    own UPDATE (compare-and-set), so a lease that ends between a check and the write still
    refuses it. A missing lease id refuses every write."""
    if lease_id is None:
        raise LeaseLost("no lease id given: only the agent holding the job's lease writes to it")
    conds: list[Any] = [Job.lease_id == lease_id, Job.lease_expires_at > now]
    if agent is not None:
        conds.append(Job.lease_holder == agent)
    return conds


LEASE_REASON = (
    "the caller does not hold the job's current lease (it expired, was given back, was "
    "reclaimed by another agent, or was never the caller's): stop working on it"
)


def _hand_in(
    session: Session,
    job_id: int,
    lease_id: str | None,
    agent: str,
    detail: dict[str, Any],
    values: dict[str, Any],
    now: dt.datetime,
    then: Then | None = None,
) -> None:
    """running → awaiting_release under the caller's live lease (and on, with ``then``). The
    lease ends (no holder, no expiry) but its id stays on the job, so the same agent's
    retried post is recognised."""
    transition(
        session,
        job_id,
        State.RUNNING,
        State.AWAITING_RELEASE,
        actor=agent,
        action="result",
        detail=detail,
        values={**values, "lease_holder": None, "lease_expires_at": None},
        where=lease_held(lease_id, agent, now),
        where_reason=LEASE_REASON,
        now=now,
        then=then,
    )


@dataclass(frozen=True)
class ResultPost:
    """One result of a call that posts several (:meth:`JobQueue.post_results`)."""

    job_id: int
    lease_id: str
    result: dict[str, Any]
    signature: str | None = None
    key_id: str | None = None


@dataclass(frozen=True)
class _CheckedResult:
    """A result that passed its checks, as it will be stored."""

    job: Job
    stored: dict[str, Any]
    digest: str
    size: int
    signature: str | None
    key_id: str | None
    human_release: bool


class JobQueue:
    """Every operation of the gated queue over one database."""

    def __init__(
        self,
        engine: Engine,
        frontiers: Callable[[str], FrontierModel],
        settings: QueueSettings | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.frontier = frontiers
        self.settings = settings or QueueSettings()
        self.clock = clock

    # -- reading ------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            return job

    def get_many(self, job_ids: list[int]) -> list[Job]:
        """The jobs ``job_ids``, in that order."""
        if not job_ids:
            return []
        with self.sessions() as session:
            rows = session.execute(select(Job).where(Job.id.in_(job_ids))).scalars()
            found = {job.id: job for job in rows}
        missing = [i for i in job_ids if i not in found]
        if missing:
            raise NotFound(f"no job {missing[0]}")
        return [found[i] for i in job_ids]

    def reviews(self, job_id: int) -> list[Review]:
        with self.sessions() as session:
            stmt = select(Review).where(Review.job_id == job_id).order_by(Review.id)
            return list(session.execute(stmt).scalars())

    def reviews_of(self, job_ids: list[int]) -> dict[int, list[Review]]:
        """The reviews of each of ``job_ids`` (as :meth:`reviews` gives them), in one query."""
        out: dict[int, list[Review]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return out
        with self.sessions() as session:
            stmt = select(Review).where(Review.job_id.in_(job_ids)).order_by(Review.id)
            for review in session.execute(stmt).scalars():
                out[review.job_id].append(review)
        return out

    def list_jobs(
        self,
        *,
        submitter: str | None = None,
        lab: str | None = None,
        state: State | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[Job], int | None]:
        """Newest first; ``cursor`` is the last id of the previous page, and is returned."""
        stmt = select(Job).order_by(Job.id.desc()).limit(limit + 1)
        if submitter is not None:
            stmt = stmt.where(Job.submitter == submitter)
        if lab is not None:
            stmt = stmt.where(Job.lab == lab)
        if state is not None:
            stmt = stmt.where(Job.state == state.value)
        if cursor is not None:
            stmt = stmt.where(Job.id < cursor)
        with self.sessions() as session:
            jobs = list(session.execute(stmt).scalars())
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].id if more and jobs else None)

    def history(self, job_id: int) -> list[AuditEntry]:
        """The job's audit entries, oldest first."""
        with self.sessions() as session:
            stmt = select(AuditEntry).where(AuditEntry.job_id == job_id).order_by(AuditEntry.seq)
            return list(session.execute(stmt).scalars())

    def findings(self, job: Job) -> list[Finding]:
        """Vetting of the job's stored spec under the frontier's policy now (quota and rate,
        counted at submission, are left out); empty when it still passes."""
        frontier = self.frontier(job.frontier)
        parsed = prepare_spec(job.spec)
        with self.sessions() as session:
            pol = policy.effective_policy(session, frontier)
        return vet(parsed, frontier, pol, self.settings.limits)

    def policy(self, frontier_id: str) -> FrontierPolicy:
        frontier = self.frontier(frontier_id)
        with self.sessions() as session:
            return policy.effective_policy(session, frontier)

    def verify_audit(self) -> int | None:
        with self.sessions() as session:
            return audit.verify(session)

    # -- researcher ---------------------------------------------------------------------------

    def submit(
        self,
        submitter: str,
        frontier_id: str,
        spec: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        analog_result_ref: str | None = None,
        groups: Iterable[str] = (),
    ) -> Job:
        """Vet and store a new job; a retried ``idempotency_key`` returns the first job.
        ``groups``: the submitter's hub groups (their fair-share weight, :mod:`.fairshare`)."""
        frontier = self.frontier(frontier_id)
        kept = sorted({g[:MAX_GROUP_CHARS] for g in groups})[:MAX_GROUPS]
        try:
            return self._submit(
                submitter, frontier, spec, idempotency_key, analog_result_ref, kept
            )
        except IntegrityError:
            # Two submits with one key raced past the check: the other one's job is ours.
            existing = self._by_key(submitter, idempotency_key)
            if existing is None:
                raise
            return existing

    def _by_key(self, submitter: str, key: str | None) -> Job | None:
        if key is None:
            return None
        with self.sessions() as session:
            stmt = select(Job).where(Job.submitter == submitter, Job.idempotency_key == key)
            return session.execute(stmt).scalar_one_or_none()

    def _submit(
        self,
        submitter: str,
        frontier: FrontierModel,
        spec: dict[str, Any],
        key: str | None,
        ref: str | None,
        groups: list[str],
    ) -> Job:
        now = self.clock()
        parsed = prepare_spec(spec)
        digest = spec_hash(parsed)
        with self.sessions.begin() as session:
            audit.lock(session)
            if key is not None:
                stmt = select(Job).where(Job.submitter == submitter, Job.idempotency_key == key)
                existing = session.execute(stmt).scalar_one_or_none()
                if existing is not None:
                    if existing.spec_hash != digest or existing.frontier != frontier.id:
                        raise Conflict(
                            f"Idempotency-Key {key!r} was used for job {existing.id} with "
                            "another spec or frontier: use a new key for a new job"
                        )
                    return existing
            pol = policy.effective_policy(session, frontier)
            findings = vet(
                parsed,
                frontier,
                pol,
                self.settings.limits,
                usage(session, submitter, frontier.id, now),
            )
            if findings:
                raise _vetting_failed(findings)
            state = State.AWAITING_REVIEW if pol.human_review else State.APPROVED
            job = Job(
                spec=spec_to_dict(parsed),
                spec_hash=digest,
                frontier=frontier.id,
                lab=frontier.lab,
                submitter=submitter,
                submitter_groups=groups or None,
                analog_result_ref=ref,
                state=state.value,
                version=0,
                created_at=now,
                updated_at=now,
                attempts=0,
                idempotency_key=key,
            )
            session.add(job)
            session.flush()
            audit.append(
                session,
                actor=submitter,
                action="submit",
                job_id=job.id,
                to_state=state.value,
                detail={
                    "frontier": frontier.id,
                    "spec_hash": digest,
                    "auto_approved": not pol.human_review,
                },
                at=now,
            )
            return job

    def resubmit(self, job_id: int, submitter: str, spec: dict[str, Any]) -> Job:
        """A new spec for a job whose reviewers asked for changes; it goes back to review."""
        parsed = prepare_spec(spec)
        job = self.get(job_id)
        frontier = self.frontier(job.frontier)
        with self.sessions.begin() as session:
            pol = policy.effective_policy(session, frontier)
            # Quota and rate were counted when the job was first sent.
            findings = vet(parsed, frontier, pol, self.settings.limits)
            if findings:
                raise _vetting_failed(findings)
            digest = spec_hash(parsed)
            transition(
                session,
                job_id,
                State.CHANGES_REQUESTED,
                State.AWAITING_REVIEW,
                actor=submitter,
                action="resubmit",
                detail={"spec_hash": digest, "previous_spec_hash": job.spec_hash},
                values={"spec": spec_to_dict(parsed), "spec_hash": digest},
                now=self.clock(),
            )
        return self.get(job_id)

    def cancel(self, job_id: int, actor: str) -> Job:
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            source = State(job.state)
            if source in FINAL:
                raise TransitionRefused(
                    f"job {job_id} is {source}, a final state: nothing to cancel"
                )
            transition(
                session,
                job_id,
                source,
                State.CANCELLED,
                actor=actor,
                action="cancel",
                values={"lease_holder": None, "lease_id": None, "lease_expires_at": None},
                now=self.clock(),
            )
        return self.get(job_id)

    # -- reviewer -----------------------------------------------------------------------------

    def _four_eyes(self, session: Session, job_id: int, reviewer: str, what: str) -> None:
        """Separation of duties: a job's submitter does not review or release it, unless the
        frontier's policy says ``allow_self_review``."""
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.submitter != reviewer:
            return
        if policy.effective_policy(session, self.frontier(job.frontier)).allow_self_review:
            return
        raise Forbidden(
            f"{reviewer!r} submitted job {job_id} and may not {what} it: another reviewer of "
            f"lab {job.lab!r} must (the frontier's policy does not set allow_self_review)"
        )

    def review(self, job_id: int, reviewer: str, decision: str, comment: str = "") -> Job:
        target = _REVIEW_TARGET.get(decision)
        if target is None:
            raise Invalid(f"decision must be one of {', '.join(_REVIEW_TARGET)}, not {decision!r}")
        now = self.clock()
        with self.sessions.begin() as session:
            audit.lock(session)
            self._four_eyes(session, job_id, reviewer, "review")
            transition(
                session,
                job_id,
                State.AWAITING_REVIEW,
                target,
                actor=reviewer,
                action="review",
                detail={"decision": decision, "comment": comment},
                now=now,
            )
            session.add(
                Review(
                    job_id=job_id,
                    reviewer=reviewer,
                    decision=decision,
                    comment=comment,
                    created_at=now,
                )
            )
        return self.get(job_id)

    def release(self, job_id: int, reviewer: str, decision: str, reason: str = "") -> Job:
        target = _RELEASE_TARGET.get(decision)
        if target is None:
            raise Invalid(f"decision must be release or withhold, not {decision!r}")
        with self.sessions.begin() as session:
            audit.lock(session)
            self._four_eyes(session, job_id, reviewer, "release or withhold")
            transition(
                session,
                job_id,
                State.AWAITING_RELEASE,
                target,
                actor=reviewer,
                action="release",
                detail={"decision": decision, "reason": reason},
                values={"release_decision": decision, "release_reason": reason},
                now=self.clock(),
            )
        return self.get(job_id)

    def set_policy(self, frontier_id: str, new: FrontierPolicy, actor: str) -> FrontierPolicy:
        frontier = self.frontier(frontier_id)
        with self.sessions.begin() as session:
            return policy.set_policy(session, frontier, new, actor, now=self.clock())

    # -- agent --------------------------------------------------------------------------------

    def _lease_seconds(self, asked: int | None) -> int:
        seconds = asked if asked is not None else self.settings.lease_seconds
        if not 1 <= seconds <= self.settings.max_lease_seconds:
            raise Invalid(f"lease_seconds must be 1..{self.settings.max_lease_seconds}")
        return seconds

    def _claim_order(
        self,
        session: Session,
        lab: str,
        frontiers: list[str] | None,
        now: dt.datetime,
    ) -> list[fairshare.Waiting]:
        """The lab's approved jobs (of ``frontiers``, when given) in fair-share order."""
        stmt = select(Job.id, Job.submitter, Job.submitter_groups, Job.frontier).where(
            Job.lab == lab, Job.state == State.APPROVED.value
        )
        if frontiers is not None:
            stmt = stmt.where(Job.frontier.in_(frontiers))
        rows = session.execute(stmt).all()
        if not rows:
            return []
        weights: dict[str, dict[str, float]] = {}
        for frontier_id in {r.frontier for r in rows}:
            try:
                pol = policy.effective_policy(session, self.frontier(frontier_id))
                weights[frontier_id] = dict(pol.share_weights)
            except NotFound:  # a frontier gone from the catalog: its jobs at weight 1
                weights[frontier_id] = {}
        waiting = [
            fairshare.Waiting(
                r.id,
                r.submitter,
                fairshare.weight_of(r.submitter_groups or (), weights[r.frontier]),
            )
            for r in rows
        ]
        since = now - dt.timedelta(seconds=self.settings.fair_share_window_seconds)
        served_rows = session.execute(
            select(Job.submitter, func.count())
            .join(AuditEntry, AuditEntry.job_id == Job.id)
            .where(Job.lab == lab, AuditEntry.action == "claim", AuditEntry.at >= since)
            .group_by(Job.submitter)
        ).all()
        served = {str(u): int(n) for u, n in served_rows}
        return fairshare.claim_order(waiting, served)

    def place(self, job: Job) -> fairshare.Place | None:
        """Where an approved job stands among its frontier's approved jobs, and when it should
        start and finish at the site's recent pace; None for a job in any other state."""
        if job.state != State.APPROVED.value:
            return None
        now = self.clock()
        with self.sessions() as session:
            order = self._claim_order(session, job.lab, [job.frontier], now)
            ids = [w.id for w in order]
            if job.id not in ids:  # claimed since it was read
                return None
            recent = session.execute(
                select(Job.id)
                .where(Job.frontier == job.frontier, Job.result_hash.is_not(None))
                .order_by(Job.id.desc())
                .limit(self.settings.pace_jobs)
            ).scalars().all()
            marks = session.execute(
                select(AuditEntry.job_id, AuditEntry.action, AuditEntry.at, AuditEntry.actor)
                .where(AuditEntry.job_id.in_(recent), AuditEntry.action.in_(("claim", "result")))
                .order_by(AuditEntry.seq)
            ).all()
        claimed: dict[int, tuple[dt.datetime, str]] = {}
        durations: list[float] = []
        agents: set[str] = set()
        for m in marks:
            if m.action == "claim":
                claimed[m.job_id] = (m.at, str(m.actor))
            elif m.job_id in claimed:  # the result of the latest claim
                at, actor = claimed.pop(m.job_id)
                durations.append(max(0.0, (m.at - at).total_seconds()))
                agents.add(actor)
        return fairshare.estimate(ids.index(job.id) + 1, len(ids), now, durations, len(agents))

    def claim(
        self,
        lab: str,
        agent: str,
        lease_seconds: int | None = None,
        frontiers: list[str] | None = None,
        lease_id: str | None = None,
    ) -> Job | None:
        """The next approved job of ``lab`` in fair-share order (:mod:`.fairshare`; for one of
        ``frontiers``, when given), now running under a new lease; None if none.

        ``lease_id``, chosen by the agent, makes the claim idempotent: a retry with the same id
        (the answer to the first was lost) returns the job that claim took, instead of taking
        a second one and leaving the first to expire."""
        got = self.claim_many(
            lab, agent, 1, lease_seconds, frontiers, None if lease_id is None else [lease_id]
        )
        return got[0] if got else None

    def claim_many(
        self,
        lab: str,
        agent: str,
        count: int,
        lease_seconds: int | None = None,
        frontiers: list[str] | None = None,
        lease_ids: list[str] | None = None,
    ) -> list[Job]:
        """Up to ``count`` approved jobs of ``lab``, the next in fair-share order, each now
        running under its own lease; all in one transaction, so they are the jobs ``count``
        claims one after another would take (taking a submitter's job moves their next one
        back exactly as a claim of it alone does).

        ``lease_ids`` (``count`` of them, chosen by the agent) name the leases in order and
        make the claim idempotent: a retry with the same ids returns the jobs the first took
        (those still running under them) and takes no more."""
        if not 1 <= count <= MAX_CLAIM:
            raise Invalid(f"a claim takes 1 to {MAX_CLAIM} jobs, not {count}")
        if lease_ids is not None:
            if len(lease_ids) != count:
                raise Invalid(
                    f"{count} job(s) asked for, so {count} lease id(s), not {len(lease_ids)}"
                )
            if len(set(lease_ids)) != len(lease_ids):
                raise Invalid("each lease id of a claim must be different")
            for lease_id in lease_ids:
                if not LEASE_ID.fullmatch(lease_id):
                    raise Invalid("a lease id is 32 to 64 characters of [A-Za-z0-9_-]")
            with self.sessions() as session:
                taken = session.execute(
                    select(Job).where(
                        Job.lease_id.in_(lease_ids),
                        Job.lab == lab,
                        Job.state == State.RUNNING.value,
                    )
                ).scalars().all()
            if taken:  # (a lease that ended is cleared: its id claims afresh)
                if any(job.lease_holder != agent for job in taken):
                    raise Conflict("that lease id is not yours")
                return sorted(taken, key=lambda job: lease_ids.index(str(job.lease_id)))
        seconds = self._lease_seconds(lease_seconds)
        self.sweep()
        now = self.clock()
        ids = lease_ids or [secrets.token_hex(16) for _ in range(count)]
        with self.sessions.begin() as session:
            # Pick under the writers' lock: no other claim can take the same job between the
            # pick and the transition, so claimers never race for rows (no herd).
            audit.lock(session)
            order = self._claim_order(session, lab, frontiers, now)[:count]
            for waiting, lease_id in zip(order, ids, strict=False):
                transition(
                    session,
                    waiting.id,
                    State.APPROVED,
                    State.RUNNING,
                    actor=agent,
                    action="claim",
                    detail={"lease_seconds": seconds},
                    values={
                        "lease_holder": agent,
                        "lease_id": lease_id,
                        "lease_expires_at": now + dt.timedelta(seconds=seconds),
                    },
                    now=now,
                )
        return self.get_many([w.id for w in order])

    def heartbeat(
        self,
        job_id: int,
        lease_id: str | None,
        lease_seconds: int | None = None,
        agent: str | None = None,
    ) -> Job:
        """Extend a live lease by ``lease_seconds`` from now, or, when omitted, by the lease's
        current duration (the seconds asked at the claim or the last heartbeat); raises
        :class:`LeaseLost` when the lease expired or is not the caller's."""
        if lease_seconds is not None:
            self._lease_seconds(lease_seconds)
        now = self.clock()
        conds = lease_held(lease_id, agent, now)
        with self.sessions.begin() as session:
            job = session.execute(
                select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
            ).scalar_one_or_none()
            if job is None:
                raise NotFound(f"no job {job_id}")
            if lease_seconds is not None:
                duration = dt.timedelta(seconds=lease_seconds)
            elif job.lease_expires_at is not None:
                # claims and heartbeats set updated_at and the expiry together
                duration = job.lease_expires_at - job.updated_at
            else:
                duration = dt.timedelta(seconds=self.settings.lease_seconds)
            stmt = (
                update(Job)
                .where(Job.id == job_id, Job.state == State.RUNNING.value, *conds)
                .values(lease_expires_at=now + duration, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            result = session.execute(stmt)
            assert isinstance(result, CursorResult)
            if result.rowcount != 1:
                raise LeaseLost(f"the lease on job {job_id} was lost: {LEASE_REASON}")
        return self.get(job_id)

    def post_result(
        self,
        job_id: int,
        lease_id: str | None,
        agent: str,
        data: dict[str, Any],
        *,
        signature: str | None = None,
        key_id: str | None = None,
        public_key: str | None = None,
    ) -> Job:
        """Store a job's checked result and move the job on; the same result again is a no-op.

        ``signature``/``key_id``: the lab's signature over the result's canonical JSON, stored
        with it; checked against the lab's ``public_key`` (from the catalog) when it has one, and
        required then: a lab that publishes a key has every result it releases signed."""
        job = self.get(job_id)
        checked = self._check_result(job, lease_id, data, signature, key_id, public_key)
        if isinstance(checked, Job):
            return checked  # the same agent's retried post: stored once
        now = self.clock()
        with self.sessions.begin() as session:
            try:
                self._store_result(session, checked, lease_id, agent, now)
            except TransitionRefused as exc:
                again = session.get(Job, job_id, populate_existing=True)
                if again is not None and again.result_hash == checked.digest and (
                    again.lease_id == lease_id
                ):
                    return again  # the same result, posted twice at once
                raise LeaseLost(str(exc)) from exc
        return self.get(job_id)

    def post_results(
        self,
        lab: str,
        agent: str,
        posts: list[ResultPost],
        *,
        public_key: str | None = None,
    ) -> list[Job | QueueError]:
        """Several results of ``lab``'s jobs at once: each checked as :meth:`post_result` checks
        it, those that pass stored in **one** transaction (one commit, one sync to disk); per
        post, in order, the job as it now is, or the error its post alone would have raised.

        Under the writers' lock nothing else can end a lease, so each post's lease is checked
        there first and a post whose lease does not hold is refused alone (409) while the
        others land."""
        if not 1 <= len(posts) <= MAX_CLAIM:
            raise Invalid(f"a call posts 1 to {MAX_CLAIM} results, not {len(posts)}")
        with self.sessions() as session:
            ids = [post.job_id for post in posts]
            rows = session.execute(select(Job).where(Job.id.in_(ids))).scalars()
            found = {job.id: job for job in rows}
        answers: list[Job | QueueError | None] = [None] * len(posts)
        policies: dict[str, FrontierPolicy] = {}
        todo: list[tuple[int, _CheckedResult, str]] = []
        seen: set[int] = set()
        for k, post in enumerate(posts):
            job = found.get(post.job_id)
            if job is None or job.lab != lab:
                answers[k] = NotFound(f"no job {post.job_id}")
                continue
            if post.job_id in seen:
                answers[k] = Invalid(f"job {post.job_id} is posted twice in one call")
                continue
            seen.add(post.job_id)
            try:
                checked = self._check_result(
                    job,
                    post.lease_id,
                    post.result,
                    post.signature,
                    post.key_id,
                    public_key,
                    policies,
                )
            except QueueError as exc:
                answers[k] = exc
                continue
            if isinstance(checked, Job):
                answers[k] = checked
            else:
                todo.append((k, checked, post.lease_id))
        if todo:
            now = self.clock()
            with self.sessions.begin() as session:
                audit.lock(session)
                live = []
                for k, checked, lease_id in todo:
                    jid = checked.job.id
                    holds = session.execute(
                        select(Job.id).where(
                            Job.id == jid,
                            Job.state == State.RUNNING.value,
                            *lease_held(lease_id, agent, now),
                        )
                    ).first()
                    if holds is not None:
                        live.append((k, checked, lease_id))
                        continue
                    again = session.get(Job, jid, populate_existing=True)
                    if again is not None and again.result_hash == checked.digest and (
                        again.lease_id == lease_id
                    ):
                        answers[k] = again  # the same result, posted twice at once
                    else:
                        state = again.state if again is not None else "gone"
                        answers[k] = LeaseLost(f"job {jid} is {state}: {LEASE_REASON}")
                for _, checked, lease_id in live:
                    self._store_result(session, checked, lease_id, agent, now)
            stored = {job.id: job for job in self.get_many([c.job.id for _, c, _ in live])}
            for k, checked, _ in live:
                answers[k] = stored[checked.job.id]
        out: list[Job | QueueError] = []
        for answer in answers:
            assert answer is not None
            out.append(answer)
        return out

    def _check_result(
        self,
        job: Job,
        lease_id: str | None,
        data: dict[str, Any],
        signature: str | None,
        key_id: str | None,
        public_key: str | None,
        policies: dict[str, FrontierPolicy] | None = None,
    ) -> _CheckedResult | Job:
        """A result's checks before it is stored (its shape, the lab's signature, the job's
        spec and policy); the job itself when it already holds this result under this lease
        (a retried post). ``policies``: frontier → effective policy, read once per call."""
        try:
            result = ExperimentResult.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "result"
            raise Invalid(f"not an ExperimentResult: {where}: {first['msg']}") from exc
        stored = result.model_dump(mode="json")
        # One canonical JSON for the hash, the size and the signature (the bytes signed).
        raw = canonical_json(stored).encode()
        digest, size = _hash_of(raw)
        if public_key is not None and signature is None:
            raise Invalid(
                f"result refused: lab {job.lab!r} publishes a signing key, so its results must "
                "carry the lab's signature (signature and key_id)"
            )
        if public_key is None:
            # Nothing to check a signature against: none is kept, so no result claims a signer
            # that was never proven.
            signature = key_id = None
        elif signature is not None:
            try:
                signing.verify(public_key, raw, signature)
            except signing.SignatureError as exc:
                raise Invalid(f"result refused: the lab's signature does not hold: {exc}") from None
            key_id = signing.key_id(public_key)  # the key it verified under, not the one claimed
        if job.result_hash is not None:
            if lease_id is None or job.lease_id != lease_id:
                raise LeaseLost(f"job {job.id} already has a result: {LEASE_REASON}")
            if job.result_hash == digest:
                return job
            raise Conflict(f"job {job.id} already has a different result")
        pol = (policies or {}).get(job.frontier)
        if pol is None:
            frontier = self.frontier(job.frontier)
            with self.sessions() as session:
                pol = policy.effective_policy(session, frontier)
            if policies is not None:
                policies[job.frontier] = pol
        problems = result_problems(
            result,
            spec=job.spec,
            spec_hash=job.spec_hash,
            size=size,
            max_bytes=pol.max_output_bytes,
            allow_samples=pol.allow_samples,
        )
        if problems:
            raise Invalid("result refused: " + "; ".join(problems))
        return _CheckedResult(job, stored, digest, size, signature, key_id, pol.human_release)

    def _store_result(
        self,
        session: Session,
        checked: _CheckedResult,
        lease_id: str | None,
        agent: str,
        now: dt.datetime,
    ) -> None:
        """Hand a checked result in (running → awaiting_release under the lease) and, where
        the policy releases automatically, release it; in the caller's transaction."""
        signed_by = checked.key_id if checked.signature is not None else None
        _hand_in(
            session,
            checked.job.id,
            lease_id,
            agent,
            detail={"result_hash": checked.digest, "size": checked.size, "signed_by": signed_by},
            values={
                "result": checked.stored,
                "result_hash": checked.digest,
                "result_size": checked.size,
                "result_signature": checked.signature,
                "result_key_id": signed_by,
            },
            now=now,
            # released by the automatic check in the same UPDATE (its own audit entry)
            then=None if checked.human_release else AUTOMATIC_RELEASE,
        )

    def withhold(self, job_id: int, lease_id: str | None, agent: str, reason: str) -> Job:
        """The lab's own release checks failed a result: it stays in the lab, the job ends
        ``withheld`` with ``reason`` (running → awaiting_release → withheld). Idempotent."""
        reason = reason.strip()
        if not reason:
            raise Invalid("a withheld result needs the reason the lab's checks gave")
        job = self.get(job_id)
        if (
            job.state == State.WITHHELD.value
            and job.release_reason == reason
            and lease_id is not None
            and job.lease_id == lease_id
        ):
            return job  # the same decision, posted twice by the same lease
        now = self.clock()
        with self.sessions.begin() as session:
            try:
                _hand_in(session, job_id, lease_id, agent, {"withheld": reason}, {}, now)
            except TransitionRefused as exc:
                again = session.get(Job, job_id, populate_existing=True)
                if (
                    again is not None
                    and again.release_reason == reason
                    and (again.lease_id == lease_id)
                ):
                    return again
                raise LeaseLost(str(exc)) from exc
            transition(
                session,
                job_id,
                State.AWAITING_RELEASE,
                State.WITHHELD,
                actor=f"{RELEASE_CHECK}:{agent}",
                action="release",
                detail={"decision": "withhold", "reason": reason},
                values={"release_decision": "withhold", "release_reason": reason},
                now=now,
            )
        return self.get(job_id)

    def give_back(
        self, job_id: int, lease_id: str | None, agent: str, reason: str = "", error: bool = False
    ) -> Job:
        """Return a running job to ``approved`` under the caller's live lease; ``error`` counts
        an attempt (→ ``failed`` at the maximum)."""
        now = self.clock()
        conds = lease_held(lease_id, agent, now)
        with self.sessions.begin() as session:
            audit.lock(session)
            job = session.get(Job, job_id, populate_existing=True)
            if job is None:
                raise NotFound(f"no job {job_id}")
            attempts = job.attempts + (1 if error else 0)
            target = State.FAILED if attempts >= self.settings.max_attempts else State.APPROVED
            try:
                transition(
                    session,
                    job_id,
                    State.RUNNING,
                    target,
                    actor=agent,
                    action="give_back",
                    detail={"reason": reason, "error": error, "attempts": attempts},
                    values={
                        "attempts": attempts,
                        "lease_holder": None,
                        "lease_id": None,
                        "lease_expires_at": None,
                    },
                    where=[*conds, Job.attempts == job.attempts],
                    where_reason=LEASE_REASON,
                    now=now,
                )
            except TransitionRefused as exc:
                raise LeaseLost(str(exc)) from exc
        return self.get(job_id)

    def sweep(self) -> int:
        """Return every job whose lease expired to ``approved`` (→ ``failed`` at max attempts)."""
        now = self.clock()
        with self.sessions() as session:
            stmt = select(Job).where(Job.state == State.RUNNING.value, Job.lease_expires_at < now)
            expired = list(session.execute(stmt).scalars())
        moved = 0
        for job in expired:
            attempts = job.attempts + 1
            target = State.FAILED if attempts >= self.settings.max_attempts else State.APPROVED
            check(State.RUNNING, target)
            try:
                with self.sessions.begin() as session:
                    transition(
                        session,
                        job.id,
                        State.RUNNING,
                        target,
                        actor=SWEEPER,
                        action="lease_expired",
                        detail={"lease_holder": job.lease_holder, "attempts": attempts},
                        values={
                            "attempts": attempts,
                            "lease_holder": None,
                            "lease_id": None,
                            "lease_expires_at": None,
                        },
                        where=[Job.lease_id == job.lease_id, Job.lease_expires_at < now],
                        where_reason="the lease was renewed",
                        now=now,
                    )
                moved += 1
            except TransitionRefused:
                continue
        return moved
