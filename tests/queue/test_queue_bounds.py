"""Bad input is a 4xx with a reason, never a 500 or a silent coercion: 64-bit ids and cursors,
a request size limit, strict request models (unknown fields, bool-as-int), finite numbers only,
bounded policies, printable names. Error bodies are ``{"detail": "<string>"}`` everywhere."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue.auth import hash_token
from analoglab.queue.jobs import QueueSettings
from analoglab.queue.service import create_app

from .conftest import probe_spec, result_for

TOKENS = {
    hash_token("r"): {"name": "alice", "roles": ["researcher"]},
    hash_token("v"): {"name": "victor", "roles": ["reviewer:lab-a", "reviewer:lab-b"]},
    hash_token("a"): {"name": "bot", "roles": ["agent:lab-b"]},
}
R, V, A = ({"Authorization": f"Bearer {t}"} for t in ("r", "v", "a"))
BIG = 2**63


@pytest.fixture
def api(sqlite_url: str, catalog_home: Settings) -> Iterator[TestClient]:
    app = create_app(
        sqlite_url, catalog_home, TOKENS, queue_settings=QueueSettings(max_request_bytes=64_000)
    )
    with TestClient(app) as c:
        yield c


def _refused(resp: Any, status: int = 422) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


def test_ids_and_cursors_beyond_64_bits(api: TestClient) -> None:
    for path in ("/api/jobs/{}", "/api/jobs/{}/result"):
        for bad in (BIG, -1, 10**30):
            _refused(api.get(path.format(bad), headers=R))
    for bad in (BIG, -5):
        _refused(api.get(f"/api/jobs?cursor={bad}", headers=R))
        _refused(api.get(f"/api/labs/lab-a/queue?cursor={bad}", headers=V))
    _refused(api.post(f"/api/jobs/{BIG}/cancel", headers=R))
    assert api.get(f"/api/jobs/{BIG - 1}", headers=R).status_code == 404


def test_a_request_size_limit(api: TestClient) -> None:
    spec = probe_spec(extra_field="x" * 100_000)
    reason = _refused(api.post("/api/jobs", json={"frontier": "frontier-a", "spec": spec},
                               headers=R), 413)
    assert "64000" in reason
    chunks = (b"x" * 10_000 for _ in range(10))  # no Content-Length: counted as it streams
    _refused(api.post("/api/jobs", content=chunks, headers=R), 413)


def test_strict_request_models(api: TestClient) -> None:
    unknown = {"frontier": "frontier-b", "spec": probe_spec(), "priority": "high"}
    assert "priority" in _refused(api.post("/api/jobs", json=unknown, headers=R))
    spec = {**probe_spec(), "batch_size": True}
    reason = _refused(api.post("/api/jobs", json={"frontier": "frontier-b", "spec": spec},
                               headers=R))
    assert "batch_size" in reason
    job = api.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec()},
                   headers=R).json()
    claim = api.post("/api/labs/lab-b/claim", headers=A).json()
    hb = {"lease_id": claim["lease_id"], "lease_seconds": True}
    _refused(api.post(f"/api/jobs/{job['id']}/heartbeat", json=hb, headers=A))
    extra = {"lease_id": claim["lease_id"], "reason": "x", "force": True}
    _refused(api.post(f"/api/jobs/{job['id']}/give-back", json=extra, headers=A))


def test_finite_numbers_only(api: TestClient) -> None:
    job = api.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec()},
                   headers=R).json()
    claim = api.post("/api/labs/lab-b/claim", headers=A).json()
    for bad in ("NaN", "Infinity", "-Infinity"):
        result = result_for(claim["job"])
        raw = json.dumps({"lease_id": claim["lease_id"], "result": result})
        raw = raw.replace('"accuracy": 0.9', f'"accuracy": {bad}')
        assert bad in raw
        resp = api.post(f"/api/jobs/{job['id']}/result", content=raw,
                        headers={**A, "Content-Type": "application/json"})
        assert "finite" in _refused(resp)
    assert api.get(f"/api/jobs/{job['id']}", headers=R).json()["state"] == "running"
    raw = json.dumps({"frontier": "frontier-b", "spec": probe_spec()}).replace(
        '"label": 0', '"label": NaN'
    )
    _refused(api.post("/api/jobs", content=raw, headers={**R, "Content-Type": "application/json"}))


def test_a_policy_is_bounded(api: TestClient) -> None:
    url = "/api/frontiers/frontier-a/policy"
    for bad in ({"max_prompts": -1}, {"daily_quota_per_user": -3}, {"max_output_bytes": -1},
                {"allowed_methods": ["probe", "rm -rf"]}, {"max_prompts": True},
                {"human_review": "yes"}, {"bogus": 1}):
        _refused(api.put(url, json=bad, headers=V))
    assert api.get(url, headers=V).json()["max_prompts"] == 64  # unchanged
    ok = api.put(url, json={"max_prompts": 10, "allowed_methods": ["probe"]}, headers=V)
    assert ok.status_code == 200 and ok.json()["allowed_methods"] == ["probe"]


@pytest.mark.parametrize(
    "name", ["lab\x00a", "lab\x1b[31ma", "ev\u202eil", "x\u2066y", "a\u200fb", "tab\tname"]
)
def test_names_are_printable(api: TestClient, name: str) -> None:
    _refused(api.post("/api/jobs", json={"frontier": name, "spec": probe_spec()}, headers=R))
    _refused(api.get(f"/api/labs/{quote(name)}/queue", headers=V))
    _refused(api.get(f"/api/frontiers/{quote(name)}/policy", headers=V))
    ref = {"frontier": "frontier-b", "spec": probe_spec(), "analog_result_ref": f"run {name}"}
    _refused(api.post("/api/jobs", json=ref, headers=R))
    if name.isascii() and "\x00" not in name and "\t" not in name:
        key = {**R, "Idempotency-Key": name}  # (an HTTP client sends no other kinds)
        resp = api.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec()},
                        headers=key)
        _refused(resp)


def test_comments_carry_no_control_characters(api: TestClient) -> None:
    job = api.post("/api/jobs", json={"frontier": "frontier-a", "spec": probe_spec()},
                   headers=R).json()
    url = f"/api/jobs/{job['id']}/review"
    for bad in ("ok\x00", "\x1b[2Jcleared", "fine \u202egnp.exe"):
        _refused(api.post(url, json={"decision": "approve", "comment": bad}, headers=V))
    ok = api.post(url, json={"decision": "approve", "comment": "two\nlines\tok"}, headers=V)
    assert ok.status_code == 200


def test_malformed_json_is_a_422_with_a_string_detail(api: TestClient) -> None:
    resp = api.post("/api/jobs", content=b"{not json",
                    headers={**R, "Content-Type": "application/json"})
    _refused(resp)


def test_a_user_name_with_control_characters_is_refused(
    sqlite_url: str, catalog_home: Settings
) -> None:
    tokens = {hash_token("x"): {"name": "admin\u202e", "roles": ["researcher"]}}
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        resp = c.get("/api/jobs", headers={"Authorization": "Bearer x"})
        assert "printable" in _refused(resp, 403)


def test_the_review_pages_refuse_such_a_name_too(sqlite_url: str, catalog_home: Settings) -> None:
    # every way in passes one check: a page sign-in with the token gets no session either
    tokens = {hash_token("x"): {"name": "rita\u202e", "roles": ["reviewer:lab-a"]}}
    with TestClient(create_app(sqlite_url, catalog_home, tokens)) as c:
        form = c.get("/review/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        resp = c.post("/review/login", data={"token": "x", "csrf_token": csrf.group(1)},
                      follow_redirects=False)
        assert resp.status_code == 403 and "printable" in resp.text
        assert c.get("/review", headers={"Authorization": "Bearer x"}).status_code == 403
