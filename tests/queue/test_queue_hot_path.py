"""What the agent's hot path (claims, results) may not lose to being cheaper: the audit head
remembered within one transaction (never across transactions, rollbacks or savepoints), the
writers' lock asked once a transaction on PostgreSQL (and asked again after a rolled-back
savepoint), the chain after a bulk post of many results and of a partly refused one, the
reviews of claimed jobs (read in one query), and the finite-numbers check of request
bodies."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from analoglab.config import Settings
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.bounds import finite
from analoglab.queue.db import make_engine
from analoglab.queue.errors import LeaseLost
from analoglab.queue.jobs import MAX_CLAIM, CatalogFrontiers, JobQueue, QueueSettings, ResultPost
from analoglab.queue.migrate import upgrade
from analoglab.queue.models import Job
from analoglab.queue.service import create_app

from .conftest import Clock, _pg_database, probe_spec, result_for


def _seqs(queue: JobQueue) -> list[int]:
    with queue.sessions() as session:
        return [e.seq for e in audit.entries(session)]


def _assert_chain(queue: JobQueue) -> None:
    seqs = _seqs(queue)
    assert seqs == list(range(1, len(seqs) + 1))
    with queue.sessions() as session:
        assert audit.verify(session) is None


def test_a_bulk_post_of_many_results_keeps_the_chain(queue: JobQueue) -> None:
    for i in range(MAX_CLAIM):
        queue.submit(f"user{i % 16}", "frontier-b", probe_spec(n=4 + i % 8))
    jobs = queue.claim_many("lab-b", "agent-b", MAX_CLAIM)  # 64 claims, one transaction
    _assert_chain(queue)
    answers = queue.post_results(
        "lab-b", "agent-b", [ResultPost(j.id, j.lease_id or "", result_for(j)) for j in jobs]
    )
    assert all(isinstance(a, Job) and a.state == "released" for a in answers)
    _assert_chain(queue)
    stored = {job.id: job.result_hash for job in queue.get_many([j.id for j in jobs])}
    with queue.sessions() as session:
        for job in jobs:
            entries = audit.entries(session, job.id)
            assert [e.action for e in entries] == ["submit", "claim", "result", "release"]
            assert [(e.from_state, e.to_state) for e in entries[2:]] == [
                ("running", "awaiting_release"),
                ("awaiting_release", "released"),
            ]
            assert entries[2].at == entries[3].at  # handed in and released in one step
            assert entries[2].detail["result_hash"] == stored[job.id]
    # the claim and the two moves of the result: the job's version went up once each
    assert {j.version for j in queue.get_many([j.id for j in jobs])} == {
        jobs[0].version + 2
    }


def test_the_head_is_remembered_only_within_its_transaction(queue: JobQueue) -> None:
    queue.submit("alice", "frontier-b", probe_spec())
    with queue.sessions() as session:
        with session.begin():
            a = audit.append(session, actor="t", action="note")
            b = audit.append(session, actor="t", action="note")
            assert (b.seq, b.prev_hash) == (a.seq + 1, a.hash)
            head = audit.head(session)
            assert head is not None and head.hash == b.hash
        # another writer appends between this session's transactions
        with queue.sessions.begin() as other:
            c = audit.append(other, actor="other", action="note")
        with session.begin():
            d = audit.append(session, actor="t", action="note")
            assert (d.seq, d.prev_hash) == (c.seq + 1, c.hash)
    _assert_chain(queue)


def test_a_rolled_back_transaction_leaves_no_head_behind(queue: JobQueue) -> None:
    queue.submit("alice", "frontier-b", probe_spec())
    with queue.sessions() as session:
        session.begin()
        audit.append(session, actor="t", action="note")
        audit.append(session, actor="t", action="note")
        session.rollback()
        with session.begin():
            e = audit.append(session, actor="t", action="note")
    assert e.seq == 2  # after the submit's entry: the rolled-back ones never were
    _assert_chain(queue)


def test_a_rolled_back_savepoint_leaves_no_head_behind(queue: JobQueue) -> None:
    with queue.sessions.begin() as session:
        first = audit.append(session, actor="t", action="note")
        savepoint = session.begin_nested()
        audit.append(session, actor="t", action="note")
        savepoint.rollback()
        after = audit.append(session, actor="t", action="note")
        assert (after.seq, after.prev_hash) == (first.seq + 1, first.hash)
        kept = session.begin_nested()
        inner = audit.append(session, actor="t", action="note")
        kept.commit()
        last = audit.append(session, actor="t", action="note")
        assert (last.seq, last.prev_hash) == (inner.seq + 1, inner.hash)
    _assert_chain(queue)


def test_a_failed_transition_in_a_bulk_call_costs_the_chain_nothing(
    queue: JobQueue, clock: Clock
) -> None:
    for i in range(3):
        queue.submit("alice", "frontier-b", probe_spec(n=4 + i))
    early, late, other = queue.claim_many("lab-b", "agent-b", 3, lease_seconds=10)
    queue.heartbeat(late.id, late.lease_id, 120)
    queue.heartbeat(other.id, other.lease_id, 120)
    clock.advance(30)  # early's lease expired, the others' hold
    posts = [
        ResultPost(early.id, early.lease_id or "", result_for(early)),
        ResultPost(late.id, late.lease_id or "", result_for(late)),
        ResultPost(other.id, "z" * 32, result_for(other)),  # not its lease
    ]
    expired, landed, wrong = queue.post_results("lab-b", "agent-b", posts)
    assert isinstance(expired, LeaseLost) and isinstance(wrong, LeaseLost)
    assert isinstance(landed, Job) and landed.state == "released"
    assert queue.get(early.id).state == "running" and queue.get(other.id).state == "running"
    _assert_chain(queue)


def test_claims_carry_each_jobs_reviews(sqlite_url: str, catalog_home: Settings) -> None:
    tokens = {
        hash_token("r"): {"name": "alice", "roles": ["researcher"]},
        hash_token("v"): {"name": "rev", "roles": ["reviewer:lab-a"]},
        hash_token("a"): {"name": "bot", "roles": ["agent:lab-a"]},
    }
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        alice, rev, bot = ({"Authorization": f"Bearer {t}"} for t in "rva")
        ids = []
        for n in (4, 5, 6):
            resp = c.post(
                "/api/jobs", json={"frontier": "frontier-a", "spec": probe_spec(n=n)}, headers=alice
            )
            ids.append(resp.json()["id"])
        for k, job_id in enumerate(ids):
            body = {"decision": "approve", "comment": f"fine {k}"}
            assert c.post(f"/api/jobs/{job_id}/review", json=body, headers=rev).status_code == 200
        resp = c.post("/api/labs/lab-a/claims?count=3", headers=bot)
        assert resp.status_code == 200
        claims = resp.json()["claims"]
        assert sorted(cl["job"]["id"] for cl in claims) == sorted(ids)
        for cl in claims:
            one = c.get(f"/api/jobs/{cl['job']['id']}", headers=bot).json()
            assert cl["job"]["reviews"] == one["reviews"] and len(one["reviews"]) == 1


class Number(float):
    pass


@pytest.mark.parametrize(
    "bad",
    [
        math.nan,
        {"a": [1, 2, {"b": (0.5, -math.inf)}]},
        [[[math.inf]]],
        {"x": Number("nan")},
        ({"y": [True, None, "s", 3, math.nan]},),
    ],
)
def test_finite_refuses_every_nan_and_infinity(bad: object) -> None:
    with pytest.raises(ValueError, match="finite"):
        finite(bad)


def test_finite_passes_finite_trees() -> None:
    tree = {"a": [1, 2.5, True, None, "nan", {"b": (Number(1.0), [0.0, -1e308])}]}
    assert finite(tree) is tree


def _lock_free(queue: JobQueue) -> bool:
    """Whether another connection could take the writers' lock now (PostgreSQL)."""
    with queue.engine.connect() as other:
        got = other.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": audit._LOCK_KEY}
        ).scalar_one()
        other.rollback()
    return bool(got)


