"""A lab site verifies each frontier's layout when its agent starts, not per job: the warm
worker loads each frontier and verifies it before any claim; one that fails is not served
(the failing invariant in the log) while the others are. And mapped jobs through the worker:
the site's map is used, and without one the job fails naming the command that fits it."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.errors import ConfigError
from analoglab.interventions.verification import Check, LayoutReport
from analoglab.lab.agent import Agent
from analoglab.lab.config import LabConfig, LocalExecutorConfig, parse_lab_config
from analoglab.lab.executor import Outcome, Task
from analoglab.lab.local import LocalExecutor
from analoglab.lab.worker import LayoutRefused, Worker, serve

FAILING = LayoutReport(
    model_type="llama",
    config_hash="0" * 16,
    n_layers=2,
    checks=(Check("residual_sum", "blocks.0", 3.7, False),),
    sites={},
)


class FakePreloader:
    """An executor that 'loads' frontiers: those in ``refuse`` fail with an invariant."""

    def __init__(self, refuse: set[str], missing: frozenset[str] = frozenset()) -> None:
        self.refuse = refuse
        self.missing = missing
        self.loaded: list[str] = []

    def preload(self, task: Task, cancel: threading.Event) -> Outcome:
        self.loaded.append(task.frontier)
        if task.frontier in self.refuse:
            return Outcome(
                "failed",
                reason="the llama layout fails its self-test: residual_sum at blocks.0: "
                "FAILED (off by 3.7)",
                details={"layout_refused": True},
            )
        if task.frontier in self.missing:
            return Outcome("failed", reason=f"no model folder at {task.weights}")
        return Outcome("ok", details={"summary": "llama layout (2 blocks) verified"})

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        raise AssertionError("no job runs here")

    def close(self) -> None:
        pass


def two_frontiers(tmp_path: Path) -> LabConfig:
    return parse_lab_config(
        {
            "lab": "acme",
            "models": {"good-frontier": {"path": "good"}, "bad-frontier": {"path": "bad"}},
        },
        base=tmp_path,
    )


def test_a_frontier_whose_layout_fails_is_not_served_the_others_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ex = FakePreloader({"bad-frontier"})
    agent = Agent(two_frontiers(tmp_path), client=None, executor=ex)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="analoglab.lab.agent"):
        refused = agent.verify_frontiers()
    assert sorted(ex.loaded) == ["bad-frontier", "good-frontier"]  # every frontier, once
    assert list(refused) == ["bad-frontier"] and agent.served == ["good-frontier"]
    assert agent.stats.frontiers_verified == {"good-frontier": "llama layout (2 blocks) verified"}
    log = caplog.text
    assert "good-frontier: llama layout (2 blocks) verified" in log
    assert "bad-frontier: not served by this site" in log
    assert "residual_sum at blocks.0: FAILED (off by 3.7)" in log


def test_a_site_that_can_serve_none_of_its_frontiers_stops_with_every_reason(
    tmp_path: Path,
) -> None:
    ex = FakePreloader({"bad-frontier", "good-frontier"})
    agent = Agent(two_frontiers(tmp_path), client=None, executor=ex)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="can serve none of its frontiers: bad-frontier: the"):
        agent.run(max_jobs=1)


def test_weights_that_do_not_load_are_logged_and_still_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # not a verdict on the layout: its jobs fail with the reason, counting attempts, as before
    ex = FakePreloader(set(), missing=frozenset({"bad-frontier"}))
    agent = Agent(two_frontiers(tmp_path), client=None, executor=ex)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="analoglab.lab.agent"):
        assert agent.verify_frontiers() == {}
    assert agent.served == ["bad-frontier", "good-frontier"]
    assert "bad-frontier: could not be loaded ahead of jobs: no model folder at" in caplog.text


def test_an_executor_without_a_warm_worker_verifies_at_each_load(tmp_path: Path) -> None:
    class JobsOnly:  # as the Kubernetes executor: no preload
        def run(self, task: Task, cancel: threading.Event) -> Outcome:
            raise AssertionError

        def close(self) -> None:
            pass

    agent = Agent(two_frontiers(tmp_path), client=None, executor=JobsOnly())  # type: ignore[arg-type]
    assert agent.verify_frontiers() == {}
    assert agent.served == ["bad-frontier", "good-frontier"]


@pytest.mark.slow
def test_the_worker_refuses_a_layout_that_fails_with_the_invariant(
    site: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analoglab.interventions.verify_layout", lambda model: FAILING)
    weights = str(site.weights("tiny-frontier").path)
    with pytest.raises(LayoutRefused, match=r"residual_sum at blocks\.0: FAILED \(off by 3\.7"):
        Worker().load("tiny-frontier", weights, device="cpu")
    # served as the agent's warm worker: the answer says so, and the worker serves on
    task = {"op": "load", "frontier": "tiny-frontier", "weights": weights, "device": "cpu"}
    answers = io.StringIO()
    serve(io.StringIO(json.dumps(task) + "\n"), answers)
    answer = json.loads(answers.getvalue())
    assert answer["status"] == "failed" and answer["layout_refused"] is True
    assert "residual_sum" in answer["reason"]


@pytest.mark.slow
def test_the_warm_worker_loads_and_verifies_ahead_then_runs_without_loading(
    site: LabConfig, sentiment_spec: dict[str, Any]
) -> None:
    ex = LocalExecutor(LocalExecutorConfig(threads=1))
    weights = str(site.weights("tiny-frontier").path)
    try:
        ahead = ex.preload(Task(0, "tiny-frontier", {}, weights), threading.Event())
        job = ex.run(Task(1, "tiny-frontier", sentiment_spec, weights), threading.Event())
        bad = ex.preload(
            Task(0, "nowhere", {}, str(site.weights("tiny-frontier").path.parent)),
            threading.Event(),
        )
    finally:
        ex.close()
    assert ahead.ok, ahead.reason
    assert "layout (2 blocks) verified" in ahead.details["summary"]
    assert ahead.details["layout"]["verified"] is True and ahead.details["layout"]["n_layers"] == 2
    assert job.ok and job.details["reused_model"] is True and ex.loads == 1
    assert bad.status == "failed" and "config.json" in bad.reason


@pytest.mark.slow
def test_a_mapped_job_without_the_sites_map_fails_naming_the_command(
    site: LabConfig, tiny_home: Settings, tmp_path: Path
) -> None:
    from analoglab.experiments.runner import run
    from analoglab.models.loading import load_any
    from analoglab.tracking.artifacts import steering_vector

    analog = load_any("tiny-analog-s", device="cpu", settings=tiny_home)
    steer = {
        "method": "steering",
        "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 8},
        "evaluate": {"kind": "task_set", "name": "neutral", "n": 8},
        "target": " good",
        "foil": " bad",
    }
    vector = steering_vector(analog, steer, 1.0)
    mapped = {
        "method": "mapped_steering",
        "artifact": vector.model_dump(mode="json", exclude_none=True),
        "contrast": steer["contrast"],
        "evaluate": steer["evaluate"],
        "target": " good",
        "foil": " bad",
        "scale": 2.0,
    }
    weights = str(site.weights("tiny-frontier").path)
    ex = LocalExecutor(LocalExecutorConfig(threads=1))
    try:
        missing = ex.run(
            Task(1, "tiny-frontier", mapped, weights, maps=str(tmp_path / "empty")),
            threading.Event(),
        )
        assert site.maps is not None and (site.maps / "tiny-frontier").is_dir()  # the build's
        mapped_ok = ex.run(
            Task(2, "tiny-frontier", mapped, weights, maps=str(site.maps)), threading.Event()
        )
    finally:
        ex.close()
    assert missing.status == "failed"
    assert "no residual map between tiny-analog-s and tiny-frontier" in missing.reason
    assert "analoglab lab map fit --frontier tiny-frontier --analog tiny-analog-s" in missing.reason
    assert mapped_ok.ok, mapped_ok.reason
    assert mapped_ok.result is not None
    metrics = mapped_ok.result["metrics"]
    assert {"effect", "native_effect", "random_effect", "map_r2"} <= set(metrics)
    # the same as an in-process run through the same map
    from analoglab.experiments.spec import parse_spec
    from analoglab.lab.maps import load_site_map

    frontier = load_any("tiny-frontier", device="cpu", settings=tiny_home)
    rmap = load_site_map(
        site.maps,
        analog="tiny-analog-s",
        frontier="tiny-frontier",
        frontier_sha256=frontier.weights_sha256,
    )
    direct = run(parse_spec(mapped), frontier, residual_map=rmap)
    assert metrics["effect"] == pytest.approx(direct.metrics["effect"])


@pytest.mark.slow
def test_a_kubernetes_worker_once_reads_the_maps_folder_it_is_given(
    site: LabConfig, tiny_home: Settings, tmp_path: Path
) -> None:
    import base64
    import subprocess
    import sys

    from analoglab.lab.framing import unframe
    from analoglab.models.loading import load_any
    from analoglab.tracking.artifacts import steering_vector

    analog = load_any("tiny-analog-s", device="cpu", settings=tiny_home)
    pairs = {"kind": "task_set", "name": "sentiment_pairs", "n": 6}
    prompts = {"kind": "task_set", "name": "neutral", "n": 6}
    steer = {"method": "steering", "contrast": pairs, "evaluate": prompts}
    steer |= {"target": " good", "foil": " bad"}
    art = steering_vector(analog, steer, 0.0).model_dump(mode="json", exclude_none=True)
    mapped = {**steer, "method": "mapped_steering", "artifact": art}
    b64 = base64.b64encode(json.dumps(mapped).encode()).decode()
    weights = str(site.weights("tiny-frontier").path)

    def once(maps: Path) -> subprocess.CompletedProcess[bytes]:
        args = ["once", "--frontier", "tiny-frontier", "--weights", weights, "--device", "cpu"]
        args += ["--maps", str(maps), "--threads", "1", "--spec-b64", b64]
        command = [sys.executable, "-m", "analoglab.lab.worker", *args]
        return subprocess.run(command, capture_output=True, timeout=600, check=False)

    missing = once(tmp_path / "no-maps")
    assert missing.returncode == 2
    assert b"analoglab lab map fit --frontier tiny-frontier --analog tiny-analog-s" in (
        missing.stderr
    )
    assert site.maps is not None
    done = once(site.maps)
    assert done.returncode == 0, done.stderr[-2000:]
    result = unframe(done.stdout.decode(), 2**24)
    assert result["method"] == "mapped_steering" and "map_r2" in result["metrics"]
