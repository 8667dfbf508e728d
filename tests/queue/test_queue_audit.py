"""The hash-chained audit log: intact after work; an edited, removed or reordered row is found."""

from __future__ import annotations

import itertools

from sqlalchemy import delete, update

from analoglab.queue import audit
from analoglab.queue.jobs import JobQueue
from analoglab.queue.models import AuditEntry

from .conftest import probe_spec


def _work(queue: JobQueue) -> None:
    for _ in range(3):
        job = queue.submit("alice", "frontier-a", probe_spec())
        queue.review(job.id, "rita", "approve", "ok")


def test_every_transition_is_audited_and_chained(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions() as session:
        entries = audit.entries(session)
    assert [e.seq for e in entries] == list(range(1, 7))
    assert [e.action for e in entries[:2]] == ["submit", "review"]
    assert entries[1].from_state == "awaiting_review" and entries[1].to_state == "approved"
    assert entries[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert queue.verify_audit() is None


def test_an_edited_entry_is_found(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions.begin() as session:
        session.execute(
            update(AuditEntry).where(AuditEntry.seq == 4).values(detail={"comment": "forged"})
        )
    assert queue.verify_audit() == 4


def test_a_deleted_entry_is_found(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions.begin() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 3))
    assert queue.verify_audit() == 3


def test_reordered_entries_are_found(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions.begin() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(seq=100))
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(seq=2))
        session.execute(update(AuditEntry).where(AuditEntry.seq == 100).values(seq=3))
    assert queue.verify_audit() == 2
