"""Migrations create the schema on empty SQLite and PostgreSQL, matching the models exactly;
the queue imports no torch."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from analoglab.queue.db import make_engine
from analoglab.queue.migrate import current, head, upgrade
from analoglab.queue.models import Base


def test_upgrade_creates_the_schema_the_models_describe(db_url: str) -> None:
    assert current(db_url) is None
    upgrade(db_url)
    upgrade(db_url)  # idempotent
    assert current(db_url) == head() is not None
    engine = make_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"jobs", "reviews", "audit_log", "policy_overrides", "page_sessions"} <= tables
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_and_a_busy_timeout(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


def test_the_queue_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import analoglab.queue, analoglab.queue.service, analoglab.queue.jobs\n"
        "import analoglab.queue.client, analoglab.queue.migrate\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
