"""The queue's operations on both databases: submit, leases, claims, results, give-back."""

from __future__ import annotations

import threading

import pytest

from analoglab.queue.errors import Conflict, Invalid, LeaseLost, TransitionRefused
from analoglab.queue.jobs import JobQueue

from .conftest import Clock, probe_spec, result_for


def test_a_retried_submit_returns_the_same_job(queue: JobQueue) -> None:
    first = queue.submit("alice", "frontier-a", probe_spec(), idempotency_key="k1")
    again = queue.submit("alice", "frontier-a", probe_spec(), idempotency_key="k1")
    other_user = queue.submit("bob", "frontier-a", probe_spec(), idempotency_key="k1")
    assert first.id == again.id != other_user.id
    with pytest.raises(Conflict, match="Idempotency-Key 'k1'"):
        queue.submit("alice", "frontier-a", probe_spec(n=9), idempotency_key="k1")
    jobs, _ = queue.list_jobs(submitter="alice")
    assert [j.id for j in jobs] == [first.id]


def test_concurrent_retries_make_one_job(queue: JobQueue) -> None:
    ids: list[int] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        ids.append(queue.submit("alice", "frontier-a", probe_spec(), idempotency_key="r").id)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1


def test_human_review_decides_the_first_state(queue: JobQueue) -> None:
    assert queue.submit("alice", "frontier-a", probe_spec()).state == "awaiting_review"
    assert queue.submit("alice", "frontier-b", probe_spec()).state == "approved"


