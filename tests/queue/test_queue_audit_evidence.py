"""Audit as evidence: the tamper test.

A worked database is edited behind the queue's back (raw SQL on its own connection, on SQLite
and PostgreSQL): a job's state, a review's decision, a released result's numbers, the last
audit rows (truncation), every audit row, and the whole log rewritten and re-chained with
sha256 without the hub's key. Each is found by :func:`evidence.verify`, naming what differs;
an untouched database verifies clean.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from analoglab.queue import audit, evidence
from analoglab.queue.head import (
    HeadError,
    Notary,
    SignedHead,
    check_signature,
    parse_head,
    sign_head,
)
from analoglab.queue.jobs import JobQueue, canonical_hash
from analoglab.queue.models import AuditEntry

from .conftest import probe_spec, result_for


@pytest.fixture
def notary(queue: JobQueue, tmp_path: Path) -> Iterator[Notary]:
    n = Notary(tmp_path / "keys" / "audit-signing-key.pem", str(queue.engine.url))
    n.attach(queue.sessions)
    yield n
    n.close()


@pytest.fixture
def worked(queue: JobQueue, notary: Notary) -> dict[str, int]:
    """Jobs in many states: released (lab-a, human gates), rejected, awaiting review,
    auto-released (lab-b)."""
    released = queue.submit("alice", "frontier-a", probe_spec())
    queue.review(released.id, "rita", "approve", "fine")
    claimed = queue.claim("lab-a", "agent-a")
    assert claimed is not None and claimed.id == released.id
    queue.post_result(released.id, claimed.lease_id, "agent-a", result_for(claimed))
    queue.release(released.id, "rita", "release", "numbers look right")
    rejected = queue.submit("alice", "frontier-a", probe_spec(4))
    queue.review(rejected.id, "rita", "reject", "too broad")
    waiting = queue.submit("bob", "frontier-a", probe_spec(6))
    auto = queue.submit("bob", "frontier-b", probe_spec(5))
    claimed = queue.claim("lab-b", "agent-b")
    assert claimed is not None
    queue.post_result(auto.id, claimed.lease_id, "agent-b", result_for(claimed))
    tighter = queue.policy("frontier-a").model_copy(update={"max_prompts": 32})
    queue.set_policy("frontier-a", tighter, "rita")
    return {
        "released": released.id,
        "rejected": rejected.id,
        "waiting": waiting.id,
        "auto": auto.id,
    }


@pytest.fixture
def raw(db_url: str) -> Iterator[Engine]:
    """A plain engine on the same database: SQL behind the queue's back."""
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def report(queue: JobQueue, notary: Notary, **kw: Any) -> evidence.AuditReport:
    notary.flush()  # as the service does before it verifies
    with queue.sessions() as session:
        return evidence.verify(session, notary, **kw)


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def rechain(engine: Engine) -> None:
    """Recompute every entry's prev_hash and hash with plain sha256, as anyone with the
    database (and the source) can: the chain then holds."""
    with Session(engine) as session, session.begin():
        entries = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        for entry in entries:  # free the unique hashes first
            entry.hash = f"x{entry.seq}"
        session.flush()
        prev = audit.GENESIS
        for entry in entries:
            entry.prev_hash = prev
            entry.hash = prev = audit.entry_hash(prev, audit.payload_of(entry))


def checks(rep: evidence.AuditReport) -> set[str]:
    return {f.check for f in rep.findings}


def test_an_untouched_database_verifies(
    queue: JobQueue, notary: Notary, worked: dict[str, int]
) -> None:
    rep = report(queue, notary)
    assert rep.ok, rep.findings
    assert rep.findings == [] and rep.first_broken_seq is None
    assert rep.jobs == 4 and rep.entries > 10
    # The hub signed the newest entry after the last commit, and kept it beside its key.
    assert rep.head is not None and rep.head.seq == rep.entries
    check_signature(rep.head, notary.public_key)
    assert notary.head_path.exists() and notary.key_path.stat().st_mode & 0o777 == 0o600


def test_a_job_state_changed_in_the_database_is_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    sql(raw, "UPDATE jobs SET state = 'approved' WHERE id = :id", id=worked["waiting"])
    rep = report(queue, notary)
    assert not rep.ok and rep.first_broken_seq is None  # the chain itself holds
    [finding] = rep.findings
    assert finding.check == "state" and finding.job_id == worked["waiting"]
    assert "approved in the database" in finding.message and "awaiting_review" in finding.message


