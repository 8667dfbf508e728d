"""Claims an agent can shape: only the frontiers its site serves, and idempotent retries with
a lease id the agent chose (on both databases, and through the API)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.errors import Conflict, Invalid
from analoglab.queue.jobs import JobQueue
from analoglab.queue.service import create_app

from .conftest import probe_spec, result_for

KEY = "k" * 32


def test_claims_can_be_limited_to_the_frontiers_a_site_serves(queue: JobQueue) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    assert queue.claim("lab-b", "site-1", frontiers=["frontier-x"]) is None
    assert queue.claim("lab-b", "site-1", frontiers=[]) is None
    got = queue.claim("lab-b", "site-2", frontiers=["frontier-x", "frontier-b"])
    assert got is not None and got.id == job.id


def test_a_retried_claim_with_its_lease_id_returns_the_same_job(queue: JobQueue) -> None:
    first = queue.submit("alice", "frontier-b", probe_spec())
    second = queue.submit("alice", "frontier-b", probe_spec(n=6))
    a = queue.claim("lab-b", "agent-b", lease_id=KEY)
    again = queue.claim("lab-b", "agent-b", lease_id=KEY)  # the first answer was lost
    assert a is not None and again is not None
    assert a.id == again.id == first.id and again.lease_id == KEY
    assert queue.get(second.id).state == "approved"  # not taken by the retry
    with queue.sessions() as session:
        claims = [e.action for e in audit.entries(session, first.id)].count("claim")
    assert claims == 1
    with pytest.raises(Conflict, match="not yours"):
        queue.claim("lab-b", "another-agent", lease_id=KEY)
    queue.post_result(first.id, KEY, "agent-b", result_for(a))
    later = queue.claim("lab-b", "agent-b", lease_id=KEY)  # that lease is over: a new claim
    assert later is not None and later.id == second.id


def test_a_lease_id_must_be_unguessable(queue: JobQueue) -> None:
    queue.submit("alice", "frontier-b", probe_spec())
    for bad in ("short", "x" * 65, "has spaces in it and is long enough ok"):
        with pytest.raises(Invalid, match="32 to 64"):
            queue.claim("lab-b", "agent-b", lease_id=bad)


def test_idempotent_claims_through_the_api(sqlite_url: str, catalog_home: Settings) -> None:
    tokens = {
        hash_token("r"): {"name": "alice", "roles": ["researcher"]},
        hash_token("a"): {"name": "bot", "roles": ["agent:lab-b"]},
    }
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        for n in (5, 6):
            c.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec(n=n)},
                   headers={"Authorization": "Bearer r"})
        bot = {"Authorization": "Bearer a"}
        url = "/api/labs/lab-b/claim?frontier=frontier-b"
        body = {"lease_id": KEY}
        one, two = c.post(url, json=body, headers=bot), c.post(url, json=body, headers=bot)
        assert one.status_code == two.status_code == 200
        assert one.json()["job"]["id"] == two.json()["job"]["id"]
        assert one.json()["lease_id"] == KEY
        bad = c.post("/api/labs/lab-b/claim", json={"lease_id": "short"}, headers=bot)
        assert bad.status_code == 422 and "32 to 64" in bad.text
