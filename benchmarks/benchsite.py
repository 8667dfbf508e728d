"""A lab site's queue for the benchmarks that run jobs through it (``lab.py``,
``frontier_throughput.py``): a build (the given data folder, or a tiny preset built into a
temporary one), its first frontier and lab, and a queue service on loopback (uvicorn,
SQLite) with the given researchers, a reviewer ``rev`` and an agent ``bot`` of that lab
(token ``tok-<name>``), its policy set to release without people."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from analoglab.config import Settings
from analoglab.lab.config import (
    AgentConfig,
    FrontierWeights,
    LabConfig,
    LocalExecutorConfig,
    load_lab_config,
)
from analoglab.models.catalog import Catalog
from analoglab.models.loading import lab_site_models
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.jobs import QueueSettings
from analoglab.queue.service import create_app
from analoglab.queue.vetting import VettingLimits


@dataclass
class Site:
    settings: Settings
    frontier: str
    weights: Path
    lab: str
    url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def queue_site(
    home: Path | None,
    frontier: str | None,
    researchers: Sequence[str],
    tmp: Path,
    quota: int,
    methods: Sequence[str] = (),
) -> Iterator[Site]:
    """The build's site with its queue running (see the module docstring); ``quota`` jobs a
    day per user and per minute, ``methods`` added to the policy's allowed ones."""
    if home is None:
        from analoglab.foundry.build import build
        from analoglab.foundry.presets import get_preset

        settings = Settings(home=tmp / "home")
        print("building the tiny foundry preset...", flush=True)
        build(get_preset("tiny"), settings, device="cpu")
    else:
        settings = Settings(home=home)
    sites = lab_site_models(settings)
    frontier = frontier or sorted(sites)[0]
    lab = Catalog.load(settings).frontier(frontier).lab
    tokens: dict[str, Any] = {
        hash_token(f"tok-{u}"): {"name": u, "roles": ["researcher"]} for u in researchers
    }
    tokens[hash_token("tok-rev")] = {"name": "rev", "roles": [f"reviewer:{lab}"]}
    tokens[hash_token("tok-bot")] = {"name": "bot", "roles": [f"agent:{lab}"]}
    app = create_app(
        f"sqlite:///{tmp}/queue.db",
        settings,
        tokens,
        queue_settings=QueueSettings(limits=VettingLimits(rate_per_minute=quota)),
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        with QueueClient(url, "tok-rev") as rev:
            pol = rev.policy(frontier)
            allowed = sorted(set(pol.get("allowed_methods", [])) | set(methods))
            auto = {"human_review": False, "human_release": False, "daily_quota_per_user": quota}
            rev.set_policy(frontier, pol | auto | ({"allowed_methods": allowed} if methods else {}))
        yield Site(settings, frontier, sites[frontier], lab, url)
    finally:
        server.should_exit = True
        thread.join(10)


def lab_config(site: Site, executor: LocalExecutorConfig, agent: AgentConfig) -> LabConfig:
    """The site's own ``lab.toml`` (its signing key, release checks) serving the build's
    frontier with ``executor`` and ``agent``."""
    own = load_lab_config(site.settings.lab_sites_path / site.lab / "lab.toml")
    return own.model_copy(
        update={
            "models": {site.frontier: FrontierWeights(path=site.weights)},
            "executor": executor,
            "agent": agent,
        }
    )