def test_a_rewritten_review_decision_is_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    sql(raw, "UPDATE reviews SET decision = 'approve' WHERE job_id = :id", id=worked["rejected"])
    [finding] = report(queue, notary).findings
    assert finding.check == "review" and finding.job_id == worked["rejected"]
    assert "decision is 'approve', the log says 'reject'" in finding.message


@pytest.mark.parametrize("rehash", [False, True], ids=["result", "result+hash"])
def test_altered_result_numbers_are_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine, rehash: bool
) -> None:
    job = queue.get(worked["released"])
    assert job.result is not None
    forged = {**job.result, "metrics": {**job.result["metrics"], "accuracy": 0.99}}
    sql(raw, "UPDATE jobs SET result = :r WHERE id = :id", r=json.dumps(forged), id=job.id)
    if rehash:  # a careful forger also fixes the job's own result_hash
        digest, _ = canonical_hash(forged)
        sql(raw, "UPDATE jobs SET result_hash = :h WHERE id = :id", h=digest, id=job.id)
    [finding] = report(queue, notary).findings
    assert finding.check == "result" and finding.job_id == job.id
    assert "the result was altered" in finding.message


def test_truncating_the_log_is_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    before = report(queue, notary).entries
    sql(raw, "DELETE FROM audit_log WHERE seq > :n", n=before - 2)
    rep = report(queue, notary)
    assert rep.first_broken_seq is None  # what is left still chains
    assert "signed_head" in checks(rep)
    assert any(
        f"ends at entry {before - 2}" in f.message and "truncated" in f.message
        for f in rep.findings
    )


def test_emptying_the_log_is_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    sql(raw, "DELETE FROM audit_log")
    rep = report(queue, notary)
    assert not rep.ok and rep.entries == 0 and rep.first_broken_seq is None
    assert rep.findings[0].check == "log" and "emptied" in rep.findings[0].message
    assert {"log", "history", "signed_head"} <= checks(rep)
    # every job is named, as a job without its entries
    assert {f.job_id for f in rep.findings if f.check == "history"} == set(worked.values())


def test_a_log_rechained_without_the_key_is_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    # The forger rewrites the rejection as an approval everywhere in the database (the job,
    # its review and the log entry) and recomputes every hash: replay and chain both hold.
    job_id = worked["rejected"]
    sql(raw, "UPDATE jobs SET state = 'approved' WHERE id = :id", id=job_id)
    sql(raw, "UPDATE reviews SET decision = 'approve' WHERE job_id = :id", id=job_id)
    sql(
        raw,
        "UPDATE audit_log SET to_state = 'approved', detail = :d "
        "WHERE job_id = :id AND action = 'review'",
        d=json.dumps({"decision": "approve", "comment": "too broad"}),
        id=job_id,
    )
    rechain(raw)
    rep = report(queue, notary)
    assert rep.first_broken_seq is None
    assert checks(rep) == {"signed_head"}, rep.findings
    assert "the log was rewritten" in rep.findings[0].message
    # ... and the hub will not sign the forged log.
    with queue.sessions() as session, pytest.raises(HeadError, match="does not extend"):
        notary.sign(session)


def test_a_deleted_job_and_a_removed_head_record_are_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    sql(raw, "DELETE FROM reviews WHERE job_id = :id", id=worked["rejected"])
    sql(raw, "DELETE FROM jobs WHERE id = :id", id=worked["rejected"])
    notary.flush()  # nothing left to sign: no commit writes the record again
    notary.head_path.unlink()
    rep = report(queue, notary)
    messages = [f.message for f in rep.findings]
    assert any(f"job {worked['rejected']}" in m and "no such job" in m for m in messages)
    assert any("record of signed heads" in m and "removed" in m for m in messages)
    # A restarted hub (a new Notary on the same key) does not start a new record either.
    again = Notary(notary.key_path)
    with queue.sessions() as session, pytest.raises(HeadError, match="removed"):
        again.last(session)


def test_one_key_keeps_one_record_per_database(tmp_path: Path, notary: Notary) -> None:
    from analoglab.queue.head import head_file

    key = notary.key_path
    one = head_file(key, "postgresql+psycopg://u:secret@db/queue")
    assert one == head_file(key, "postgresql+psycopg://u:other@db/queue")  # not the password
    assert one != head_file(key, "sqlite:////data/queue.db") and "secret" not in one.name


