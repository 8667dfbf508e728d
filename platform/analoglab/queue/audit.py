"""The append-only, hash-chained audit log of the queue.

Each entry's ``hash`` is sha256 over its ``prev_hash`` and the canonical JSON of the entry
(seq, time, actor, job, action, states, detail); the first entry's ``prev_hash`` is 64 zeros.
Entries are appended in the transaction of the change they record. :func:`verify` walks the
chain and returns the first seq that does not hold (an edited, removed or reordered entry).

The chain alone proves little: removing the *last* entries, or rewriting the log and
recomputing every hash, leaves a chain that holds. The evidence that catches those lives
outside the database: heads signed by the hub (:mod:`.head`), and the replay of the log
against the jobs, reviews and results (:mod:`.evidence`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from analoglab.queue.models import AuditEntry, utcnow

GENESIS = "0" * 64
# The key of the PostgreSQL advisory lock that serialises appends (any constant will do).
_LOCK_KEY = 0x616E616C6F67
#: In ``session.info``: ``(seq, prev_hash, hash)`` of each entry the transaction appended (the
#: :class:`~.head.Notary` signs a new head after such a commit).
APPENDED = "analoglab.audit.appended"
#: In ``session.info``: ``(transaction, seq, hash)`` of the last entry appended, and the
#: (innermost) transaction it was appended in. That transaction holds the writers' lock, so
#: while it lasts no one else appends: a later append in the *same* transaction takes its
#: head from here instead of reading it again. Any other transaction (a new one after a commit
#: or rollback, a savepoint begun or rolled back since) reads the head from the database.
_HEAD = "analoglab.audit.head"
#: In ``session.info``: the (innermost) transaction that took the writers' lock on PostgreSQL;
#: the lock is held until that transaction ends, so it is not asked for again within it.
_LOCKED = "analoglab.audit.locked"


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def payload_of(entry: AuditEntry) -> dict[str, Any]:
    """What the hash covers: every field but the hashes themselves."""
    return {
        "seq": entry.seq,
        "at": entry.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor": entry.actor,
        "job_id": entry.job_id,
        "action": entry.action,
        "from_state": entry.from_state,
        "to_state": entry.to_state,
        "detail": entry.detail,
    }


def entry_hash(prev_hash: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(payload)).encode()).hexdigest()


def _transaction(session: Session) -> object:
    """The innermost transaction in progress (the savepoint, if one is open)."""
    return session.get_nested_transaction() or session.get_transaction()


def lock(session: Session) -> None:
    """Serialise writers for the rest of this transaction, so the chain never forks.

    SQLite transactions already start with ``BEGIN IMMEDIATE`` (one writer at a time); on
    PostgreSQL a transaction-scoped advisory lock does the same. Take it before updating any
    job row, so that every writer takes its locks in the same order.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        # Held already when this very transaction took it (a new transaction, a savepoint
        # begun or rolled back since, is another object: it asks again; asking twice is
        # harmless, the lock is re-entrant).
        txn = _transaction(session)
        if txn is not None and session.info.get(_LOCKED) is txn:
            return
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        session.info[_LOCKED] = _transaction(session)


def head(session: Session) -> AuditEntry | None:
    return session.execute(
        select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)
    ).scalar_one_or_none()


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    job_id: int | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    detail: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction (committed, or rolled back, with it)."""
    lock(session)
    txn = _transaction(session)
    remembered = session.info.get(_HEAD)
    if remembered is not None and remembered[0] is txn:
        last_seq, last_hash = remembered[1], remembered[2]
    else:
        last = head(session)
        last_seq, last_hash = (last.seq, last.hash) if last else (0, GENESIS)
    entry = AuditEntry(
        seq=last_seq + 1,
        at=(at or utcnow()).astimezone(dt.UTC),
        actor=actor,
        job_id=job_id,
        action=action,
        from_state=from_state,
        to_state=to_state,
        # A JSON round trip, so that what is hashed is what the database gives back.
        detail=json.loads(canonical(detail or {})),
        prev_hash=last_hash,
    )
    entry.hash = entry_hash(entry.prev_hash, payload_of(entry))
    session.add(entry)
    session.info.pop(_HEAD, None)  # until the entry is in the database
    session.flush()
    session.info[_HEAD] = (_transaction(session), entry.seq, entry.hash)
    session.info.setdefault(APPENDED, []).append((entry.seq, entry.prev_hash, entry.hash))
    return entry


def verify(session: Session) -> int | None:
    """The seq of the first entry that breaks the chain, or None when the log is intact."""
    prev_hash = GENESIS
    expected_seq = 1
    for entry in session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
        if entry.seq != expected_seq or entry.prev_hash != prev_hash:
            return expected_seq if entry.seq != expected_seq else entry.seq
        if entry.hash != entry_hash(prev_hash, payload_of(entry)):
            return entry.seq
        prev_hash = entry.hash
        expected_seq += 1
    return None


def entries(session: Session, job_id: int | None = None) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(AuditEntry.seq)
    if job_id is not None:
        stmt = stmt.where(AuditEntry.job_id == job_id)
    return list(session.execute(stmt).scalars())
