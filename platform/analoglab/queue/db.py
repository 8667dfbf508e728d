"""The queue's database connection: one engine factory for SQLite and PostgreSQL.

``sqlite:///<path>`` gets WAL with ``synchronous=FULL`` (every commit synced to disk), a busy
timeout and foreign keys on every connection, and each
transaction starts with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the database
lock instead of failing when they upgrade a read to a write. ``postgresql+psycopg://...`` is
used as it is. The code above this module is the same for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from analoglab.config import Settings

BUSY_TIMEOUT_MS = 30_000


def default_url(settings: Settings) -> str:
    """The ``queue_database_url`` setting, else ``sqlite:///<home>/queue.db``: the queue's
    database on one machine."""
    if settings.queue_database_url is not None:
        return settings.queue_database_url.get_secret_value()
    return f"sqlite:///{settings.home.expanduser() / 'queue.db'}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite is made safe for many threads and processes."""
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, **kwargs)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling is turned off: we emit BEGIN IMMEDIATE ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk before it returns (NORMAL in WAL mode may lose the last
        # committed transitions and audit entries on a power cut).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