@pytest.fixture
def pg_queue(catalog_home: Settings, clock: Clock) -> Iterator[JobQueue]:
    """A queue on PostgreSQL only (the writers' lock there is an advisory lock)."""
    for url in _pg_database():
        upgrade(url)
        engine = make_engine(url)
        yield JobQueue(engine, CatalogFrontiers(catalog_home), QueueSettings(), clock)
        engine.dispose()


def test_the_writers_lock_is_asked_once_a_transaction_and_held(pg_queue: JobQueue) -> None:
    queue = pg_queue
    assert queue.engine.dialect.name == "postgresql"
    asked: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "pg_advisory_xact_lock" in statement:
            asked.append(statement)

    event.listen(queue.engine, "before_cursor_execute", count)
    try:
        queue.submit("alice", "frontier-b", probe_spec())
        assert len(asked) == 1  # the submit's lock, its transition's and its append's: one
        assert _lock_free(queue)
        with queue.sessions() as session:
            session.begin()
            savepoint = session.begin_nested()
            audit.lock(session)
            assert not _lock_free(queue)
            savepoint.rollback()  # a lock taken in a rolled-back savepoint is let go
            assert _lock_free(queue)
            audit.append(session, actor="t", action="note")  # so it is asked for again
            assert len(asked) == 3
            assert not _lock_free(queue)
            audit.append(session, actor="t", action="note")
            assert len(asked) == 3 and not _lock_free(queue)
            session.commit()
            assert _lock_free(queue)
            with session.begin():
                audit.append(session, actor="t", action="note")  # a new transaction asks
                assert len(asked) == 4 and not _lock_free(queue)
    finally:
        event.remove(queue.engine, "before_cursor_execute", count)
    _assert_chain(queue)
