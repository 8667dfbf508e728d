"""A result the lab's own release checks withheld: the job ends ``withheld`` with the lab's
reason and no result ever reaches the hub (on both databases, and through the API)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.errors import Invalid, LeaseLost
from analoglab.queue.jobs import JobQueue
from analoglab.queue.service import create_app

from .conftest import probe_spec, result_for

REASON = "tensors: table score holds 1200 values, over the lab's cap of 1000"


def test_withheld_by_the_lab(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())  # no human review or release
    c = queue.claim("lab-b", "agent-b")
    assert c is not None
    done = queue.withhold(job.id, c.lease_id, "agent-b", REASON)
    assert done.state == "withheld" and done.release_decision == "withhold"
    assert done.release_reason == REASON
    assert done.result is None and done.result_hash is None and done.lease_holder is None
    again = queue.withhold(job.id, c.lease_id, "agent-b", REASON)  # a retried post
    assert again.version == done.version
    with queue.sessions() as session:
        entries = audit.entries(session, job.id)
    assert [e.action for e in entries][-2:] == ["result", "release"]
    assert entries[-1].actor == "release-check:agent-b"
    assert queue.verify_audit() is None


def test_withhold_needs_the_lease_and_a_reason(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    c = queue.claim("lab-b", "agent-b")
    assert c is not None
    with pytest.raises(Invalid, match="needs the reason"):
        queue.withhold(job.id, c.lease_id, "agent-b", "  ")
    with pytest.raises(LeaseLost):
        queue.withhold(job.id, "not-the-lease", "agent-b", REASON)
    assert queue.get(job.id).state == "running"
    posted = queue.post_result(job.id, c.lease_id, "agent-b", result_for(c))
    assert posted.state == "released"
    with pytest.raises(LeaseLost):  # too late: the result was posted
        queue.withhold(job.id, c.lease_id, "agent-b", REASON)


def test_the_api_takes_a_result_or_a_reason(sqlite_url: str, catalog_home: Settings) -> None:
    tokens = {
        hash_token("r"): {"name": "alice", "roles": ["researcher"]},
        hash_token("a"): {"name": "bot", "roles": ["agent:lab-b"]},
    }
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        who = {"Authorization": "Bearer r"}
        bot = {"Authorization": "Bearer a"}
        job = c.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec()},
                     headers=who).json()
        claim = c.post("/api/labs/lab-b/claim", headers=bot).json()
        url = f"/api/jobs/{job['id']}/result"
        both = {"lease_id": claim["lease_id"], "result": {}, "withheld": REASON}
        neither = {"lease_id": claim["lease_id"]}
        for body in (both, neither):
            res = c.post(url, json=body, headers=bot)
            assert res.status_code == 422 and "either a result or" in res.text
        res = c.post(url, json={"withheld": REASON}, headers=bot)  # withholding needs the lease
        assert res.status_code == 422 and "lease_id" in res.json()["detail"]
        res = c.post(url, json={"lease_id": claim["lease_id"], "withheld": REASON}, headers=bot)
        assert res.status_code == 200 and res.json()["state"] == "withheld"
        seen = c.get(f"/api/jobs/{job['id']}", headers=who).json()
        assert seen["release_reason"] == REASON
        assert c.get(url, headers=who).status_code == 409  # withheld: nothing to read

