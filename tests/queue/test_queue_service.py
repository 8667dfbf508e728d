"""The REST service: the authorisation matrix (every endpoint × role) and the API end to end
through a real uvicorn server with QueueClient."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.errors import QueueError
from analoglab.queue.service import create_app

from ..conftest import serve_app
from .conftest import probe_spec, result_for

ROLES = {
    "researcher": ["researcher"],
    "reviewer_a": ["reviewer:lab-a"],
    "reviewer_b": ["reviewer:lab-b"],
    "agent_a": ["agent:lab-a"],
    "agent_b": ["agent:lab-b"],
    "admin": ["admin"],
    "both_a": ["researcher", "reviewer:lab-a"],  # submits, and reviews lab-a: four eyes
}
TOKENS = {hash_token(f"tok-{n}"): {"name": n, "roles": r} for n, r in ROLES.items()}


def auth(who: str) -> dict[str, str]:
    return {} if who == "anonymous" else {"Authorization": f"Bearer tok-{who}"}


@pytest.fixture
def client(db_url: str, catalog_home: Settings) -> Iterator[TestClient]:
    """The service on SQLite and on PostgreSQL."""
    with TestClient(create_app(db_url, catalog_home, TOKENS)) as c:
        yield c


WHO = [
    "researcher",
    "reviewer_a",
    "reviewer_b",
    "agent_a",
    "agent_b",
    "admin",
    "both_a",
    "anonymous",
]


def _job(c: TestClient, state: str, submitter: str = "researcher") -> dict[str, Any]:
    """A job on frontier-a (lab-a) brought to ``state``; with ``lease_id`` when running."""
    job = c.post(
        "/api/jobs",
        json={"frontier": "frontier-a", "spec": probe_spec()},
        headers=auth(submitter),
    ).json()
    if state == "awaiting_review":
        return job
    if state == "changes_requested":
        c.post(
            f"/api/jobs/{job['id']}/review",
            json={"decision": "request_changes"},
            headers=auth("reviewer_a"),
        )
        return job
    c.post(
        f"/api/jobs/{job['id']}/review", json={"decision": "approve"}, headers=auth("reviewer_a")
    )
    claim = c.post("/api/labs/lab-a/claim", headers=auth("agent_a")).json()
    job["lease_id"] = claim["lease_id"]
    if state == "awaiting_release":
        c.post(
            f"/api/jobs/{job['id']}/result",
            json={"lease_id": claim["lease_id"], "result": result_for(claim["job"])},
            headers=auth("agent_a"),
        )
    return job


def matrix_body(body: Any, job: dict[str, Any]) -> Any:
    """A matrix row's body for ``job``: ``{lease}`` and ``{result}`` filled in."""
    if not (isinstance(body, dict) and body.get("lease_id") == "{lease}"):
        return body
    data = {**body, "lease_id": job["lease_id"]}
    if data.get("result") == "{result}":
        data["result"] = result_for(job)
    return data


