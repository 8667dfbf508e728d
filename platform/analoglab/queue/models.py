"""The queue's tables as SQLAlchemy 2 models: jobs, reviews, the audit log, policy overrides.

The same models run on SQLite (one machine) and PostgreSQL (Kubernetes); the schema is created
and evolved only by the Alembic migrations in :mod:`analoglab.queue.migrations`, which a test
keeps identical to these models. Times are stored as UTC and read back timezone-aware.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone: we add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the queue's database; use UTC")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    """One experiment request on one frontier, from submission to released result."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("submitter", "idempotency_key", name="uq_jobs_submitter_idempotency"),
        Index("ix_jobs_lab_state", "lab", "state"),
        Index("ix_jobs_submitter_created", "submitter", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    frontier: Mapped[str] = mapped_column(String(100))
    lab: Mapped[str] = mapped_column(String(100))
    submitter: Mapped[str] = mapped_column(String(200))
    # The submitter's hub groups when they submitted: their fair-share weight (.fairshare).
    submitter_groups: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    analog_result_ref: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_holder: Mapped[str | None] = mapped_column(String(200))
    lease_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_hash: Mapped[str | None] = mapped_column(String(64))
    result_size: Mapped[int | None] = mapped_column(Integer)
    result_signature: Mapped[str | None] = mapped_column(String(200))  # the lab's, base64
    result_key_id: Mapped[str | None] = mapped_column(String(32))  # the lab key that signed
    release_decision: Mapped[str | None] = mapped_column(String(32))
    release_reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


class Review(Base):
    """A reviewer's decision on a job (approve, reject, request changes) with a comment."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """One line of the append-only, hash-chained audit log (see :mod:`.audit`)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class PolicyOverride(Base):
    """A lab admin's edit of a frontier's policy; it replaces the catalog's policy."""

    __tablename__ = "policy_overrides"

    frontier: Mapped[str] = mapped_column(String(100), primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class PageSession(Base):
    """A browser's signed-in session on the review pages (see :mod:`.sessions`): who, with
    which roles, until when. Keyed by the sha256 of the random id its cookie carries."""

    __tablename__ = "page_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    via: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