def test_full_path_with_human_release(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-a", probe_spec())
    queue.review(job.id, "rita", "request_changes", "fewer items please")
    job = queue.resubmit(job.id, "alice", probe_spec(n=6))
    assert job.state == "awaiting_review" and len(job.spec["data"]["items"]) == 6
    queue.review(job.id, "rita", "approve", "fine")
    claimed = queue.claim("lab-a", "agent-1")
    assert claimed is not None and claimed.id == job.id and claimed.state == "running"
    assert claimed.lease_id
    done = queue.post_result(job.id, claimed.lease_id, "agent-1", result_for(claimed))
    assert done.state == "awaiting_release" and done.result_size
    assert done.lease_holder is None and done.lease_expires_at is None  # the lease ended
    released = queue.release(job.id, "rita", "release", "aggregate numbers only")
    assert released.state == "released" and released.release_reason == "aggregate numbers only"
    assert queue.verify_audit() is None


def test_auto_release_where_the_policy_asks_no_human(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    claimed = queue.claim("lab-b", "agent-b")
    assert claimed is not None and claimed.id == job.id
    done = queue.post_result(job.id, claimed.lease_id, "agent-b", result_for(claimed))
    assert done.state == "released" and done.release_decision == "release"


def test_no_job_for_another_lab(queue: JobQueue) -> None:
    queue.submit("alice", "frontier-b", probe_spec())
    assert queue.claim("lab-a", "agent-a") is None


def test_an_expired_lease_returns_the_job_then_fails_it(queue: JobQueue, clock: Clock) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    first = queue.claim("lab-b", "agent-1")
    assert first is not None and first.lease_id
    clock.advance(30)
    queue.heartbeat(job.id, first.lease_id)  # lease now ends at +90 s
    clock.advance(59)
    assert queue.sweep() == 0
    clock.advance(2)
    assert queue.sweep() == 1
    back = queue.get(job.id)
    assert back.state == "approved" and back.attempts == 1 and back.lease_holder is None
    with pytest.raises(LeaseLost):
        queue.heartbeat(job.id, first.lease_id)
    second = queue.claim("lab-b", "agent-2")
    assert second is not None and second.lease_id != first.lease_id
    with pytest.raises(LeaseLost):
        queue.post_result(job.id, first.lease_id, "agent-1", result_for(job))
    clock.advance(61)
    assert queue.claim("lab-b", "agent-3") is None  # the sweep on claim fails it (2 attempts)
    failed = queue.get(job.id)
    assert failed.state == "failed" and failed.attempts == 2


def test_give_back_without_and_with_error(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    c = queue.claim("lab-b", "agent")
    assert c is not None
    assert queue.give_back(job.id, c.lease_id, "agent", "shutting down").state == "approved"
    c = queue.claim("lab-b", "agent")
    assert c is not None
    with pytest.raises(LeaseLost):
        queue.give_back(job.id, "not-my-lease", "agent")
    after = queue.give_back(job.id, c.lease_id, "agent", "out of memory", error=True)
    assert after.state == "approved" and after.attempts == 1
    c = queue.claim("lab-b", "agent")
    assert c is not None
    assert queue.give_back(job.id, c.lease_id, "agent", "again", error=True).state == "failed"


def test_concurrent_claims_one_winner_per_job(queue: JobQueue) -> None:
    job_ids = {queue.submit(f"user{i}", "frontier-b", probe_spec()).id for i in range(3)}
    n = 8
    barrier = threading.Barrier(n)
    got: list[int] = []

    def agent(i: int) -> None:
        barrier.wait()
        job = queue.claim("lab-b", f"agent-{i}")
        if job is not None:
            got.append(job.id)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(job_ids)


def test_a_result_posted_twice_is_stored_once(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-a", probe_spec())
    queue.review(job.id, "rita", "approve")
    c = queue.claim("lab-a", "agent")
    assert c is not None
    result = result_for(c)
    first = queue.post_result(job.id, c.lease_id, "agent", result)
    second = queue.post_result(job.id, c.lease_id, "agent", result)
    assert first.version == second.version and second.state == "awaiting_release"
    other = result_for(c, metrics={"accuracy": 0.1})
    with pytest.raises(Conflict, match="different result"):
        queue.post_result(job.id, c.lease_id, "agent", other)
    from analoglab.queue import audit

    with queue.sessions() as session:
        actions = [e.action for e in audit.entries(session, job.id)]
    assert actions.count("result") == 1


def test_results_are_checked(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    c = queue.claim("lab-b", "agent")
    assert c is not None
    with pytest.raises(Invalid, match="not an ExperimentResult"):
        queue.post_result(job.id, c.lease_id, "agent", {"method": "probe"})
    wrong = result_for(c) | {"spec_hash": "f" * 64, "method": "steering"}
    with pytest.raises(Invalid, match="method 'steering'.*another spec"):
        queue.post_result(job.id, c.lease_id, "agent", wrong)
    with pytest.raises(Invalid, match="generated text"):
        queue.post_result(job.id, c.lease_id, "agent", result_for(c, samples=["hi"]))
    smuggled = result_for(c, tables={"hidden_states": [[0.5] * 4]}, metrics={"accuracy": 0.9})
    with pytest.raises(Invalid, match=r"1 table\(s\) that probe does not produce.*'effect'"):
        queue.post_result(job.id, c.lease_id, "agent", smuggled)
    huge = result_for(c, profiles={"accuracy": {"indices": list(range(60_000)),
                                                "depths": [0.5] * 60_000,
                                                "values": [0.123456789] * 60_000}})
    with pytest.raises(Invalid, match="over the policy's cap of 1000000 bytes"):
        queue.post_result(job.id, c.lease_id, "agent", huge)
    assert queue.get(job.id).state == "running"


def test_cancel_from_each_open_state_only(queue: JobQueue) -> None:
    a = queue.submit("alice", "frontier-a", probe_spec())
    assert queue.cancel(a.id, "alice").state == "cancelled"
    with pytest.raises(TransitionRefused, match="final state"):
        queue.cancel(a.id, "alice")
    b = queue.submit("alice", "frontier-b", probe_spec())
    c = queue.claim("lab-b", "agent")
    assert c is not None and c.id == b.id
    cancelled = queue.cancel(b.id, "alice")
    assert cancelled.state == "cancelled" and cancelled.lease_id is None
    with pytest.raises(LeaseLost):
        queue.heartbeat(b.id, c.lease_id or "")


def test_pagination_and_filters(queue: JobQueue) -> None:
    ids = [queue.submit("alice", "frontier-a", probe_spec()).id for _ in range(5)]
    queue.review(ids[0], "rita", "reject")
    page1, cur = queue.list_jobs(submitter="alice", limit=2)
    page2, cur2 = queue.list_jobs(submitter="alice", limit=2, cursor=cur)
    page3, cur3 = queue.list_jobs(submitter="alice", limit=2, cursor=cur2)
    assert [j.id for j in page1 + page2 + page3] == ids[::-1] and cur3 is None
    from analoglab.queue.states import State

    rejected, _ = queue.list_jobs(lab="lab-a", state=State.REJECTED)
    assert [j.id for j in rejected] == [ids[0]]
