"""The state machine: every pair of states allowed or refused; compare-and-set races."""

from __future__ import annotations

import threading
from itertools import product

import pytest

from analoglab.queue.errors import TransitionRefused
from analoglab.queue.jobs import JobQueue
from analoglab.queue.states import FINAL, TRANSITIONS, State, allowed, check, transition

from .conftest import probe_spec

S = State
EXPECTED = {
    (S.AWAITING_REVIEW, S.APPROVED),
    (S.AWAITING_REVIEW, S.REJECTED),
    (S.AWAITING_REVIEW, S.CHANGES_REQUESTED),
    (S.CHANGES_REQUESTED, S.AWAITING_REVIEW),
    (S.APPROVED, S.RUNNING),
    (S.RUNNING, S.AWAITING_RELEASE),
    (S.RUNNING, S.APPROVED),
    (S.RUNNING, S.FAILED),
    (S.AWAITING_RELEASE, S.RELEASED),
    (S.AWAITING_RELEASE, S.WITHHELD),
} | {(s, S.CANCELLED) for s in S if s not in FINAL}


@pytest.mark.parametrize(("source", "target"), list(product(S, S)))
def test_every_pair_of_states_is_allowed_or_refused(source: State, target: State) -> None:
    assert allowed(source, target) == ((source, target) in EXPECTED)
    if (source, target) in EXPECTED:
        check(source, target)
    else:
        with pytest.raises(TransitionRefused, match=f"from {source} to {target}"):
            check(source, target)


def test_final_states_go_nowhere() -> None:
    assert {S.REJECTED, S.RELEASED, S.WITHHELD, S.FAILED, S.CANCELLED} == FINAL
    assert all(not TRANSITIONS[s] for s in FINAL)


def test_a_refused_transition_in_the_database_names_the_states(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-a", probe_spec())
    with queue.sessions.begin() as session, pytest.raises(TransitionRefused) as err:
        transition(session, job.id, S.APPROVED, S.RUNNING, actor="x", action="claim")
    assert "is awaiting_review, not approved" in str(err.value)
    with queue.sessions.begin() as session, pytest.raises(TransitionRefused) as err:
        transition(session, job.id, S.AWAITING_REVIEW, S.RELEASED, actor="x", action="x")
    assert "from awaiting_review to released" in str(err.value)
    assert queue.get(job.id).state == "awaiting_review"


def test_racing_reviewers_exactly_one_wins(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-a", probe_spec())
    n = 8
    barrier = threading.Barrier(n)
    wins: list[str] = []
    losses: list[str] = []

    def attempt(i: int) -> None:
        decision = ("approve", "reject", "request_changes")[i % 3]
        barrier.wait()
        try:
            queue.review(job.id, f"reviewer-{i}", decision)
            wins.append(decision)
        except TransitionRefused as exc:
            losses.append(str(exc))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == n - 1
    assert all("not awaiting_review" in m for m in losses)
    final = queue.get(job.id)
    assert final.version == 1 and len(queue.reviews(job.id)) == 1
    assert queue.verify_audit() is None
