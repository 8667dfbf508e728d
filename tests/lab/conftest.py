"""Fixtures of the lab site's tests.

- ``site``: the tiny foundry's lab site (``tiny-lab``, frontier ``tiny-frontier``) as a
  :class:`LabConfig` with short leases and heartbeats, and a one-thread local executor.
- ``hub``: a real queue service (uvicorn on 127.0.0.1, SQLite in tmp) whose catalog is the tiny
  build's; ``hub.client(who)`` gives a QueueClient for ``researcher``, ``reviewer``, ``agent``.
- ``sentiment_spec``: a small evaluation spec the tiny frontier answers well.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.lab.config import LabConfig, load_lab_config
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.jobs import QueueSettings
from analoglab.queue.service import create_app

from ..conftest import serve_app

ROLES = {
    "researcher": ["researcher"],
    "reviewer": ["reviewer:tiny-lab"],
    "agent": ["agent:tiny-lab"],
    "other-agent": ["agent:other-lab"],
}
TOKENS = {hash_token(f"tok-{n}"): {"name": n, "roles": r} for n, r in ROLES.items()}


@dataclass
class Hub:
    url: str

    def client(self, who: str) -> QueueClient:
        return QueueClient(self.url, f"tok-{who}")


@pytest.fixture
def site(tiny_home: Settings) -> LabConfig:
    cfg = load_lab_config(tiny_home.lab_sites_path / "tiny-lab" / "lab.toml")
    return cfg.model_copy(
        update={
            "executor": cfg.executor.model_copy(update={"threads": 1}),
            "agent": cfg.agent.model_copy(
                update={"lease_seconds": 5, "heartbeat_seconds": 0.5, "wait_seconds": 0.5}
            ),
        }
    )


@pytest.fixture
def hub(tmp_path: Path, tiny_home: Settings) -> Iterator[Hub]:
    app = create_app(
        f"sqlite:///{tmp_path / 'queue.db'}",
        tiny_home,
        TOKENS,
        queue_settings=QueueSettings(lease_seconds=5, sweep_seconds=0.5),
    )
    with serve_app(app) as url:
        yield Hub(url)


@pytest.fixture
def sentiment_spec() -> dict[str, Any]:
    return {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 40}}


def approved_job(hub: Hub, spec: dict[str, Any]) -> dict[str, Any]:
    """A job on tiny-frontier, submitted and approved."""
    with hub.client("researcher") as r, hub.client("reviewer") as v:
        job = r.submit(spec, "tiny-frontier")
        if job["state"] == "awaiting_review":
            job = v.review(job["id"], "approve", "fine")
    assert job["state"] == "approved"
    return job
