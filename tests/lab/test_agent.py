"""The lab agent against a real queue service: claim → run → release checks → post, and what
it does when a run fails, when it is stopped, and when the hub is unreachable."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.experiments.runner import run
from analoglab.experiments.spec import parse_spec
from analoglab.lab.agent import Agent
from analoglab.lab.config import FrontierWeights, LabConfig, ReleaseConfig
from analoglab.lab.executor import Outcome, Task
from analoglab.lab.executors import make_executor
from analoglab.models.loading import load_any
from analoglab.queue.client import QueueClient
from analoglab.queue.errors import QueueError

from ..conftest import free_port
from .conftest import Hub, approved_job

pytestmark = pytest.mark.slow

STEER = {
    "method": "steering",
    "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 8},
    "evaluate": {"kind": "task_set", "name": "neutral", "n": 8},
    "target": " good",
    "foil": " bad",
    "layers": {"depths": [0.0, 1.0]},
    "scales": [-1, 0, 1],
}


def serve(hub: Hub, site: LabConfig, tmp_path: Path, **run_kw: Any) -> Agent:
    client = hub.client("agent")
    executor = make_executor(site)
    agent = Agent(site, client, executor, withheld_dir=tmp_path / "withheld")
    try:
        agent.run(**run_kw)
    finally:
        executor.close()
        client.close()
    return agent


def test_a_job_runs_and_is_released(
    hub: Hub,
    site: LabConfig,
    tiny_home: Settings,
    sentiment_spec: dict[str, Any],
    tmp_path: Path,
) -> None:
    job = approved_job(hub, sentiment_spec)
    agent = serve(hub, site, tmp_path, max_jobs=1)
    assert (agent.stats.claimed, agent.stats.posted, agent.stats.failed) == (1, 1, 0)
    with hub.client("researcher") as r:
        assert r.get(job["id"])["state"] == "released"
        got = r.result(job["id"])
    direct = run(parse_spec(sentiment_spec), load_any("tiny-frontier", "cpu", tiny_home))
    assert got["metrics"] == direct.metrics
    assert got["model"]["name"] == "tiny-frontier"
    assert got["spec_hash"] == job["spec_hash"]


def test_a_result_failing_the_lab_checks_is_withheld_and_kept_in_the_lab(
    hub: Hub, site: LabConfig, tmp_path: Path
) -> None:
    job = approved_job(hub, STEER)
    strict = site.model_copy(update={"release": ReleaseConfig(max_tensor_values=4)})
    agent = serve(hub, strict, tmp_path, max_jobs=1)
    assert agent.stats.withheld == 1 and agent.stats.posted == 0
    with hub.client("researcher") as r:
        final = r.get(job["id"])
    assert final["state"] == "withheld"
    assert "tensors: table score holds 6 values, over the lab's cap of 4" in final["release_reason"]
    assert final["result_size"] is None  # nothing of it left the lab
    kept = json.loads((tmp_path / "withheld" / f"job-{job['id']}.json").read_text())
    assert kept["result"]["method"] == "steering"


def test_human_release_waits_for_a_reviewer(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    with hub.client("reviewer") as v:
        pol = v.policy("tiny-frontier")
        v.set_policy("tiny-frontier", pol | {"human_release": True})
    job = approved_job(hub, sentiment_spec)
    serve(hub, site, tmp_path, max_jobs=1)
    with hub.client("researcher") as r, hub.client("reviewer") as v:
        assert r.get(job["id"])["state"] == "awaiting_release"
        v.release(job["id"], "release", "looks fine")
        assert r.result(job["id"])["method"] == "evaluation"


def test_a_failing_run_counts_an_attempt_until_the_job_fails(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    job = approved_job(hub, sentiment_spec)
    broken = site.model_copy(
        update={"models": {"tiny-frontier": FrontierWeights(path=tmp_path / "missing")}}
    )
    agent = serve(hub, broken, tmp_path, max_jobs=3)
    assert agent.stats.failed == 3 and agent.stats.posted == 0
    with hub.client("researcher") as r:
        final = r.get(job["id"])
    assert final["state"] == "failed" and final["attempts"] == 3


def test_jobs_for_frontiers_this_site_lacks_are_left_to_other_sites(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    job = approved_job(hub, sentiment_spec)
    other = site.model_copy(
        update={"models": {"another-frontier": FrontierWeights(path=tmp_path / "w")}}
    )
    agent = serve(hub, other, tmp_path, idle_exit=1.0)
    assert agent.stats.claimed == 0
    with hub.client("researcher") as r:
        back = r.get(job["id"])
    assert back["state"] == "approved" and back["attempts"] == 0


class JobsOnly:
    """The local executor without its preload (as the Kubernetes executor has none): the
    agent claims at once, so a stop or a cancel lands while the job's worker is loading."""

    def __init__(self, site: LabConfig) -> None:
        self.inner = make_executor(site)

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        return self.inner.run(task, cancel)

    def close(self) -> None:
        self.inner.close()


