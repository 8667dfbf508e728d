"""Fixtures of the queue's tests.

- ``catalog_home``: a data folder with two labs: ``lab-a`` (frontier ``frontier-a``: human
  review and human release) and ``lab-b`` (``frontier-b``: neither) (``write_catalog``).
- ``db_url`` (parametrized ``sqlite`` / ``postgresql``): an empty database of its own; the
  PostgreSQL one is created on 127.0.0.1:5432 and dropped after (skipped when unreachable,
  except under ``CI=true``, where an unreachable PostgreSQL fails the test).
- ``sqlite_url``: an empty SQLite database only.
- ``clock``: a settable clock; ``queue``: a migrated :class:`JobQueue` on ``db_url``.
- ``no_hub_env`` (autouse): no ``JUPYTERHUB_*`` variable (a notebook's) turns on hub tokens.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult, ModelIdentity
from analoglab.models.card import Architecture
from analoglab.models.catalog import FrontierModel, FrontierPolicy, Lab, save_lab
from analoglab.queue.db import make_engine
from analoglab.queue.jobs import CatalogFrontiers, JobQueue, QueueSettings
from analoglab.queue.migrate import upgrade

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ARCH = Architecture(model_type="llama", layers=8, hidden_size=64, heads=4, vocab_size=1024)


def probe_spec(n: int = 8, **extra: Any) -> dict[str, Any]:
    items = [{"text": f"a short text number {i}", "label": i % 2} for i in range(n)]
    return {
        "method": "probe",
        "data": {"kind": "labelled", "items": items},
        "layers": {"depths": [0.5]},
        **extra,
    }


def result_for(job: Any, **extra: Any) -> dict[str, Any]:
    """A valid ExperimentResult for a job (a JobOut dict or a Job row)."""
    get = job.get if isinstance(job, dict) else lambda k: getattr(job, k)
    res = ExperimentResult(
        method=get("spec")["method"],
        spec_hash=get("spec_hash"),
        spec=get("spec"),
        model=ModelIdentity(
            name="frontier",
            weights_sha256="0" * 64,
            model_type="llama",
            layers=8,
            hidden_size=64,
            parameters=1000,
        ),
        device="cpu",
        versions={"analoglab": "test"},
        **({"metrics": {"accuracy": 0.9, "effect": 0.8}} | extra),
    )
    return res.with_size().model_dump(mode="json")


@pytest.fixture(autouse=True)
def no_hub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("JUPYTERHUB_"):
            monkeypatch.delenv(key)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def write_catalog(home: Settings) -> Settings:
    """The two labs of ``catalog_home`` in ``home``'s catalog."""
    for lab, frontier, review, release in (
        ("lab-a", "frontier-a", True, True),
        ("lab-b", "frontier-b", False, False),
    ):
        policy = FrontierPolicy(human_review=review, human_release=release, max_prompts=64)
        model = FrontierModel(
            id=frontier,
            lab=lab,
            architecture=ARCH,
            parameters=10_000,
            trained=dt.date(2026, 1, 1),
            policy=policy,
        )
        save_lab(Lab(id=lab, name=lab.upper(), frontiers=[model]), home)
    return home


@pytest.fixture
def catalog_home(home: Settings) -> Settings:
    return write_catalog(home)


def _pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and PostgreSQL is not reachable at {PG_ADMIN}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
    name = f"analoglab_queue_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        yield from _pg_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(db_url: str, catalog_home: Settings, clock: Clock) -> Iterator[JobQueue]:
    upgrade(db_url)
    engine = make_engine(db_url)
    settings = QueueSettings(lease_seconds=60, max_attempts=2)
    yield JobQueue(engine, CatalogFrontiers(catalog_home), settings, clock)
    engine.dispose()
