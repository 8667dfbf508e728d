"""The OpenAPI document says what the service does: an HTTP bearer security scheme, every
status code a route answers with, and error bodies as sent (``{"detail": "<string>"}``); and
schemathesis, fuzzing the live service with a researcher's, a reviewer's and an agent's token,
finds no server error and no response that breaks the schema."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue.auth import hash_token
from analoglab.queue.service import create_app

from ..conftest import serve_app
from .conftest import probe_spec

TOKENS = {
    hash_token("tok-r"): {"name": "alice", "roles": ["researcher"]},
    hash_token("tok-v"): {"name": "victor", "roles": ["reviewer:lab-a", "reviewer:lab-b"]},
    hash_token("tok-a"): {"name": "bot", "roles": ["agent:lab-a", "agent:lab-b"]},
}


@pytest.fixture
def spec_doc(sqlite_url: str, catalog_home: Settings) -> dict[str, Any]:
    return create_app(sqlite_url, catalog_home, TOKENS).openapi()


def test_a_bearer_security_scheme_not_a_header_parameter(spec_doc: dict[str, Any]) -> None:
    schemes = spec_doc["components"]["securitySchemes"]
    assert [s for s in schemes.values() if s == {**s, "type": "http", "scheme": "bearer"}]
    for path, ops in spec_doc["paths"].items():
        for method, op in ops.items():
            names = [p["name"].lower() for p in op.get("parameters", [])]
            assert "authorization" not in names, (method, path)
            if path.startswith("/api/"):
                assert op.get("security"), (method, path)


def test_every_error_is_documented_with_the_body_sent(spec_doc: dict[str, Any]) -> None:
    error = spec_doc["components"]["schemas"]["ErrorOut"]
    assert error["properties"]["detail"] == {"type": "string", "title": "Detail"}
    assert "HTTPValidationError" not in spec_doc["components"]["schemas"]
    for path, ops in spec_doc["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "403", "422", "503"} <= codes, (method, path, codes)
            if "{job_id}" in path:
                assert "404" in codes, (method, path)
            if "requestBody" in op:
                assert "413" in codes, (method, path)
            for code in codes - {"200", "201", "204"}:
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, code)


def test_error_bodies_have_a_string_detail(sqlite_url: str, catalog_home: Settings) -> None:
    with TestClient(create_app(sqlite_url, catalog_home, TOKENS)) as c:
        r = {"Authorization": "Bearer tok-r"}
        raw = {**r, "content-type": "application/json"}
        for resp in (
            c.post("/api/jobs", content=b"{oops", headers=raw),
            c.post("/api/jobs", content=b"\xff\xfe;", headers=raw),
            c.post("/api/jobs", json={"spec": probe_spec()}, headers=r),
            c.get("/api/jobs", headers={"Authorization": "Basic x"}),
            c.get("/api/jobs/7", headers=r),
        ):
            assert resp.status_code in (401, 404, 422)
            assert isinstance(resp.json()["detail"], str)


@pytest.fixture
def live(sqlite_url: str, catalog_home: Settings) -> Iterator[str]:
    from fastapi.testclient import TestClient as _TC

    app = create_app(sqlite_url, catalog_home, TOKENS)
    with _TC(app) as c:  # some jobs to find: one awaiting review, one running
        c.post("/api/jobs", json={"frontier": "frontier-a", "spec": probe_spec()},
               headers={"Authorization": "Bearer tok-r"})
        c.post("/api/jobs", json={"frontier": "frontier-b", "spec": probe_spec()},
               headers={"Authorization": "Bearer tok-r"})
    with serve_app(create_app(sqlite_url, catalog_home, TOKENS)) as url:
        yield url


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    live: str, tmp_path: Path
) -> None:
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
        ]
    )
    exe = Path(sys.executable).with_name("schemathesis")
    outputs = []
    for token in ("tok-r", "tok-v", "tok-a"):
        run = subprocess.run(
            [str(exe), "run", f"{live}/openapi.json", "-H", f"Authorization: Bearer {token}",
             "--checks", checks, "--max-examples", "15", "--max-time", "18",
             "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "1",
             # the long polls (up to 60 s a call; their own tests cover them)
             "--exclude-path", "/api/labs/{lab}/claim",
             "--exclude-path", "/api/labs/{lab}/claims", "--no-color"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        outputs.append(run.stdout[-4000:] + run.stderr[-2000:])
        assert run.returncode == 0, "\n".join(outputs)
