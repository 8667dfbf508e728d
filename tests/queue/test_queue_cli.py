"""``analoglab queue serve`` runs the service as a real process; ``hash-token`` hashes a token
read from stdin or a file; client commands read their token from a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from analoglab.config import Settings
from analoglab.queue.auth import hash_token

from ..conftest import free_port, serve_app


def test_serve_answers_and_authenticates(home: Settings, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tokens.{hash_token("s3cret")}]\nname = "ada"\nroles = ["researcher"]\n')
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "analoglab",
            "queue",
            "serve",
            "--tokens",
            str(tokens),
            "--port",
            str(port),
        ],
        env={**os.environ, "ANALOGLAB_HOME": str(home.home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("the queue service did not answer /health")
        assert httpx.get(url + "/api/jobs", timeout=5).status_code == 401
        ok = httpx.get(url + "/api/jobs", headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert ok.status_code == 200
        assert (home.home / "queue.db").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_hash_token_reads_the_token_from_stdin_or_a_file(tmp_path: Path) -> None:
    """Never from argv, where ``ps`` shows it to every user of the machine."""
    command = [sys.executable, "-m", "analoglab", "queue", "hash-token"]
    done = subprocess.run(command, input="abc\n", capture_output=True, text=True, check=True)
    assert done.stdout.strip() == hash_token("abc")
    secret = tmp_path / "token"
    secret.write_text("abc\n")
    done = subprocess.run(
        [*command, "--from-file", str(secret)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == hash_token("abc")
    argv = subprocess.run([*command, "abc"], capture_output=True, text=True, check=False)
    assert argv.returncode == 2 and hash_token("abc") not in argv.stdout
    empty = subprocess.run(command, input="", capture_output=True, text=True, check=False)
    assert empty.returncode == 1 and "empty" in empty.stderr


def test_client_commands_read_the_token_from_a_file(
    sqlite_url: str, catalog_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from analoglab.cli import app
    from analoglab.queue.service import create_app

    for env in ("JUPYTERHUB_API_TOKEN", "ANALOGLAB_QUEUE_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    tokens = {hash_token("file-token"): {"name": "ada", "roles": ["researcher"]}}
    secret = tmp_path / "queue-token"
    secret.write_text("file-token\n")
    with serve_app(create_app(sqlite_url, catalog_home, tokens)) as url:
        listing = ["queue", "list", "--url", url, "--json"]
        result = CliRunner().invoke(app, [*listing, "--token-file", str(secret)])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["jobs"] == []
        monkeypatch.setenv("ANALOGLAB_QUEUE_TOKEN_FILE", str(secret))
        assert CliRunner().invoke(app, listing).exit_code == 0
        monkeypatch.delenv("ANALOGLAB_QUEUE_TOKEN_FILE")
        refused = CliRunner().invoke(app, listing)
        assert refused.exit_code == 1 and "401" in refused.stderr + refused.stdout
        missing = CliRunner().invoke(app, [*listing, "--token-file", str(tmp_path / "none")])
        assert missing.exit_code == 1 and "cannot read the queue token" in missing.stderr


def test_serve_needs_tokens_or_a_hub(home: Settings) -> None:
    from typer.testing import CliRunner

    from analoglab.cli import app

    result = CliRunner().invoke(app, ["queue", "serve"])
    assert result.exit_code == 2
    assert "give a tokens file" in result.stderr and "JUPYTERHUB_API_TOKEN" in result.stderr