# endpoint -> (method, path, state needed, body, expected status per caller)
MATRIX: list[tuple[str, str, str | None, Any, dict[str, int]]] = [
    ("GET", "/health", None, None, dict.fromkeys(WHO, 200)),
    (
        "POST",
        "/api/jobs",
        None,
        {"frontier": "frontier-a", "spec": probe_spec()},
        {**dict.fromkeys(WHO, 403), "researcher": 201, "anonymous": 401},
    ),
    ("GET", "/api/jobs", None, None, {**dict.fromkeys(WHO, 200), "anonymous": 401}),
    (
        "GET",
        "/api/jobs/{id}",
        "awaiting_review",
        None,
        {**dict.fromkeys(WHO, 200), "reviewer_b": 404, "agent_b": 404, "anonymous": 401},
    ),
    (
        "POST",
        "/api/jobs/{id}/cancel",
        "awaiting_review",
        None,
        {
            "researcher": 200,
            "reviewer_a": 403,
            "reviewer_b": 404,
            "agent_a": 403,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "POST",
        "/api/jobs/{id}/resubmit",
        "changes_requested",
        {"spec": probe_spec(n=5)},
        {
            "researcher": 200,
            "reviewer_a": 403,
            "reviewer_b": 404,
            "agent_a": 403,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "GET",
        "/api/jobs/{id}/result",
        "awaiting_release",
        None,
        {
            "researcher": 409,
            "reviewer_a": 200,
            "reviewer_b": 404,
            "agent_a": 403,
            "agent_b": 404,
            "admin": 200,
            "anonymous": 401,
        },
    ),
    (
        "GET",
        "/api/labs/lab-a/queue",
        None,
        None,
        {**dict.fromkeys(WHO, 403), "reviewer_a": 200, "admin": 200, "anonymous": 401},
    ),
    (
        "POST",
        "/api/jobs/{id}/review",
        "awaiting_review",
        {"decision": "approve"},
        {
            "researcher": 403,
            "reviewer_a": 200,
            "reviewer_b": 404,
            "agent_a": 403,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "POST",
        "/api/jobs/{id}/release",
        "awaiting_release",
        {"decision": "release"},
        {
            "researcher": 403,
            "reviewer_a": 200,
            "reviewer_b": 404,
            "agent_a": 403,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "GET",
        "/api/frontiers/frontier-a/policy",
        None,
        None,
        {**dict.fromkeys(WHO, 200), "anonymous": 401},
    ),
    (
        "PUT",
        "/api/frontiers/frontier-a/policy",
        None,
        {"max_prompts": 100},
        {**dict.fromkeys(WHO, 403), "reviewer_a": 200, "admin": 200, "anonymous": 401},
    ),
    (
        "POST",
        "/api/labs/lab-a/claim",
        None,
        None,
        {**dict.fromkeys(WHO, 403), "agent_a": 204, "anonymous": 401},
    ),
    (
        "POST",
        "/api/jobs/{id}/heartbeat",
        "running",
        {"lease_id": "{lease}"},
        {
            "researcher": 403,
            "reviewer_a": 403,
            "reviewer_b": 404,
            "agent_a": 200,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "POST",
        "/api/jobs/{id}/give-back",
        "running",
        {"lease_id": "{lease}"},
        {
            "researcher": 403,
            "reviewer_a": 403,
            "reviewer_b": 404,
            "agent_a": 200,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "POST",
        "/api/jobs/{id}/result",
        "running",
        {"lease_id": "{lease}", "result": "{result}"},
        {
            "researcher": 403,
            "reviewer_a": 403,
            "reviewer_b": 404,
            "agent_a": 200,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "POST",
        "/api/jobs/{id}/result",
        "running",
        {"lease_id": "{lease}", "withheld": "tensors: over the lab's cap"},
        {
            "researcher": 403,
            "reviewer_a": 403,
            "reviewer_b": 404,
            "agent_a": 200,
            "agent_b": 404,
            "admin": 403,
            "anonymous": 401,
        },
    ),
    (
        "GET",
        "/api/audit/verify",
        None,
        None,
        {**dict.fromkeys(WHO, 403), "admin": 200, "anonymous": 401},
    ),
]


#: What ``both_a`` (researcher and reviewer of lab-a) gets on another researcher's job.
BOTH_A = {
    ("POST", "/api/jobs"): 201,
    ("POST", "/api/jobs/{id}/cancel"): 403,
    ("POST", "/api/jobs/{id}/resubmit"): 403,
    ("GET", "/api/jobs/{id}/result"): 200,
    ("GET", "/api/labs/lab-a/queue"): 200,
    ("POST", "/api/jobs/{id}/review"): 200,
    ("POST", "/api/jobs/{id}/release"): 200,
    ("PUT", "/api/frontiers/frontier-a/policy"): 200,
}
for _method, _path, _state, _body, _expected in MATRIX:
    if (_method, _path) in BOTH_A:
        _expected["both_a"] = BOTH_A[(_method, _path)]
    elif "both_a" not in _expected:
        _expected["both_a"] = _expected["researcher"]
    if _path == "/api/jobs/{id}" and _method == "GET":
        _expected["both_a"] = 200


@pytest.mark.parametrize(
    ("method", "path", "state", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, *_ in MATRIX]
)
def test_authorisation_matrix(
    client: TestClient,
    method: str,
    path: str,
    state: str | None,
    body: Any,
    expected: dict[str, int],
) -> None:
    got = {}
    for who in WHO:
        url, data = path, body
        if state is not None:
            job = _job(client, state)
            url = path.replace("{id}", str(job["id"]))
            data = matrix_body(body, job)
        resp = client.request(method, url, json=data, headers=auth(who))
        got[who] = resp.status_code
        if resp.status_code != 204:
            assert "detail" in resp.json() or resp.status_code < 300
    assert got == expected


@pytest.mark.parametrize(
    ("path", "state", "body"),
    [
        ("review", "awaiting_review", {"decision": "approve"}),
        ("review", "awaiting_review", {"decision": "reject"}),
        ("review", "awaiting_review", {"decision": "request_changes"}),
        ("release", "awaiting_release", {"decision": "release"}),
        ("release", "awaiting_release", {"decision": "withhold"}),
    ],
)
def test_no_reviewer_passes_their_own_job(
    client: TestClient, path: str, state: str, body: dict[str, Any]
) -> None:
    job = _job(client, state, submitter="both_a")
    url = f"/api/jobs/{job['id']}/{path}"
    res = client.post(url, json=body, headers=auth("both_a"))
    assert res.status_code == 403 and "submitted" in res.json()["detail"]
    assert client.get(f"/api/jobs/{job['id']}", headers=auth("both_a")).json()["state"] == state
    assert client.post(url, json=body, headers=auth("reviewer_a")).status_code == 200


def test_bad_input_is_a_4xx_with_a_reason(client: TestClient) -> None:
    r = auth("researcher")
    bad = client.post(
        "/api/jobs", json={"frontier": "frontier-a", "spec": {"method": "x"}}, headers=r
    )
    assert bad.status_code == 422 and bad.json()["findings"][0]["code"] == "invalid_spec"
    assert client.post("/api/jobs", content=b"{not json", headers=r).status_code == 422
    nf = client.post("/api/jobs", json={"frontier": "nope", "spec": probe_spec()}, headers=r)
    assert nf.status_code == 404 and "nope" in nf.json()["detail"]
    assert client.get("/api/jobs/abc", headers=r).status_code == 422
    assert client.get("/api/jobs/999", headers=r).status_code == 404
    assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "paths" in client.get("/openapi.json").json()



@pytest.fixture
def server(sqlite_url: str, catalog_home: Settings) -> Iterator[str]:
    with serve_app(create_app(sqlite_url, catalog_home, TOKENS)) as url:
        yield url


def test_end_to_end_through_uvicorn(server: str) -> None:
    alice = QueueClient(server, "tok-researcher")
    rita = QueueClient(server, "tok-reviewer_a")
    agent = QueueClient(server, "tok-agent_a")
    assert alice.health()["status"] == "ok"
    job = alice.submit(probe_spec(), "frontier-a", idempotency_key="e2e-1")
    assert alice.submit(probe_spec(), "frontier-a", idempotency_key="e2e-1")["id"] == job["id"]
    with pytest.raises(QueueError) as err:
        alice.submit(probe_spec(n=100), "frontier-a")
    assert err.value.status == 422 and "too_many_prompts" in str(err.value.detail)
    assert agent.claim("lab-a") is None
    rita.review(job["id"], "request_changes", "use 6 items")
    alice.resubmit(job["id"], probe_spec(n=6))
    assert [j["id"] for j in rita.lab_queue("lab-a", state="awaiting_review")["jobs"]] == [
        job["id"]
    ]
    rita.review(job["id"], "approve", "ok")
    claim = agent.claim("lab-a", wait=1)
    assert claim is not None and claim["job"]["id"] == job["id"]
    agent.heartbeat(job["id"], claim["lease_id"])
    result = result_for(claim["job"])
    agent.post_result(job["id"], result, claim["lease_id"])
    agent.post_result(job["id"], result, claim["lease_id"])
    with pytest.raises(QueueError) as err:
        alice.result(job["id"])
    assert err.value.status == 409
    rita.release(job["id"], "release", "aggregates only")
    seen: list[str] = []
    final = alice.wait(job["id"], poll=0.1, timeout=10, on_change=lambda j: seen.append(j["state"]))
    assert final["state"] == "released" and seen == ["released"]
    assert alice.result(job["id"])["metrics"] == {"accuracy": 0.9, "effect": 0.8}
    assert [j["id"] for j in alice.list()["jobs"]] == [job["id"]]
    check = QueueClient(server, "tok-admin").verify_audit()
    assert check["ok"] and check["first_broken_seq"] is None and check["findings"] == []
