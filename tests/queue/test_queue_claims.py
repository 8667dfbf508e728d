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


def keys(n: int, tag: str = "k") -> list[str]:
    return [f"{tag}{i:02d}".ljust(32, "x") for i in range(n)]


def test_one_claim_of_many_takes_the_jobs_that_single_claims_would(queue: JobQueue) -> None:
    heavy = [queue.submit("heavy", "frontier-b", probe_spec(n=5 + i % 3)).id for i in range(6)]
    light = queue.submit("light", "frontier-b", probe_spec()).id
    got = queue.claim_many("lab-b", "agent-b", 3, lease_ids=keys(3))
    # fair-share order: the light user's single job second, as the third single claim would be
    assert [j.id for j in got] == [heavy[0], light, heavy[1]]
    assert [j.lease_id for j in got] == keys(3)
    assert {j.state for j in got} == {"running"} and {j.lease_holder for j in got} == {"agent-b"}
    with queue.sessions() as session:
        assert all(
            [e.action for e in audit.entries(session, j.id)].count("claim") == 1 for j in got
        )
    # asking for more than wait: those there are
    rest = queue.claim_many("lab-b", "agent-b", 10)
    assert [j.id for j in rest] == heavy[2:]
    assert len({j.lease_id for j in rest}) == 4  # each job its own lease
    assert queue.claim_many("lab-b", "agent-b", 5) == []


def test_a_retried_claim_of_many_returns_the_same_jobs_and_takes_no_more(
    queue: JobQueue,
) -> None:
    ids = [queue.submit("alice", "frontier-b", probe_spec(n=5 + i)).id for i in range(4)]
    first = queue.claim_many("lab-b", "agent-b", 2, lease_ids=keys(2))
    again = queue.claim_many("lab-b", "agent-b", 2, lease_ids=keys(2))  # the answer was lost
    assert [j.id for j in first] == [j.id for j in again] == ids[:2]
    assert [queue.get(i).state for i in ids[2:]] == ["approved", "approved"]
    with pytest.raises(Conflict, match="not yours"):
        queue.claim_many("lab-b", "another-agent", 2, lease_ids=keys(2))
    # refused before anything is taken
    for count, lease_ids, why in (
        (0, None, "1 to 64 jobs"),
        (65, None, "1 to 64 jobs"),
        (2, keys(3), "so 2 lease id"),
        (2, [keys(1)[0]] * 2, "must be different"),
        (1, ["short"], "32 to 64"),
    ):
        with pytest.raises(Invalid, match=why):
            queue.claim_many("lab-b", "agent-b", count, lease_ids=lease_ids)
    assert [queue.get(i).state for i in ids[2:]] == ["approved", "approved"]


def test_claims_of_many_through_the_api(sqlite_url: str, catalog_home: Settings) -> None:
    tokens = {
        hash_token("r"): {"name": "alice", "roles": ["researcher"]},
        hash_token("a"): {"name": "bot", "roles": ["agent:lab-b"]},
    }
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        alice, bot = {"Authorization": "Bearer r"}, {"Authorization": "Bearer a"}
        ids = [
            c.post(
                "/api/jobs",
                json={"frontier": "frontier-b", "spec": probe_spec(n=n)},
                headers=alice,
            ).json()["id"]
            for n in (5, 6, 7)
        ]
        url = "/api/labs/lab-b/claims?frontier=frontier-b&count=2"
        body = {"lease_ids": keys(2)}
        one, two = c.post(url, json=body, headers=bot), c.post(url, json=body, headers=bot)
        assert one.status_code == two.status_code == 200, one.text
        claims = one.json()["claims"]
        assert [cl["job"]["id"] for cl in claims] == ids[:2] == [
            cl["job"]["id"] for cl in two.json()["claims"]
        ]
        assert [cl["lease_id"] for cl in claims] == keys(2)
        assert all(cl["job"]["state"] == "running" and cl["lease_expires_at"] for cl in claims)
        # the spec travels, as with one claim: the agent runs from this answer
        assert claims[0]["job"]["spec"]["method"] == "probe"
        last = c.post("/api/labs/lab-b/claims?count=5", headers=bot)
        assert [cl["job"]["id"] for cl in last.json()["claims"]] == ids[2:]
        assert c.post("/api/labs/lab-b/claims?count=5", headers=bot).status_code == 204
        for bad, why in (
            ("count=0", "greater than or equal to 1"),
            ("count=65", "less than or equal to 64"),
        ):
            resp = c.post(f"/api/labs/lab-b/claims?{bad}", headers=bot)
            assert resp.status_code == 422 and why in resp.text
        mismatch = c.post(
            "/api/labs/lab-b/claims?count=3", json={"lease_ids": keys(2, "z")}, headers=bot
        )
        assert mismatch.status_code == 422 and "so 3 lease id(s), not 2" in mismatch.text
        assert c.post("/api/labs/lab-b/claims", headers=alice).status_code == 403
        assert c.post("/api/labs/lab-a/claims", headers=bot).status_code == 403
