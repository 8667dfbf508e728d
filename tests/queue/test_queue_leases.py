"""Leases bind every agent write: a result, a give-back, a withheld result and a heartbeat
land only under the job's current, unexpired lease, checked by compare-and-set in the write's
own transaction; anything else is a 409 and changes nothing (no state, no audit entry, no
attempt counted). Lease ids travel in request bodies, never in query strings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.errors import LeaseLost
from analoglab.queue.jobs import JobQueue, QueueSettings
from analoglab.queue.models import Job
from analoglab.queue.service import create_app

from ..conftest import serve_app
from .conftest import Clock, probe_spec, result_for

KEY = "k" * 40
TOKENS = {
    hash_token("r"): {"name": "alice", "roles": ["researcher"]},
    hash_token("a1"): {"name": "bot-1", "roles": ["agent:lab-b"]},
    hash_token("a2"): {"name": "bot-2", "roles": ["agent:lab-b"]},
}
R, A1, A2 = ({"Authorization": f"Bearer {t}"} for t in ("r", "a1", "a2"))


def _snapshot(queue: JobQueue, job_id: int) -> tuple[Any, ...]:
    job = queue.get(job_id)
    with queue.sessions() as session:
        entries = len(audit.entries(session, job_id))
    return job.state, job.version, job.attempts, job.lease_id, job.result_hash, entries


def _writes(lease: str | None, job: Job) -> dict[str, Any]:
    """Each agent write with ``lease`` as the caller's lease id."""
    return {
        "result": lambda q: q.post_result(job.id, lease, "agent-b", result_for(job)),
        "withhold": lambda q: q.withhold(job.id, lease, "agent-b", "over the cap"),  # type: ignore[arg-type]
        "give_back": lambda q: q.give_back(job.id, lease, "agent-b", "bye", error=True),
        "heartbeat": lambda q: q.heartbeat(job.id, lease),  # type: ignore[arg-type]
    }


@pytest.mark.parametrize("write", ["result", "withhold", "give_back", "heartbeat"])
def test_an_expired_lease_writes_nothing_before_the_sweep(
    queue: JobQueue, clock: Clock, write: str
) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    claimed = queue.claim("lab-b", "agent-b")
    assert claimed is not None and claimed.lease_id
    clock.advance(61)  # the lease (60 s) is over; no sweep has run
    before = _snapshot(queue, job.id)
    with pytest.raises(LeaseLost):
        _writes(claimed.lease_id, claimed)[write](queue)
    assert _snapshot(queue, job.id) == before


@pytest.mark.parametrize("write", ["result", "withhold", "give_back", "heartbeat"])
@pytest.mark.parametrize("lease", [None, "x" * 32])
def test_a_missing_or_wrong_lease_writes_nothing(
    queue: JobQueue, write: str, lease: str | None
) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    claimed = queue.claim("lab-b", "agent-b")
    assert claimed is not None
    before = _snapshot(queue, job.id)
    with pytest.raises(LeaseLost):
        _writes(lease, claimed)[write](queue)
    assert _snapshot(queue, job.id) == before


def test_a_stale_agent_after_a_reclaim_writes_nothing(queue: JobQueue, clock: Clock) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    first = queue.claim("lab-b", "agent-1")
    assert first is not None
    clock.advance(61)
    second = queue.claim("lab-b", "agent-2")  # sweeps, then takes the job again
    assert second is not None and second.id == job.id
    before = _snapshot(queue, job.id)
    for write in _writes(first.lease_id, first).values():
        with pytest.raises(LeaseLost):
            write(queue)
    assert _snapshot(queue, job.id) == before
    done = queue.post_result(job.id, second.lease_id, "agent-2", result_for(second))
    assert done.state == "released"
    # the same result again, by the lease that posted it, is a no-op; by anyone else, a 409
    assert queue.post_result(job.id, second.lease_id, "agent-2", result_for(second)).version == (
        done.version
    )
    with pytest.raises(LeaseLost):
        queue.post_result(job.id, first.lease_id, "agent-1", result_for(second))