def test_stopping_mid_run_gives_the_job_back_without_an_attempt(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    job = approved_job(hub, sentiment_spec)
    client = hub.client("agent")
    executor = JobsOnly(site)
    agent = Agent(site, client, executor)
    threading.Timer(1.0, agent.stop).start()  # the worker is still importing torch
    t0 = time.monotonic()
    stats = agent.run()
    executor.close()
    client.close()
    assert time.monotonic() - t0 < 10
    assert stats.claimed == 1 and stats.given_back == 1 and stats.posted == 0
    with hub.client("researcher") as r:
        back = r.get(job["id"])
    assert back["state"] == "approved" and back["attempts"] == 0


def test_an_unreachable_hub_is_retried_with_backoff(site: LabConfig) -> None:
    client = QueueClient(f"http://127.0.0.1:{free_port()}", "tok-agent", timeout=1)
    executor = JobsOnly(site)
    agent = Agent(site, client, executor)
    threading.Timer(2.0, agent.stop).start()
    t0 = time.monotonic()
    stats = agent.run()
    executor.close()
    assert 2 <= stats.hub_retries <= 4  # 0.5 s, 1 s, ... between tries
    assert time.monotonic() - t0 < 5


def test_claim_ahead_runs_several_jobs_in_one_warm_worker(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    jobs = [approved_job(hub, sentiment_spec | {"seed": i}) for i in range(3)]
    agent = serve(hub, site, tmp_path, max_jobs=3)
    assert agent.stats.posted == 3
    reused = [o["reused_model"] for o in agent.stats.outcomes]
    # the frontier was loaded (and its layout verified) when the agent started, before any
    # claim: every job runs in the warm worker without loading it
    assert reused == [True, True, True]
    assert "llama layout (2 blocks) verified" in agent.stats.frontiers_verified["tiny-frontier"]
    with hub.client("researcher") as r:
        assert {r.get(j["id"])["state"] for j in jobs} == {"released"}



@pytest.mark.parametrize("hub_has_claims", [True, False])
def test_claim_ahead_is_one_call_and_one_at_a_time_from_an_older_hub(
    hub: Hub,
    site: LabConfig,
    sentiment_spec: dict[str, Any],
    tmp_path: Path,
    hub_has_claims: bool,
) -> None:
    jobs = [approved_job(hub, sentiment_spec | {"seed": i}) for i in range(3)]
    assert site.agent.batch >= 3
    client = hub.client("agent")
    calls: dict[str, int] = {"claim": 0, "claim_many": 0}
    real_claim, real_many = client.claim, client.claim_many

    def claim(*args: Any, **kw: Any) -> Any:
        calls["claim"] += 1
        return real_claim(*args, **kw)

    def claim_many(*args: Any, **kw: Any) -> Any:
        calls["claim_many"] += 1
        if not hub_has_claims:  # what a hub older than the agent answers
            raise QueueError("Not Found", status=404)
        return real_many(*args, **kw)

    client.claim, client.claim_many = claim, claim_many  # type: ignore[method-assign]
    executor = make_executor(site)
    agent = Agent(site, client, executor, withheld_dir=tmp_path / "withheld")
    try:
        agent.run(max_jobs=3)
    finally:
        executor.close()
        client.close()
    assert agent.stats.claimed == agent.stats.posted == 3
    # one call took the three jobs; an older hub: one claim each, after one try of the new call
    singles = 0 if hub_has_claims else 3
    assert calls == {"claim": singles, "claim_many": 1}
    with hub.client("researcher") as r:
        assert {r.get(j["id"])["state"] for j in jobs} == {"released"}

def test_the_agent_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from analoglab.cli import app

    bad = tmp_path / "lab.toml"
    bad.write_text('lab = "a"\n[agent]\nlease_seconds = 1\n')
    runner = CliRunner()
    args = ["lab", "agent", "--config", str(bad), "--hub", "http://x", "--token-file", "t"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "lab config: agent.lease_seconds" in res.output
    assert len(res.output.strip().splitlines()) == 1
    bad.write_text('lab = "a"\n')
    res = runner.invoke(app, [*args[:-2], "--token-file", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "cannot read the token file" in res.output
    res = runner.invoke(app, ["lab", "agent", "--config", str(bad), "--lab", "b", "--hub", "x"])
    assert res.exit_code == 1 and "is the site of lab 'a', not 'b'" in res.output


def test_max_jobs_is_a_bound_even_with_claim_ahead(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    jobs = [approved_job(hub, sentiment_spec | {"seed": i}) for i in range(3)]
    assert site.agent.batch > 1
    agent = serve(hub, site, tmp_path, max_jobs=1)
    assert agent.stats.claimed == 1 and agent.stats.posted == 1
    with hub.client("researcher") as r:
        states = [r.get(j["id"])["state"] for j in jobs]
    assert states == ["released", "approved", "approved"]


def test_a_job_cancelled_mid_run_is_dropped_by_the_agent(
    hub: Hub, site: LabConfig, sentiment_spec: dict[str, Any], tmp_path: Path
) -> None:
    job = approved_job(hub, sentiment_spec)
    client = hub.client("agent")
    executor = JobsOnly(site)
    agent = Agent(site, client, executor)

    def cancel_when_running() -> None:
        with hub.client("researcher") as r:
            while r.get(job["id"])["state"] != "running":
                time.sleep(0.05)
            r.cancel(job["id"])

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    t0 = time.monotonic()
    stats = agent.run(max_jobs=1)
    executor.close()
    client.close()
    canceller.join(5)
    assert stats.lost == 1 and stats.posted == 0 and stats.failed == 0
    assert stats.outcomes[0]["status"] == "cancelled"  # the run was stopped, not finished
    assert time.monotonic() - t0 < 10
    with hub.client("researcher") as r:
        assert r.get(job["id"])["state"] == "cancelled"


def test_no_frontier_no_agent(site: LabConfig, hub: Hub) -> None:
    from analoglab.errors import ConfigError

    with pytest.raises(ConfigError, match="serves no frontier"):
        bare = site.model_copy(update={"models": {}})
        Agent(bare, hub.client("agent"), make_executor(site)).run()