def test_a_published_head_catches_truncation_and_a_wrong_key(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    published = report(queue, notary).head
    assert published is not None
    ok = report(queue, notary, published=published, public_key=notary.public_key)
    assert ok.ok, ok.findings
    # Work goes on; the published head is still a prefix.
    queue.submit("carol", "frontier-a", probe_spec())
    assert report(queue, notary, published=published, public_key=notary.public_key).ok
    # Someone without the key edits the published head: its signature no longer holds.
    forged = published.model_copy(update={"seq": published.seq - 1})
    rep = report(queue, notary, published=forged, public_key=notary.public_key)
    assert checks(rep) == {"published_head"} and "signature" in rep.findings[0].message
    # A head signed by another key, pinned to that key: the hub's key is not the pinned one.
    stranger = sign_head(Ed25519PrivateKey.generate(), published.seq, published.hash, queue.clock())
    rep = report(queue, notary, published=stranger, public_key=notary.public_key)
    assert "not the pinned key" in rep.findings[0].message
    # Truncation below the published head, with the hub's own record gone too.
    notary.head_path.unlink()
    sql(raw, "DELETE FROM audit_log WHERE seq >= :n", n=published.seq)
    rep = report(queue, notary, published=published, public_key=notary.public_key)
    assert any(f.check == "published_head" and "truncated" in f.message for f in rep.findings)


def test_a_head_round_trips_through_json(notary: Notary, worked: dict[str, int]) -> None:
    head = notary.last()
    assert head is not None
    again = parse_head(json.loads(head.model_dump_json()))
    check_signature(again, notary.public_key)
    with pytest.raises(HeadError, match="not a signed audit head"):
        parse_head({"seq": -1})
    assert isinstance(again, SignedHead)


def test_a_policy_edited_in_the_database_is_found(
    queue: JobQueue, notary: Notary, worked: dict[str, int], raw: Engine
) -> None:
    # The gate switched off behind the log's back: no human review on frontier-a.
    policy = {**queue.policy("frontier-a").model_dump(mode="json"), "human_review": False}
    sql(
        raw,
        "UPDATE policy_overrides SET policy = :p WHERE frontier = 'frontier-a'",
        p=json.dumps(policy),
    )
    sql(
        raw,
        "INSERT INTO policy_overrides (frontier, policy, updated_by, updated_at) "
        "VALUES ('frontier-b', :p, 'mallory', :t)",
        p=json.dumps(policy),
        t=queue.clock(),
    )
    found = {f.message for f in report(queue, notary).findings}
    assert any(
        "frontier frontier-a: the policy differs" in m and m.endswith("human_review") for m in found
    )
    assert "frontier frontier-b: a policy override the log never recorded" in found


def test_concurrent_commits_end_signed(queue: JobQueue, notary: Notary) -> None:
    """Writers racing: each commit signs or leaves it to the thread already signing, which
    signs again before it stops; the last head vouches for the last entry."""

    def work(i: int) -> None:
        job = queue.submit(f"user{i}", "frontier-b", probe_spec(4 + i % 3))
        claimed = queue.claim("lab-b", f"agent{i}")
        assert claimed is not None
        queue.give_back(claimed.id, claimed.lease_id, f"agent{i}", "done")
        assert job.id

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(12)))
    rep = report(queue, notary)
    assert rep.ok, rep.findings
    assert rep.head is not None and rep.head.seq == rep.entries == 36


def test_commits_are_signed_in_the_background(queue: JobQueue, notary: Notary) -> None:
    queue.submit("alice", "frontier-a", probe_spec())
    queue.submit("bob", "frontier-a", probe_spec())
    deadline = time.monotonic() + 10
    while (last := notary.last()) is None or last.seq < 2:
        assert time.monotonic() < deadline, "the background signer did not sign the commits"
        time.sleep(0.02)
    with queue.sessions() as session:
        newest = audit.head(session)
    assert newest is not None and (last.seq, last.hash) == (2, newest.hash)


def test_a_rewritten_result_signer_is_found(queue: JobQueue, notary: Notary, raw: Engine) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    claimed = queue.claim("lab-b", "agent-b")
    assert claimed is not None
    queue.post_result(
        job.id, claimed.lease_id, "agent-b", result_for(claimed), signature="c2ln", key_id="a" * 16
    )
    assert report(queue, notary).ok
    sql(raw, "UPDATE jobs SET result_key_id = :k WHERE id = :id", k="b" * 16, id=job.id)
    [finding] = report(queue, notary).findings
    assert finding.check == "result" and "signer is 'bbbbbbbbbbbbbbbb'" in finding.message
