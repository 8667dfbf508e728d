"""The job state machine, as data, and the one function that moves a job between states.

:data:`TRANSITIONS` lists every allowed move. :func:`transition` applies one by
compare-and-set in the database (``UPDATE jobs SET state=:new, version=version+1 WHERE
id=:id AND state=:expected``), so of two reviewers or two agents racing, exactly one wins and
the other gets :class:`~analoglab.queue.errors.TransitionRefused` naming both states. Each
applied transition appends its audit entry in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, select, update
from sqlalchemy.orm import Session

from analoglab.queue import audit
from analoglab.queue.errors import NotFound, TransitionRefused
from analoglab.queue.models import Job, utcnow


class State(StrEnum):
    AWAITING_REVIEW = "awaiting_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    CHANGES_REQUESTED = "changes_requested"
    RUNNING = "running"
    AWAITING_RELEASE = "awaiting_release"
    RELEASED = "released"
    WITHHELD = "withheld"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = State

#: States a job never leaves.
FINAL: frozenset[State] = frozenset({S.REJECTED, S.RELEASED, S.WITHHELD, S.FAILED, S.CANCELLED})

#: Every allowed move. ``cancelled`` is reachable from every non-final state (by the submitter).
TRANSITIONS: Mapping[State, frozenset[State]] = {
    S.AWAITING_REVIEW: frozenset({S.APPROVED, S.REJECTED, S.CHANGES_REQUESTED, S.CANCELLED}),
    S.CHANGES_REQUESTED: frozenset({S.AWAITING_REVIEW, S.CANCELLED}),
    S.APPROVED: frozenset({S.RUNNING, S.CANCELLED}),
    # back to approved: the lease expired or the agent gave the job back.
    S.RUNNING: frozenset({S.AWAITING_RELEASE, S.APPROVED, S.FAILED, S.CANCELLED}),
    S.AWAITING_RELEASE: frozenset({S.RELEASED, S.WITHHELD, S.CANCELLED}),
    **{final: frozenset() for final in FINAL},
}


def allowed(source: State | str, target: State | str) -> bool:
    return State(target) in TRANSITIONS[State(source)]


def check(source: State | str, target: State | str) -> None:
    """Raise :class:`TransitionRefused` unless the state machine allows ``source → target``."""
    if not allowed(source, target):
        nexts = sorted(TRANSITIONS[State(source)])
        raise TransitionRefused(
            f"a job cannot go from {State(source)} to {State(target)}; from {State(source)} "
            + (f"it can go to {', '.join(nexts)}" if nexts else "it goes nowhere (final state)")
        )


def current_state(session: Session, job_id: int) -> State:
    state = session.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    if state is None:
        raise NotFound(f"no job {job_id}")
    return State(state)


@dataclass(frozen=True)
class Then:
    """A second move made in the same step as a :func:`transition` (from its new state), with
    its own actor, audit action, detail and values: e.g. a result handed in and released by
    the automatic check at once."""

    new: State
    actor: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


def transition(
    session: Session,
    job_id: int,
    expected: State,
    new: State,
    *,
    actor: str,
    action: str,
    detail: dict[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    where_reason: str = "a condition of this action no longer holds",
    now: dt.datetime | None = None,
    then: Then | None = None,
) -> None:
    """Move job ``job_id`` from ``expected`` to ``new`` by compare-and-set, or raise.

    ``values`` are set in the same UPDATE (lease, result, decision); ``where`` adds conditions
    (the caller's lease); ``where_reason`` says what failed when only those conditions did.
    ``then``: move on from ``new`` in the same UPDATE (the job ends in ``then.new``, its
    version up by two, as after two transitions), each move with its own audit entry.
    """
    check(expected, new)
    if then is not None:
        check(new, then.new)
    now = now or utcnow()
    audit.lock(session)
    final = new if then is None else then.new
    sets = {**dict(values or {}), **(dict(then.values) if then is not None else {})}
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state == expected.value, *where)
        .values(
            state=final.value,
            version=Job.version + (1 if then is None else 2),
            updated_at=now,
            **sets,
        )
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], session.execute(stmt))
    if result.rowcount != 1:
        actual = current_state(session, job_id)
        if actual != expected:
            raise TransitionRefused(
                f"job {job_id} is {actual}, not {expected}: cannot move it to {new} "
                "(another caller changed it first, or it was never there)"
            )
        raise TransitionRefused(
            f"job {job_id} cannot move from {expected} to {new}: {where_reason}"
        )
    # An ORM object of this job loaded earlier in the session is stale now (one not loaded is
    # not read: that would cost two queries of the whole row, its result included).
    job = session.identity_map.get(session.identity_key(Job, job_id))
    if job is not None:
        session.refresh(job)
    audit.append(
        session,
        actor=actor,
        action=action,
        job_id=job_id,
        from_state=expected.value,
        to_state=new.value,
        detail=detail or {},
        at=now,
    )
    if then is not None:
        audit.append(
            session,
            actor=then.actor,
            action=then.action,
            job_id=job_id,
            from_state=new.value,
            to_state=then.new.value,
            detail=then.detail,
            at=now,
        )
