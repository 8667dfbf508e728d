"""Nothing lost: a finished frontier result waits in the site's outbox until the hub has it,
and a restarted agent posts it from there instead of running the frontier again."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.lab.agent import Agent
from analoglab.lab.config import LabConfig
from analoglab.lab.executor import Executor, Outcome, Task
from analoglab.lab.executors import make_executor
from analoglab.lab.outbox import Entry, Outbox
from analoglab.queue.client import QueueClient
from analoglab.queue.jobs import QueueSettings
from analoglab.queue.service import create_app

from ..conftest import serve_app
from .conftest import TOKENS, Hub, approved_job

pytestmark = pytest.mark.slow


class Counting:
    """A real executor that counts its runs and can do something as a run ends."""

    def __init__(self, inner: Executor, after: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.after = after
        self.runs = 0

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        out = self.inner.run(task, cancel)
        self.runs += 1
        if self.after is not None:
            self.after()
        return out

    def close(self) -> None:
        self.inner.close()


def a_hub(db: Path, home: Settings) -> AbstractContextManager[str]:
    app = create_app(
        f"sqlite:///{db}",
        home,
        TOKENS,
        queue_settings=QueueSettings(lease_seconds=5, sweep_seconds=0.5),
    )
    return serve_app(app)


@pytest.fixture
def site_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "site"
    folder.mkdir()
    yield folder


def test_a_result_the_hub_missed_is_posted_from_disk_after_a_restart(
    tmp_path: Path,
    site_dir: Path,
    tiny_home: Settings,
    site: LabConfig,
    sentiment_spec: dict[str, Any],
) -> None:
    db = tmp_path / "queue.db"
    first_hub = a_hub(db, tiny_home)
    hub = Hub(first_hub.__enter__())
    job = approved_job(hub, sentiment_spec)
    client = QueueClient(hub.url, "tok-agent", timeout=1)
    agent: Agent

    def hub_goes_down_and_agent_is_stopped() -> None:
        first_hub.__exit__(None, None, None)  # the run is over; the hub is gone
        agent.stop()

    executor = Counting(make_executor(site), after=hub_goes_down_and_agent_is_stopped)
    agent = Agent(site, client, executor, withheld_dir=site_dir / "withheld")
    try:
        stats = agent.run(max_jobs=1)
    finally:
        client.close()
    assert executor.runs == 1 and stats.posted == 0
    kept = json.loads((site_dir / "outbox" / f"job-{job['id']}.json").read_text())
    assert kept["job_id"] == job["id"] and kept["spec_hash"] == job["spec_hash"]
    assert kept["result"]["method"] == "evaluation"
    assert (site_dir / "outbox" / f"job-{job['id']}.json").stat().st_mode & 0o077 == 0

    # The hub is back (the same database); the agent starts again on the same site.
    with a_hub(db, tiny_home) as url:
        again = Agent(site, QueueClient(url, "tok-agent"), executor,
                      withheld_dir=site_dir / "withheld")
        stats = again.run(max_jobs=1)
        executor.close()
        assert executor.runs == 1  # the frontier was not run again
        assert stats.posted == 1 and stats.replayed == 1
        with Hub(url).client("researcher") as r:
            assert r.get(job["id"])["state"] == "released"
            assert r.result(job["id"])["metrics"] == kept["result"]["metrics"]
    assert not (site_dir / "outbox" / f"job-{job['id']}.json").exists()


def test_an_expired_lease_means_the_stored_result_waits_for_the_same_job(
    hub: Hub, site: LabConfig, site_dir: Path, sentiment_spec: dict[str, Any]
) -> None:
    job = approved_job(hub, sentiment_spec)
    # What a crashed agent left: a finished result under a lease the hub no longer knows.
    executor = Counting(make_executor(site))
    with hub.client("agent") as c:
        claim = c.claim("tiny-lab", wait=0, lease_seconds=5, lease_id="a" * 32)
        assert claim is not None and claim["job"]["id"] == job["id"]
        c.give_back(job["id"], lease_id=claim["lease_id"], reason="the agent crashed")
    result = executor.run(
        Task(job["id"], "tiny-frontier", job["spec"], str(site.models["tiny-frontier"].path)),
        threading.Event(),
    )
    assert result.result is not None
    Outbox(site_dir / "outbox").put(
        Entry(job["id"], job["spec_hash"], "tiny-frontier", "a" * 32, job["spec"], result.result)
    )
    agent = Agent(site, hub.client("agent"), executor, withheld_dir=site_dir / "withheld")
    stats = agent.run(max_jobs=1)
    executor.close()
    assert executor.runs == 1  # only the run before the crash
    assert stats.claimed == 1 and stats.replayed == 1 and stats.posted == 1
    with hub.client("researcher") as r:
        assert r.get(job["id"])["state"] == "released"
    assert Outbox(site_dir / "outbox").pending() == []


def test_a_result_no_job_can_take_is_kept_aside_not_deleted(
    hub: Hub, site: LabConfig, site_dir: Path, sentiment_spec: dict[str, Any]
) -> None:
    job = approved_job(hub, sentiment_spec)
    with hub.client("researcher") as r:
        r.cancel(job["id"])
    result = {"method": "evaluation", "spec_hash": job["spec_hash"]}
    outbox = Outbox(site_dir / "outbox")
    outbox.put(Entry(job["id"], job["spec_hash"], "tiny-frontier", "b" * 32, job["spec"], result))
    agent = Agent(site, hub.client("agent"), make_executor(site),
                  withheld_dir=site_dir / "withheld")
    stats = agent.run(idle_exit=0.5)
    agent.executor.close()
    assert stats.posted == 0 and stats.undeliverable == 1
    assert outbox.pending() == []
    aside_path = site_dir / "outbox" / "undeliverable" / f"job-{job['id']}.json"
    aside = json.loads(aside_path.read_text())
    assert aside["result"] == result and "cancelled" in aside["reason"]


def test_a_batchs_entries_are_put_and_forgotten_together(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    entries = [
        Entry(k, f"h{k}", "f", "l" * 32, {"method": "evaluation"}, {"metrics": {"x": k}})
        for k in (3, 1, 2)
    ]
    paths = outbox.put_many(entries)
    assert paths == [outbox.path(k) for k in (3, 1, 2)]
    assert [(e.job_id, e.result) for e in outbox.pending()] == [
        (k, {"metrics": {"x": k}}) for k in (1, 2, 3)
    ]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    outbox.done_many([1, 3, 99])  # one never put: nothing to forget
    assert [e.job_id for e in outbox.pending()] == [2]
