"""``analoglab queue serve`` runs the service as a real process; ``hash-token`` hashes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from analoglab.config import Settings
from analoglab.queue.auth import hash_token

from ..conftest import free_port


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


def test_hash_token_prints_the_sha256() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "analoglab", "queue", "hash-token", "abc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == hash_token("abc")


def test_serve_needs_tokens_or_a_hub(home: Settings) -> None:
    from typer.testing import CliRunner

    from analoglab.cli import app

    result = CliRunner().invoke(app, ["queue", "serve"])
    assert result.exit_code == 2
    assert "give a tokens file" in result.stderr and "JUPYTERHUB_API_TOKEN" in result.stderr
