"""What keeps the queue's record on disk and under test: SQLite's synchronous=FULL (a committed
transition survives a power cut), and under ``CI=true`` an unreachable PostgreSQL fails the run
instead of skipping the tests of the production database's path."""

from __future__ import annotations

from sqlalchemy import text

from analoglab.queue.db import make_engine


def test_sqlite_commits_are_synced_to_disk(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