def test_a_heartbeat_without_seconds_keeps_the_lease_duration(
    queue: JobQueue, clock: Clock
) -> None:
    job = queue.submit("alice", "frontier-b", probe_spec())
    claimed = queue.claim("lab-b", "agent-b", lease_seconds=20)
    assert claimed is not None and claimed.lease_id
    clock.advance(10)
    beat = queue.heartbeat(job.id, claimed.lease_id)
    assert beat.lease_expires_at == clock.now + dt.timedelta(seconds=20)
    clock.advance(5)
    longer = queue.heartbeat(job.id, claimed.lease_id, 90)
    assert longer.lease_expires_at == clock.now + dt.timedelta(seconds=90)
    clock.advance(5)
    again = queue.heartbeat(job.id, claimed.lease_id)  # the last duration asked: 90 s
    assert again.lease_expires_at == clock.now + dt.timedelta(seconds=90)
    assert queue.settings == QueueSettings(lease_seconds=60, max_attempts=2)


@pytest.fixture
def api(sqlite_url: str, catalog_home: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_url, catalog_home, TOKENS)) as c:
        yield c


def _running(c: TestClient) -> tuple[dict[str, Any], str]:
    c.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec()}, headers=R)
    claim = c.post("/api/labs/lab-b/claim", json={"lease_id": KEY}, headers=A1)
    assert claim.status_code == 200, claim.text
    assert claim.json()["lease_id"] == KEY
    return claim.json()["job"], KEY


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("result", {"result": "{result}"}),
        ("result", {"withheld": "over the cap"}),
        ("give-back", {"reason": "bye", "error": True}),
        ("heartbeat", {}),
    ],
)
def test_the_api_refuses_agent_writes_without_the_lease(
    api: TestClient, path: str, body: dict[str, Any]
) -> None:
    job, lease = _running(api)
    if body.get("result") == "{result}":
        body = {**body, "result": result_for(job)}
    url = f"/api/jobs/{job['id']}/{path}"
    missing = api.post(url, json=body, headers=A1)
    assert missing.status_code == 422 and "lease_id" in missing.json()["detail"]
    null = api.post(url, json={**body, "lease_id": None}, headers=A1)
    assert null.status_code == 422
    other = api.post(url, json={**body, "lease_id": "y" * 40}, headers=A2)  # same lab, no lease
    assert other.status_code == 409 and "lease" in other.json()["detail"]
    thief = api.post(url, json={**body, "lease_id": lease}, headers=A2)  # not its lease
    assert thief.status_code == 409
    after = api.get(f"/api/jobs/{job['id']}", headers=R).json()
    assert (after["state"], after["attempts"], after["version"]) == ("running", 0, job["version"])
    ok = api.post(url, json={**body, "lease_id": lease}, headers=A1)
    assert ok.status_code == 200, ok.text


def test_lease_ids_never_ride_in_query_strings(
    sqlite_url: str, catalog_home: Settings
) -> None:
    app = create_app(sqlite_url, catalog_home, TOKENS)
    for path in app.openapi()["paths"].values():
        for op in path.values():
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            assert "lease_id" not in names
    seen: list[httpx.Request] = []
    with serve_app(app) as url:
        QueueClient(url, "r").submit(probe_spec(), "frontier-b")
        bot = QueueClient(url, "a1")
        bot._http.event_hooks["request"].append(seen.append)
        claim = bot.claim("lab-b", lease_id=KEY, frontiers=["frontier-b"])
        assert claim is not None and claim["lease_id"] == KEY
        bot.heartbeat(claim["job"]["id"], KEY)
        bot.post_result(claim["job"]["id"], result_for(claim["job"]), KEY)
    assert seen and all(KEY not in str(r.url) for r in seen)
    assert KEY.encode() in seen[0].content
