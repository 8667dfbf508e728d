"""Verifying the audit log as evidence: what ``audit verify`` checks, as a list of findings.

:func:`verify` reports *every* way the database and the evidence disagree, each finding naming
the job or entry and what differs:

- ``chain``: the hash chain breaks (an entry edited, removed or reordered: :func:`.audit.verify`);
- ``log``: the log is empty while jobs exist;
- replay of the log against the tables (:func:`replay`): every job has its entries, starting
  with its submission, and moves only as the state machine allows; its current ``state`` is
  where the log's last transition left it; its spec, frontier and submitter are the logged
  ones; each review row matches its ``review`` entry (reviewer, decision, comment); a stored
  result's canonical-JSON hash is the hash the log recorded, and its signer (the lab's key id)
  the logged one; the release decision and the attempts are the logged ones; no entry or
  review names a job that does not exist (``history``, ``state``, ``spec``, ``review``,
  ``result``, ``release``, ``attempts``);
  each policy override is the policy its last ``policy_update`` entry recorded (``policy``);
- ``signed_head``: the log does not hold the last head the hub signed (kept outside the
  database by the :class:`~.head.Notary`): truncated, emptied, or rewritten and re-chained
  without the key; or that record is missing or not signed by the hub's key;
- ``published_head``: the same against a head published earlier and given back by the caller,
  whose signature must verify under the pinned public key.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analoglab.queue import audit
from analoglab.queue.head import HeadError, Notary, SignedHead, check_signature, log_problems
from analoglab.queue.jobs import RELEASE_CHECK, canonical_hash
from analoglab.queue.models import AuditEntry, Job, PolicyOverride, Review
from analoglab.queue.states import State, allowed


@dataclass(frozen=True)
class AuditFinding:
    """One way the database and its evidence disagree."""

    check: str
    message: str
    job_id: int | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FindingOut(BaseModel):
    check: str = Field(
        description="chain, log, history, state, spec, review, result, "
        "release, attempts, policy, signed_head or published_head"
    )
    message: str
    job_id: int | None = None
    seq: int | None = None


class VerifyIn(BaseModel):
    """The body of ``POST /api/audit/verify``: a head published earlier, and the pinned key."""

    model_config = ConfigDict(extra="forbid")

    head: SignedHead | None = Field(None, description="a signed head kept since it was served")
    public_key: str | None = Field(
        None,
        max_length=200,
        description="the hub's pinned public key (ed25519:<base64>); the head must be signed "
        "by it, and the hub must sign with it",
    )


class AuditReport(BaseModel):
    """What ``GET``/``POST /api/audit/verify`` answers."""

    ok: bool = Field(description="no finding: the log, the tables and the signed heads agree")
    first_broken_seq: int | None = Field(description="the first entry breaking the hash chain")
    entries: int = Field(description="entries in the log")
    jobs: int = Field(description="jobs in the database")
    findings: list[FindingOut] = Field(default_factory=list)
    head: SignedHead | None = Field(None, description="the last head the hub signed")


def _last(entries: list[AuditEntry], action: str, key: str) -> AuditEntry | None:
    for entry in reversed(entries):
        if entry.action == action and key in (entry.detail or {}):
            return entry
    return None


def _replay_job(job: Job, entries: list[AuditEntry], reviews: list[Review]) -> list[AuditFinding]:
    found: list[AuditFinding] = []

    def finding(check: str, message: str, seq: int | None = None) -> None:
        found.append(AuditFinding(check, f"job {job.id}: {message}", job.id, seq))

    if not entries:
        finding("history", f"no audit entries, though the job exists (state {job.state})")
        return found
    first = entries[0]
    if first.action != "submit":
        finding(
            "history",
            f"the first entry ({first.seq}) is {first.action!r}, not its submission",
            first.seq,
        )
    # The transitions: continuous and allowed by the state machine.
    at: str | None = None
    last_move: AuditEntry | None = None
    for entry in entries:
        if entry.to_state is None:
            continue
        if entry.from_state != at:
            finding(
                "history",
                f"entry {entry.seq} moves it from {entry.from_state} but the log had left it {at}",
                entry.seq,
            )
        elif at is not None and not _known_move(at, entry.to_state):
            finding(
                "history",
                f"entry {entry.seq} moves it {at} → {entry.to_state}, which the "
                "state machine does not allow",
                entry.seq,
            )
        at, last_move = entry.to_state, entry
    if last_move is None:
        finding("history", "no entry records a state for it")
    elif job.state != last_move.to_state:
        finding(
            "state",
            f"state is {job.state} in the database, but the log's last transition "
            f"(entry {last_move.seq}, {last_move.action}) left it {last_move.to_state}",
            last_move.seq,
        )
    # What was submitted.
    if first.action == "submit":
        if first.actor != job.submitter:
            finding(
                "spec", f"submitter is {job.submitter!r}, the log says {first.actor!r}", first.seq
            )
        logged = (first.detail or {}).get("frontier")
        if logged is not None and logged != job.frontier:
            finding("spec", f"frontier is {job.frontier!r}, the log says {logged!r}", first.seq)
    spec_entry = _last(entries, "resubmit", "spec_hash") or _last(entries, "submit", "spec_hash")
    if spec_entry is not None and spec_entry.detail["spec_hash"] != job.spec_hash:
        finding(
            "spec",
            f"spec_hash is {job.spec_hash[:16]}…, the log recorded "
            f"{str(spec_entry.detail['spec_hash'])[:16]}… (entry {spec_entry.seq})",
            spec_entry.seq,
        )
    actual_spec, _size = canonical_hash(job.spec)
    if actual_spec != job.spec_hash:
        finding("spec", "the stored spec does not hash to its spec_hash: it was altered")
    found.extend(_replay_reviews(job, entries, reviews))
    found.extend(_replay_result(job, entries))
    # The release decision and the attempts.
    released = _last(entries, "release", "decision")
    if released is None:
        if job.release_decision is not None:
            finding("release", f"release decision {job.release_decision!r} was never logged")
    else:
        want = (released.detail["decision"], released.detail.get("reason", ""))
        have = (job.release_decision, job.release_reason)
        if want[0] != have[0] or (want[1] != have[1] and released.actor != RELEASE_CHECK):
            finding(
                "release",
                f"release decision is {have[0]!r} ({have[1]!r}), the log says "
                f"{want[0]!r} ({want[1]!r}) at entry {released.seq}",
                released.seq,
            )
    counted = next((e for e in reversed(entries) if "attempts" in (e.detail or {})), None)
    want_attempts = int(counted.detail["attempts"]) if counted is not None else 0
    if job.attempts != want_attempts:
        finding(
            "attempts",
            f"attempts is {job.attempts}, the log says {want_attempts}",
            counted.seq if counted else None,
        )
    return found


def _known_move(source: str, target: str) -> bool:
    try:
        return allowed(State(source), State(target))
    except ValueError:
        return False


def _replay_reviews(
    job: Job, entries: list[AuditEntry], reviews: list[Review]
) -> list[AuditFinding]:
    found: list[AuditFinding] = []
    logged = [e for e in entries if e.action == "review"]
    for entry, row in itertools.zip_longest(logged, reviews):
        if row is None:
            assert entry is not None
            found.append(
                AuditFinding(
                    "review",
                    f"job {job.id}: review entry {entry.seq} ({entry.detail.get('decision')} "
                    f"by {entry.actor}) has no review row: it was deleted",
                    job.id,
                    entry.seq,
                )
            )
            continue
        if entry is None:
            found.append(
                AuditFinding(
                    "review",
                    f"job {job.id}: review {row.id} ({row.decision} by {row.reviewer}) "
                    "was never logged",
                    job.id,
                )
            )
            continue
        detail = entry.detail or {}
        differs = [
            f"{name} is {have!r}, the log says {want!r}"
            for name, have, want in (
                ("decision", row.decision, detail.get("decision")),
                ("reviewer", row.reviewer, entry.actor),
                ("comment", row.comment, detail.get("comment", "")),
            )
            if have != want
        ]
        if differs:
            found.append(
                AuditFinding(
                    "review",
                    f"job {job.id}: review {row.id}: "
                    + "; ".join(differs)
                    + f" (entry {entry.seq})",
                    job.id,
                    entry.seq,
                )
            )
    return found


def _replay_result(job: Job, entries: list[AuditEntry]) -> list[AuditFinding]:
    def finding(message: str, seq: int | None = None) -> list[AuditFinding]:
        return [AuditFinding("result", f"job {job.id}: {message}", job.id, seq)]

    posted = _last(entries, "result", "result_hash")
    if posted is None:
        if job.result is not None or job.result_hash is not None:
            return finding("holds a result the log never recorded")
        return []
    logged = str(posted.detail["result_hash"])
    if job.result is None:
        return finding(
            f"the result logged at entry {posted.seq} is missing from the database", posted.seq
        )
    actual, _size = canonical_hash(job.result)
    if actual != logged:
        return finding(
            f"the stored result hashes to {actual[:16]}…, the log recorded "
            f"{logged[:16]}… at entry {posted.seq}: the result was altered",
            posted.seq,
        )
    detail = posted.detail or {}
    if "signed_by" in detail and detail["signed_by"] != job.result_key_id:
        return finding(
            f"the result's signer is {job.result_key_id!r}, the log recorded "
            f"{detail['signed_by']!r} at entry {posted.seq}",
            posted.seq,
        )
    if job.result_hash != logged:
        return finding(
            f"result_hash is {str(job.result_hash)[:16]}…, the log recorded "
            f"{logged[:16]}… at entry {posted.seq}",
            posted.seq,
        )
    return []


def _replay_policies(session: Session, edits: dict[str, AuditEntry]) -> list[AuditFinding]:
    """Each policy override is the policy its last ``policy_update`` entry recorded."""
    found: list[AuditFinding] = []
    for override in session.execute(select(PolicyOverride)).scalars():
        entry = edits.get(override.frontier)
        if entry is None:
            found.append(
                AuditFinding(
                    "policy",
                    f"frontier {override.frontier}: a policy override the log never recorded",
                )
            )
            continue
        logged = (entry.detail or {}).get("policy")
        if logged is not None and logged != override.policy:
            differs = sorted(
                k
                for k in set(logged) | set(override.policy)
                if logged.get(k) != override.policy.get(k)
            )
            found.append(
                AuditFinding(
                    "policy",
                    f"frontier {override.frontier}: the policy differs from what entry "
                    f"{entry.seq} recorded in {', '.join(differs)}",
                    seq=entry.seq,
                )
            )
    return found


def replay(session: Session) -> list[AuditFinding]:
    """Every way the jobs, reviews and policies in ``session`` differ from what the log says."""
    by_job: dict[int, list[AuditEntry]] = defaultdict(list)
    edits: dict[str, AuditEntry] = {}
    total = 0
    for entry in session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
        total += 1
        if entry.job_id is not None:
            by_job[entry.job_id].append(entry)
        elif entry.action == "policy_update" and "frontier" in (entry.detail or {}):
            edits[str(entry.detail["frontier"])] = entry
    reviews: dict[int, list[Review]] = defaultdict(list)
    for review in session.execute(select(Review).order_by(Review.id)).scalars():
        reviews[review.job_id].append(review)
    found: list[AuditFinding] = []
    jobs = 0
    for job in session.execute(select(Job).order_by(Job.id)).scalars():
        jobs += 1
        found.extend(_replay_job(job, by_job.pop(job.id, []), reviews.pop(job.id, [])))
        session.expunge(job)  # keep memory flat on a large database
    if total == 0 and jobs:
        found.insert(
            0,
            AuditFinding(
                "log",
                f"the audit log is empty, but the database holds {jobs} job(s): it was emptied",
            ),
        )
    for job_id, orphans in sorted(by_job.items()):
        found.append(
            AuditFinding(
                "history",
                f"entries for job {job_id} (from entry {orphans[0].seq}), but no such job: "
                "it was deleted",
                job_id,
                orphans[0].seq,
            )
        )
    for job_id, rows in sorted(reviews.items()):
        found.append(
            AuditFinding(
                "review", f"review {rows[0].id} is of job {job_id}, which does not exist", job_id
            )
        )
    found.extend(_replay_policies(session, edits))
    return found


def _head_findings(session: Session, check: str, head: SignedHead, what: str) -> list[AuditFinding]:
    return [
        AuditFinding(check, f"{what} (entry {head.seq}): {problem}", seq=head.seq)
        for problem in log_problems(session, head)
    ]


def verify(
    session: Session,
    notary: Notary | None = None,
    published: SignedHead | None = None,
    public_key: str | None = None,
) -> AuditReport:
    """Check the chain, replay the log, and hold it against the hub's last signed head and,
    when given, a ``published`` head (signed by ``public_key``, else by the hub's key)."""
    found: list[AuditFinding] = []
    broken = audit.verify(session)
    if broken is not None:
        found.append(
            AuditFinding(
                "chain",
                f"the hash chain breaks at entry {broken}: an entry "
                "was edited, removed or reordered",
                seq=broken,
            )
        )
    found.extend(replay(session))
    last: SignedHead | None = None
    if notary is not None:
        if public_key is not None and public_key.strip() != notary.public_key:
            found.append(
                AuditFinding(
                    "signed_head",
                    f"the hub signs with key {notary.key_id}, not the pinned key: "
                    "its key was replaced",
                )
            )
        try:
            last = notary.last(session)
        except HeadError as exc:
            found.append(AuditFinding("signed_head", str(exc)))
        if last is not None:
            found.extend(_head_findings(session, "signed_head", last, "the hub's last signed head"))
    if published is not None:
        try:
            pin = public_key or (notary.public_key if notary is not None else None)
            check_signature(published, pin)
        except HeadError as exc:
            found.append(
                AuditFinding("published_head", f"the published head: {exc}", seq=published.seq)
            )
        else:
            found.extend(_head_findings(session, "published_head", published, "the published head"))
    entries = session.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
    jobs = session.execute(select(func.count()).select_from(Job)).scalar_one()
    return AuditReport(
        ok=not found,
        first_broken_seq=broken,
        entries=entries,
        jobs=jobs,
        findings=[FindingOut(**f.to_dict()) for f in found],
        head=last,
    )
