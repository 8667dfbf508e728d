"""Several results in one call (``JobQueue.post_results``, ``POST /api/labs/{lab}/results``):
each checked and answered as its own post would be, those that pass stored in one
transaction, on both databases and through the API."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.lab.release import sign_result
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.errors import Conflict, Invalid, LeaseLost, NotFound, QueueError
from analoglab.queue.jobs import JobQueue, ResultPost
from analoglab.queue.models import Job
from analoglab.queue.service import create_app
from analoglab.signing import public_key_text

from .conftest import probe_spec, result_for


def running(queue: JobQueue, n: int) -> list[Job]:
    """``n`` jobs of lab-b (approved at once), claimed by agent-b."""
    for i in range(n):
        queue.submit("alice", "frontier-b", probe_spec(n=5 + i))
    got = queue.claim_many("lab-b", "agent-b", n)
    assert len(got) == n
    return got


def test_several_results_land_in_one_call(queue: JobQueue) -> None:
    jobs = running(queue, 3)
    answers = queue.post_results(
        "lab-b", "agent-b", [ResultPost(j.id, j.lease_id, result_for(j)) for j in jobs]
    )
    assert [a.id for a in answers if isinstance(a, Job)] == [j.id for j in jobs]
    # lab-b releases automatically: each job went running → awaiting_release → released
    assert {queue.get(j.id).state for j in jobs} == {"released"}
    with queue.sessions() as session:
        for j in jobs:
            actions = [e.action for e in audit.entries(session, j.id)]
            assert actions[-2:] == ["result", "release"]
        assert audit.verify(session) is None  # the chain holds across the one transaction
    # the same posts again: each a no-op, answered with the job (a retry whose answer was lost)
    again = queue.post_results(
        "lab-b", "agent-b", [ResultPost(j.id, j.lease_id, result_for(j)) for j in jobs]
    )
    assert [a.state for a in again if isinstance(a, Job)] == ["released"] * 3


def test_a_refused_result_costs_the_others_nothing(queue: JobQueue) -> None:
    good, stale, bad, twice = running(queue, 4)
    posts = [
        ResultPost(good.id, good.lease_id, result_for(good)),
        ResultPost(stale.id, "s" * 32, result_for(stale)),  # not the lease it holds
        ResultPost(bad.id, bad.lease_id, {"method": "probe"}),  # not an ExperimentResult
        ResultPost(twice.id, twice.lease_id, result_for(twice)),
        ResultPost(twice.id, twice.lease_id, result_for(twice)),  # the same job again
        ResultPost(10_000, "x" * 32, result_for(good)),  # no such job
    ]
    answers = queue.post_results("lab-b", "agent-b", posts)
    kinds: list[Any] = [type(a) if isinstance(a, QueueError) else a.state for a in answers]
    assert kinds == ["released", LeaseLost, Invalid, "released", Invalid, NotFound]
    assert "not an ExperimentResult" in str(answers[2])
    assert "posted twice in one call" in str(answers[4])
    assert queue.get(stale.id).state == "running" and queue.get(bad.id).state == "running"
    # a different result for a job that has one is refused, as one post would be
    other = result_for(good, metrics={"accuracy": 0.1, "effect": 0.0})
    (answer,) = queue.post_results("lab-b", "agent-b", [ResultPost(good.id, good.lease_id, other)])
    assert isinstance(answer, Conflict)
    # another agent of the lab does not hold these leases
    (stolen,) = queue.post_results(
        "lab-b", "agent-x", [ResultPost(stale.id, stale.lease_id, result_for(stale))]
    )
    assert isinstance(stolen, LeaseLost)
    # jobs of another lab do not exist for this lab's call
    (elsewhere,) = queue.post_results(
        "lab-a", "agent-b", [ResultPost(stale.id, stale.lease_id, result_for(stale))]
    )
    assert isinstance(elsewhere, NotFound)


def test_a_lab_that_signs_has_every_result_of_a_call_checked(queue: JobQueue) -> None:
    key = Ed25519PrivateKey.generate()
    public = public_key_text(key)
    signed_job, unsigned_job, forged_job = running(queue, 3)
    results = [result_for(j) for j in (signed_job, unsigned_job, forged_job)]
    sig = sign_result(key, results[0])
    forged = sign_result(Ed25519PrivateKey.generate(), results[2])
    posts = [
        ResultPost(signed_job.id, signed_job.lease_id, results[0], sig.signature, sig.key_id),
        ResultPost(unsigned_job.id, unsigned_job.lease_id, results[1]),
        ResultPost(forged_job.id, forged_job.lease_id, results[2], forged.signature, "k"),
    ]
    ok, unsigned, bad = queue.post_results("lab-b", "agent-b", posts, public_key=public)
    assert isinstance(ok, Job) and ok.result_signature == sig.signature
    assert isinstance(unsigned, Invalid) and "must carry the lab's signature" in str(unsigned)
    assert isinstance(bad, Invalid) and "signature does not hold" in str(bad)


def test_a_call_posts_one_to_64_results(queue: JobQueue) -> None:
    for posts in ([], [ResultPost(i, "x" * 32, {}) for i in range(1, 66)]):
        with pytest.raises(Invalid, match="1 to 64 results"):
            queue.post_results("lab-b", "agent-b", posts)


def test_results_through_the_api(sqlite_url: str, catalog_home: Settings) -> None:
    tokens = {
        hash_token("r"): {"name": "alice", "roles": ["researcher"]},
        hash_token("a"): {"name": "bot", "roles": ["agent:lab-b"]},
    }
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        alice, bot = {"Authorization": "Bearer r"}, {"Authorization": "Bearer a"}
        for n in (5, 6):
            c.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec(n=n)},
                   headers=alice)
        claims = c.post("/api/labs/lab-b/claims?count=2", headers=bot).json()["claims"]
        one, two = claims
        body = {
            "results": [
                {"job_id": one["job"]["id"], "lease_id": one["lease_id"],
                 "result": result_for(one["job"])},
                {"job_id": two["job"]["id"], "lease_id": "z" * 32,
                 "result": result_for(two["job"])},
            ]
        }
        resp = c.post("/api/labs/lab-b/results", json=body, headers=bot)
        assert resp.status_code == 200, resp.text
        first, second = resp.json()["answers"]
        assert first == {"job_id": one["job"]["id"], "status": 200, "state": "released",
                         "detail": None}
        assert second["status"] == 409
        assert "does not hold the job's current lease" in second["detail"]
        assert c.get(f"/api/jobs/{one['job']['id']}/result", headers=alice).status_code == 200
        # refused as a whole: no results, too many, a field missing, not the lab's agent
        url = "/api/labs/lab-b/results"
        assert c.post(url, json={"results": []}, headers=bot).status_code == 422
        many = {"results": [body["results"][0]] * 65}
        assert c.post("/api/labs/lab-b/results", json=many, headers=bot).status_code == 422
        no_lease = {"results": [{"job_id": 1, "result": {}}]}
        assert c.post("/api/labs/lab-b/results", json=no_lease, headers=bot).status_code == 422
        assert c.post("/api/labs/lab-b/results", json=body, headers=alice).status_code == 403
        assert c.post("/api/labs/lab-a/results", json=body, headers=bot).status_code == 403
