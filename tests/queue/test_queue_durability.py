"""What keeps the queue's record on disk and under test: SQLite's synchronous=FULL (a committed
transition survives a power cut), and under ``CI=true`` an unreachable PostgreSQL fails the run
instead of skipping the tests of the production database's path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from analoglab.queue.db import make_engine

from ..conftest import free_port


def test_sqlite_commits_are_synced_to_disk(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()


@pytest.mark.slow
def test_under_ci_an_unreachable_postgresql_fails_the_run(tmp_path: Path) -> None:
    """The queue's PostgreSQL fixture, pointed at a port nothing listens on: skipped on a
    laptop, an error under CI=true."""
    probe = tmp_path / "test_probe.py"
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    probe.write_text(
        textwrap.dedent(
            f"""
            from tests.queue import conftest

            def test_pg(monkeypatch):
                monkeypatch.setattr(conftest, "PG_ADMIN", "{closed}")
                next(conftest._pg_database())
            """
        )
    )
    root = Path(__file__).resolve().parents[2]

    def run(ci: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        if ci is not None:
            env["CI"] = ci
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
             str(root), str(probe)],
            cwd=root, env=env, capture_output=True, text=True, timeout=120,
        )

    local = run(None)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = run("true")
    assert ci.returncode != 0 and "CI=true" in ci.stdout, ci.stdout
