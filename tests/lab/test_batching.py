"""Batched execution at the lab site: the worker's batch task, the local executor's
``run_batch`` and the agent running claimed jobs as one batch.

A batch answers each job as if it had run alone (the same numbers, within float rounding);
a job that cannot run answers its own error and the others still get their results; each
result of a batch goes through the release checks, the outbox and the signature as alone.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analoglab import signing
from analoglab.config import Settings
from analoglab.lab.agent import Agent
from analoglab.lab.config import LabConfig, LocalExecutorConfig, ReleaseConfig
from analoglab.lab.executor import Outcome, Task
from analoglab.lab.local import LocalExecutor
from analoglab.lab.release import verify_result
from analoglab.lab.worker import Worker, serve
from analoglab.models.catalog import Catalog

from .conftest import Hub, approved_job

pytestmark = pytest.mark.slow

EVAL = {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 12}}
STATS = {
    "method": "activation_stats",
    "data": {"kind": "task_set", "name": "neutral", "n": 6},
    "position": "mean",
}
PROBE = {"method": "probe", "data": {"kind": "task_set", "name": "sentiment", "n": 16}}
STEER = {
    "method": "steering",
    "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 4},
    "evaluate": {"kind": "task_set", "name": "sentiment", "n": 4},
    "target": " good",
    "foil": " bad",
    "layers": {"depths": [0.0, 1.0]},
    "scales": [-1, 0, 2],
}
ABLATION = {
    "method": "ablation",
    "data": {"kind": "task_set", "name": "ioi", "n": 4},
    "components": "mlp",
}
OUT_OF_RANGE = STATS | {"layers": {"indices": [40]}}
NOT_A_METHOD = {"method": "nope"}


def close(a: Any, b: Any, where: str = "result") -> None:
    """The same result within float rounding (timings and sizes aside)."""
    if isinstance(a, dict):
        keys = set(a) - {"timings", "size_bytes"}
        assert keys == set(b) - {"timings", "size_bytes"}, where
        for k in keys:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def weights(site: LabConfig) -> str:
    return str(site.weights("tiny-frontier").path)


def test_a_batch_task_answers_each_job_as_alone_and_a_bad_job_only_itself(
    site: LabConfig,
) -> None:
    specs = [EVAL, NOT_A_METHOD, STATS, PROBE, OUT_OF_RANGE, STEER, ABLATION]
    task = {
        "op": "batch",
        "frontier": "tiny-frontier",
        "weights": weights(site),
        "device": "cpu",
        "threads": 1,
        "batch_tokens": 4096,
        "jobs": [{"job_id": 10 + i, "spec": s} for i, s in enumerate(specs)],
    }
    out = io.StringIO()
    serve(io.StringIO(json.dumps(task) + "\n"), out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a["job_id"] for a in answers] == [10 + i for i in range(len(specs))]
    assert [a["status"] for a in answers] == ["ok", "failed", "ok", "ok", "failed", "ok", "ok"]
    assert answers[1]["reason"].startswith("bad task") or "nope" in answers[1]["reason"]
    assert "layer index 40 is out of range" in answers[4]["reason"]
    assert all(a["batch_size"] == len(specs) for a in answers)
    alone = Worker()
    for spec, answer in zip(specs, answers, strict=True):
        if answer["status"] != "ok":
            continue
        result, _ = alone.run("tiny-frontier", weights(site), spec, device="cpu")
        close(result, answer["result"], spec["method"])
        shared = answer["result"]["timings"].get("batched_with")
        # the five shareable jobs (the one out of range among them) shared their passes;
        # the ablation ran alone
        assert shared == (None if spec is ABLATION else 5.0)


def test_a_worker_measures_a_pass_cost_once_per_load_and_packs_by_it(
    site: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analoglab.experiments import packed

    measured: list[int] = []
    real = packed.measure_pass_tokens

    def counting(model: Any, bound: int, repeats: int = 3) -> int:
        value = real(model, bound, repeats)
        measured.append(value)
        return value

    monkeypatch.setattr(packed, "measure_pass_tokens", counting)
    worker = Worker()
    jobs = [{"job_id": i, "spec": s} for i, s in enumerate([EVAL, STATS, PROBE])]
    first, timings = worker.run_batch("tiny-frontier", weights(site), jobs, device="cpu")
    again, later = worker.run_batch(
        "tiny-frontier", weights(site), jobs, device="cpu", batch_tokens=512
    )
    # measured at the first batch of this load only; a tighter bound caps what it packs by
    assert len(measured) == 1 and measured[0] >= 0
    assert timings["pass_tokens"] == min(8192, measured[0])
    assert later["pass_tokens"] == min(512, measured[0]) and later["reused_model"] is True
    for a, b in zip(first, again, strict=True):
        assert a["status"] == b["status"] == "ok"
        close(a["result"], b["result"])
    # a job alone packs nothing, and measures nothing
    _, alone = worker.run_batch("tiny-frontier", weights(site), jobs[:1], device="cpu")
    assert alone["pass_tokens"] is None and len(measured) == 1


def test_the_local_executor_runs_a_batch_in_its_warm_worker(
    site: LabConfig, tiny_home: Settings
) -> None:
    ex = LocalExecutor(LocalExecutorConfig(threads=1, device="cpu"))
    specs = [EVAL, OUT_OF_RANGE, STEER]
    tasks = [Task(i, "tiny-frontier", s, weights(site)) for i, s in enumerate(specs, start=1)]
    try:
        outcomes = ex.run_batch(tasks, threading.Event())
        again = ex.run(tasks[0], threading.Event())
    finally:
        ex.close()
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"]
    assert "out of range" in outcomes[1].reason
    assert outcomes[0].details["batch_size"] == 3 and outcomes[0].details["batch_index"] == 0
    assert ex.loads == 1 and again.details["reused_model"] is True
    close(again.result, outcomes[0].result)
    alone = Worker()
    result, _ = alone.run("tiny-frontier", weights(site), STEER, device="cpu")
    close(result, outcomes[2].result)


class Broken(LocalExecutor):
    """A batch whose worker dies after its first answer; jobs run alone are recorded."""

    def __init__(self) -> None:
        super().__init__(LocalExecutorConfig(threads=1))
        self.alone: list[int] = []

    def _exchange_many(
        self, payload: dict[str, Any], n: int, cancel: threading.Event
    ) -> tuple[list[Outcome], Outcome | None]:
        return [Outcome("ok", result={"first": True})], Outcome(
            "failed", reason="the worker was killed by signal 9"
        )

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        self.alone.append(task.job_id)
        return Outcome("ok", result={"alone": task.job_id})


def test_jobs_a_broken_batch_left_unanswered_run_again_alone() -> None:
    ex = Broken()
    tasks = [Task(i, "f", EVAL, "w") for i in (1, 2, 3)]
    outcomes = ex.run_batch(tasks, threading.Event())
    assert [o.result for o in outcomes] == [{"first": True}, {"alone": 2}, {"alone": 3}]
    assert ex.alone == [2, 3]
    off = Broken()
    off.cfg = LocalExecutorConfig(batch_tokens=0)
    off.run_batch(tasks, threading.Event())
    assert off.alone == [1, 2, 3]  # batching off: each alone



def spy_on_posts(
    client: Any, meddle: Callable[[list[dict[str, Any]]], None] | None = None
) -> list[list[int]]:
    """The job ids of each call ``client`` makes to post results (one or several), in order;
    ``meddle`` sees (and may change, or refuse) each call of several before it goes."""
    posted: list[list[int]] = []
    one, many = client.post_result, client.post_results

    def post_result(job_id: int, *a: Any, **kw: Any) -> Any:
        posted.append([job_id])
        return one(job_id, *a, **kw)

    def post_results(lab: str, posts: list[dict[str, Any]]) -> Any:
        if meddle is not None:
            meddle(posts)
        posted.append([p["job_id"] for p in posts])
        return many(lab, posts)

    client.post_result, client.post_results = post_result, post_results
    return posted

def test_the_agent_runs_claimed_jobs_as_one_batch_each_through_the_release_checks(
    hub: Hub, site: LabConfig, tiny_home: Settings, tmp_path: Path, use_tiny_home: Settings
) -> None:
    # a lab cap on tables that the steering job's 2 x 3 table breaks, the others do not
    strict = site.model_copy(
        update={
            "release": ReleaseConfig(max_tensor_values=5),
            "agent": site.agent.model_copy(update={"batch": 5}),
        }
    )
    evals = [approved_job(hub, EVAL | {"seed": i}) for i in range(3)]
    steer = approved_job(hub, STEER)
    ablation = approved_job(hub, ABLATION)
    executor = LocalExecutor(strict.executor)  # type: ignore[arg-type]
    with hub.client("agent") as client:
        posted = spy_on_posts(client)
        agent = Agent(strict, client, executor, withheld_dir=tmp_path / "withheld")
        try:
            stats = agent.run(max_jobs=5)
        finally:
            executor.close()
    assert (stats.claimed, stats.posted, stats.withheld, stats.failed) == (5, 4, 1, 0), stats
    # the batch's three passing results went to the hub in one call; the job run alone, alone
    assert sorted(posted, key=len) == [[ablation["id"]], [j["id"] for j in evals]]
    batched = {o["job_id"]: o.get("batch_size") for o in stats.outcomes}
    assert batched[steer["id"]] == 4 and all(batched[j["id"]] == 4 for j in evals)
    assert batched[ablation["id"]] is None  # never merged: it ran by itself
    lab_key = Catalog.load(tiny_home).lab("tiny-lab").public_key
    assert lab_key is not None
    with hub.client("researcher") as r:
        assert r.get(steer["id"])["state"] == "withheld"
        assert "over the lab's cap of 5" in r.get(steer["id"])["release_reason"]
        for job in evals:
            assert r.get(job["id"])["state"] == "released"
            answer = r._call("GET", f"/api/jobs/{job['id']}/result")
            assert verify_result(answer["result"], answer["signature"], lab_key) == (
                signing.key_id(lab_key)
            )
            assert answer["result"]["timings"]["batched_with"] == 4.0
    kept = json.loads((tmp_path / "withheld" / f"job-{steer['id']}.json").read_text())
    assert kept["result"]["method"] == "steering"
    outbox = tmp_path / "outbox"
    assert not outbox.exists() or not list(outbox.glob("*.json"))  # every entry delivered



def test_a_batchs_results_are_posted_while_the_next_batch_runs(
    hub: Hub, site: LabConfig, tmp_path: Path, use_tiny_home: Settings
) -> None:
    """The agent hands a batch's results to a delivery in the background and runs the next
    batch meanwhile: a post held until the next batch has started still lands; at most one
    delivery is in flight; every result has landed when run() returns."""
    evals = [approved_job(hub, EVAL | {"seed": i}) for i in range(6)]
    cfg = site.model_copy(update={"agent": site.agent.model_copy(update={"batch": 2})})
    batches: list[list[int]] = []
    second = threading.Event()

    class Watched(LocalExecutor):
        def run_batch(self, tasks: list[Task], cancel: threading.Event) -> list[Outcome]:
            batches.append([t.job_id for t in tasks])
            if len(batches) == 2:
                second.set()
            return super().run_batch(tasks, cancel)

    flying, most, overlapped = [0], [0], []
    executor = Watched(cfg.executor)  # type: ignore[arg-type]
    with hub.client("agent") as client:
        many = client.post_results

        def post_results(lab: str, posts: list[dict[str, Any]]) -> Any:
            flying[0] += 1
            most[0] = max(most[0], flying[0])
            if not overlapped:  # the first batch's post waits for the second batch to start
                overlapped.append(second.wait(timeout=60))
            try:
                return many(lab, posts)
            finally:
                flying[0] -= 1

        client.post_results = post_results  # type: ignore[method-assign]
        agent = Agent(cfg, client, executor, withheld_dir=tmp_path / "withheld")
        try:
            stats = agent.run(max_jobs=6)
        finally:
            executor.close()
    assert overlapped == [True]  # the executor ran the next batch while the first was posted
    assert most[0] == 1 and len(batches) == 3
    assert (stats.claimed, stats.posted, stats.failed) == (6, 6, 0), stats
    with hub.client("researcher") as r:
        assert [r.get(j["id"])["state"] for j in evals] == ["released"] * 6


@pytest.mark.parametrize("answer", ["no endpoint", "one lease lost"])
def test_a_batchs_results_from_a_hub_without_the_endpoint_or_with_a_lease_lost(
    hub: Hub, site: LabConfig, tmp_path: Path, use_tiny_home: Settings, answer: str
) -> None:
    from analoglab.queue.errors import QueueError

    evals = [approved_job(hub, EVAL | {"seed": i}) for i in range(3)]
    cfg = site.model_copy(update={"agent": site.agent.model_copy(update={"batch": 3})})
    executor = LocalExecutor(cfg.executor)  # type: ignore[arg-type]
    def meddle(posts: list[dict[str, Any]]) -> None:
        if answer == "no endpoint":  # what a hub older than the agent answers
            raise QueueError("Not Found", status=404)
        # the second job's lease went (its post is refused alone, 409): the others land
        posts[1] = posts[1] | {"lease_id": "gone" + "x" * 28}

    with hub.client("agent") as client:
        posted = spy_on_posts(client, meddle)
        agent = Agent(cfg, client, executor, withheld_dir=tmp_path / "withheld")
        try:
            stats = agent.run(max_jobs=3)
        finally:
            executor.close()
    with hub.client("researcher") as r:
        states = [r.get(j["id"])["state"] for j in evals]
    singles = [ids[0] for ids in posted if len(ids) == 1]
    if answer == "no endpoint":
        assert singles == [j["id"] for j in evals]  # one post each, every result landed
        assert (stats.posted, stats.lost, states) == (3, 0, ["released"] * 3)
    else:
        assert singles == []
        assert (stats.posted, stats.lost) == (2, 1)
        assert states == ["released", "running", "released"]
        # the refused one waits in the outbox for the job's next claim (its lease lives on)
        assert [e.job_id for e in agent.outbox.pending()] == [evals[1]["id"]]  # type: ignore[union-attr]

def test_under_a_flood_the_single_job_runs_in_the_first_batch(
    tmp_path: Path, tiny_home: Settings, site: LabConfig
) -> None:
    from analoglab.queue.auth import hash_token
    from analoglab.queue.client import QueueClient
    from analoglab.queue.jobs import QueueSettings
    from analoglab.queue.service import create_app
    from analoglab.queue.vetting import VettingLimits

    from ..conftest import serve_app

    roles = {"heavy": ["researcher"], "light": ["researcher"], "rev": ["reviewer:tiny-lab"]}
    roles["bot"] = ["agent:tiny-lab"]
    tokens = {hash_token(f"tok-{n}"): {"name": n, "roles": r} for n, r in roles.items()}
    app = create_app(
        f"sqlite:///{tmp_path / 'queue.db'}",
        tiny_home,
        tokens,
        queue_settings=QueueSettings(
            lease_seconds=5, sweep_seconds=0.5, limits=VettingLimits(rate_per_minute=1000)
        ),
    )
    claim = 4
    flooded = site.model_copy(update={"agent": site.agent.model_copy(update={"batch": claim})})
    with serve_app(app) as url:
        with QueueClient(url, "tok-rev") as rev:
            pol = rev.policy("tiny-frontier")
            rev.set_policy(
                "tiny-frontier",
                pol | {"human_review": False, "daily_quota_per_user": 100},
            )
        with QueueClient(url, "tok-heavy") as heavy:
            flood = [heavy.submit(EVAL | {"seed": i}, "tiny-frontier") for i in range(12)]
        with QueueClient(url, "tok-light") as light:
            single = light.submit(EVAL | {"seed": 99}, "tiny-frontier")
        executor = LocalExecutor(flooded.executor)  # type: ignore[arg-type]
        with QueueClient(url, "tok-bot") as bot:
            agent = Agent(flooded, bot, executor, withheld_dir=tmp_path / "withheld")
            try:
                stats = agent.run(max_jobs=claim)  # one claim batch, run as one batch
            finally:
                executor.close()
        assert stats.posted == claim
        with QueueClient(url, "tok-light") as light:
            assert light.get(single["id"])["state"] == "released"
        with QueueClient(url, "tok-heavy") as heavy:
            states = [heavy.get(j["id"])["state"] for j in flood]
        assert states.count("released") == claim - 1 and states.count("approved") == 9
    sizes = {o["job_id"]: o.get("batch_size") for o in stats.outcomes}
    assert sizes[single["id"]] == claim  # it shared the first batch with the flood's jobs
