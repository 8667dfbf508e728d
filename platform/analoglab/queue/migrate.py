"""Schema migrations: ``upgrade(url)`` brings a queue database to the newest schema.

Alembic is configured in code (no ``alembic.ini``): the scripts live in
:mod:`analoglab.queue.migrations`. The service calls :func:`upgrade` when it starts; an
operator can run it before (it is idempotent). New revisions are written with
``alembic_config(url)`` and ``alembic.command.revision(cfg, autogenerate=True, ...)``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from analoglab.queue.db import make_engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates '%': a password with one must be escaped.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create or update the queue's tables in the database at ``url``."""
    command.upgrade(alembic_config(url), revision)


def head() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
