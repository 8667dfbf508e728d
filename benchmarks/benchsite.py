"""A lab site's queue for the benchmarks that run jobs through it (``lab.py``,
``frontier_throughput.py``): a build (the given data folder, or a tiny preset built into a
temporary one), its first frontier and lab, and a queue service on loopback (uvicorn,
SQLite) with the given researchers, a reviewer ``rev`` and an agent ``bot`` of that lab
(token ``tok-<name>``), its policy set to release without people.

The service runs in its own process, as ``analoglab queue serve`` runs it on the platform
(``own_process=False``: a thread of the benchmark's process, sharing its interpreter lock with
the lab agent, which a lab site never does)."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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


def _app(database_url: str, home: Path, tokens: dict[str, Any], quota: int) -> Any:
    return create_app(
        database_url,
        Settings(home=home),
        tokens,
        queue_settings=QueueSettings(limits=VettingLimits(rate_per_minute=quota)),
    )


def _serve(database_url: str, home: Path, tokens: dict[str, Any], quota: int, port: int) -> None:
    """The queue service's process (spawned: a fresh interpreter, as on the platform)."""
    app = _app(database_url, home, tokens, quota)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def _service_process(
    database_url: str, home: Path, tokens: dict[str, Any], quota: int
) -> Iterator[str]:
    """The queue service in a process of its own, until the block ends; its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    child = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, home, tokens, quota, port), daemon=True
    )
    child.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            if not child.is_alive():
                raise SystemExit(f"the queue service exited ({child.exitcode})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the queue service did not start in 120 s")
            time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.join(10)


@contextmanager
def _service_thread(
    database_url: str, home: Path, tokens: dict[str, Any], quota: int
) -> Iterator[str]:
    """The queue service in a thread of this process, until the block ends; its URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            _app(database_url, home, tokens, quota),
            host="127.0.0.1",
            port=_free_port(),
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def queue_site(
    home: Path | None,
    frontier: str | None,
    researchers: Sequence[str],
    tmp: Path,
    quota: int,
    methods: Sequence[str] = (),
    own_process: bool = True,
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
    service = _service_process if own_process else _service_thread
    with service(f"sqlite:///{tmp}/queue.db", settings.home, tokens, quota) as url:
        with QueueClient(url, "tok-rev") as rev:
            pol = rev.policy(frontier)
            allowed = sorted(set(pol.get("allowed_methods", [])) | set(methods))
            auto = {"human_review": False, "human_release": False, "daily_quota_per_user": quota}
            rev.set_policy(frontier, pol | auto | ({"allowed_methods": allowed} if methods else {}))
        yield Site(settings, frontier, sites[frontier], lab, url)


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
