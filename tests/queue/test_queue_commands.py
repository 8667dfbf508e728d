"""The ``analoglab queue submit|list|show|review|release|audit verify`` commands against a real
uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.service import create_app

from ..conftest import serve_app
from .conftest import probe_spec, result_for

CLI_ROLES = {
    "cli-ada": ["researcher"],
    "cli-rita": ["reviewer:lab-a"],
    "cli-agent": ["agent:lab-a"],
    "cli-root": ["admin"],
}
CLI_TOKENS = {hash_token(f"t-{n}"): {"name": n, "roles": r} for n, r in CLI_ROLES.items()}

runner = CliRunner()


@pytest.fixture
def queue_server(sqlite_url: str, catalog_home: Settings) -> Iterator[str]:
    with serve_app(create_app(sqlite_url, catalog_home, CLI_TOKENS)) as url:
        yield url


def cli(url: str, who: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["queue", *args, "--url", url, "--token", f"t-{who}"])
    return result.exit_code, result.stdout, result.stderr


def cli_json(url: str, who: str, *args: str) -> Any:
    code, out, errors = cli(url, who, *args, "--json")
    assert code == 0, errors
    return json.loads(out)


def test_submit_review_run_release(queue_server: str, tmp_path: Path) -> None:
    spec_file = tmp_path / "probe.json"
    spec_file.write_text(json.dumps(probe_spec(description="a probe via the CLI")))
    job = cli_json(
        queue_server,
        "cli-ada",
        "submit",
        str(spec_file),
        "--frontier",
        "frontier-a",
        "--analog-result",
        "runs:/abc",
        "--idempotency-key",
        "cli-1",
    )
    assert job["state"] == "awaiting_review" and job["analog_result_ref"] == "runs:/abc"
    again = cli_json(
        queue_server,
        "cli-ada",
        "submit",
        str(spec_file),
        "--frontier",
        "frontier-a",
        "--idempotency-key",
        "cli-1",
    )
    assert again["id"] == job["id"]
    listed = cli_json(queue_server, "cli-ada", "list", "--state", "awaiting_review")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    code, out, _ = cli(queue_server, "cli-ada", "list")
    assert code == 0 and "awaiting_review" in out and "frontier-a" in out
    lab = cli_json(queue_server, "cli-rita", "list", "--lab", "lab-a")
    assert [j["id"] for j in lab["jobs"]] == [job["id"]]
    shown = cli_json(queue_server, "cli-ada", "show", str(job["id"]))
    assert shown["spec"]["description"] == "a probe via the CLI"
    code, out, _ = cli(queue_server, "cli-ada", "show", str(job["id"]))
    assert code == 0 and "a probe via the CLI" in out and "awaiting_review" in out

    code, out, _ = cli(
        queue_server, "cli-rita", "review", str(job["id"]), "--approve", "--comment", "bounded"
    )
    assert code == 0 and f"job {job['id']}: approved" in out

    agent = QueueClient(queue_server, "t-cli-agent")
    claim = agent.claim("lab-a", wait=1)
    assert claim is not None and claim["job"]["id"] == job["id"]
    agent.post_result(job["id"], result_for(claim["job"]), claim["lease_id"])
    agent.close()

    released = cli_json(
        queue_server, "cli-rita", "release", str(job["id"]), "--release", "--reason", "aggregate"
    )
    assert released["state"] == "released"
    final = cli_json(queue_server, "cli-ada", "show", str(job["id"]))
    assert final["state"] == "released" and final["release_reason"] == "aggregate"
    assert final["reviews"][0]["comment"] == "bounded"
    check = cli_json(queue_server, "cli-root", "audit", "verify")
    assert check["ok"] and check["first_broken_seq"] is None and check["findings"] == []
    code, out, _ = cli(queue_server, "cli-root", "audit", "verify")
    assert code == 0 and "ok" in out


def test_errors_are_one_line_and_exit_1(queue_server: str, tmp_path: Path) -> None:
    spec_file = tmp_path / "big.yaml"
    spec_file.write_text(json.dumps(probe_spec(n=100)))  # JSON is YAML
    code, out, errors = cli(
        queue_server, "cli-ada", "submit", str(spec_file), "--frontier", "frontier-a"
    )
    assert code == 1 and out == ""
    assert errors.startswith("error:") and len(errors.strip().splitlines()) == 1
    assert "too_many_prompts" in errors and "422" in errors
    code, _, errors = cli(queue_server, "cli-ada", "show", "999")
    assert code == 1 and errors.startswith("error:") and "404" in errors
    assert len(errors.strip().splitlines()) == 1
    code, _, errors = cli(queue_server, "cli-ada", "audit", "verify")
    assert code == 1 and "403" in errors and len(errors.strip().splitlines()) == 1
    code, _, errors = cli(queue_server, "cli-rita", "review", "1", "--comment", "x")
    assert code == 2 and "exactly one" in errors  # a usage error, not a request


def test_no_url_and_unreachable_queue(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANALOGLAB_QUEUE_URL", raising=False)
    result = runner.invoke(app, ["queue", "list"])
    assert result.exit_code == 1 and "no queue URL" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    monkeypatch.setenv("ANALOGLAB_QUEUE_URL", f"http://127.0.0.1:{port}")
    result = runner.invoke(app, ["queue", "list", "--token", "t-cli-ada"])
    assert result.exit_code == 1 and "cannot reach the queue" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_list_pages_with_cursor(queue_server: str, tmp_path: Path) -> None:
    spec_file = tmp_path / "probe.json"
    spec_file.write_text(json.dumps(probe_spec()))
    ids = [
        cli_json(queue_server, "cli-ada", "submit", str(spec_file), "--frontier", "frontier-a")[
            "id"
        ]
        for _ in range(3)
    ]
    code, out, _ = cli(queue_server, "cli-ada", "list", "--limit", "2")
    assert code == 0
    more = [line for line in out.splitlines() if line.startswith("more: ")]
    assert more, out
    command = shlex.split(more[0].removeprefix("more: "))
    assert command[:3] == ["analoglab", "queue", "list"]
    assert "--token" not in command and "--limit" in command and "--url" in command
    seen = [int(i) for i in re.findall(r"^\S*\s*(\d+)\s", out, re.M)]
    assert seen == ids[:0:-1]  # newest first
    # run the printed command (the token still from the environment or --token)
    result = runner.invoke(app, [*command[1:], "--token", "t-cli-ada", "--json"])
    assert result.exit_code == 0, result.stderr
    page = json.loads(result.stdout)
    assert [j["id"] for j in page["jobs"]] == [ids[0]] and page["next_cursor"] is None
    code, out, _ = cli(queue_server, "cli-ada", "list", "--limit", "2", "--cursor", command[-1])
    assert code == 0 and "more:" not in out and str(ids[0]) in out
    lab = cli_json(queue_server, "cli-rita", "list", "--lab", "lab-a", "--limit", "1")
    assert [j["id"] for j in lab["jobs"]] == [ids[2]] and lab["next_cursor"] is not None
    lab2 = cli_json(
        queue_server, "cli-rita", "list", "--lab", "lab-a", "--cursor", str(lab["next_cursor"])
    )
    assert [j["id"] for j in lab2["jobs"]] == [ids[1], ids[0]]
