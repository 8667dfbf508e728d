"""Many researchers, one frontier: batched execution against today's sequential warm worker.

    python benchmarks/frontier_throughput.py [--home DATA_FOLDER] [--frontier ID] [--jobs 64]
        [--users 8] [--threads 2] [--claim 16] [--batch-tokens 8192] [--flood 200] [--repeats 3]
        [--hub process|thread] [--markdown OUT.md] [--json OUT.json]
    python benchmarks/frontier_throughput.py --worker-only [--device cpu|cuda]
        [--frontier-path WEIGHTS] [--jobs 64] [--users 8] [--threads N] [--markdown OUT.md]

**Through the real queue and agent** (the default). Starts a queue service (uvicorn on
loopback, SQLite; in a process of its own, as the platform runs it, or with ``--hub thread``
in a thread of the benchmark's process) over the catalog of ``--home`` (default: a tiny
foundry build in a temporary folder), has ``--users`` researchers submit ``--jobs`` small
jobs between them (evaluations, activation statistics, probes and steering on a few prompts
each; the frontier's policy set to approve at once), and serves them with an in-process lab
agent and its local executor (a warm worker, ``--threads`` torch threads), three times:

- **sequential, a claim per job**: the warm worker as it was before batching: one job after
  another (``batch_tokens = 0``), claimed ahead one call per job (as the agent still claims
  from a hub without the claims endpoint);
- **sequential**: one job after another, the jobs claimed ahead in one call
  (``POST /api/labs/{lab}/claims``, up to ``--claim``);
- **batched**: as sequential, and the shareable jobs for the frontier run as one batch, their
  passes packed at most ``--batch-tokens`` tokens a pass.

The modes take turns for ``--repeats`` rounds (default 3; a shared 2-core machine's speed
drifts by 20% between runs) and each row is the round of median jobs per second.
Per mode: jobs per second (from the first claim to the last result posted), p50 / p95 time
to result (from submission to the result posted), and the seconds the agent spent in the
executor and in calls posting results. Then the **flood**: one user submits
``--flood`` jobs, another one job after them; the batched agent serves until the single job's
result is posted: how many of the flood's jobs were posted before it and its wait.

**Worker only** (``--worker-only``): no queue, no database, no web service. The same job specs
run through the worker in-process (:meth:`analoglab.lab.worker.Worker.run` one after another
against :meth:`~analoglab.lab.worker.Worker.run_batch` in batches of ``--claim``) on
``--frontier-path`` (a frontier's weights folder) or, without it, a randomly initialised
Llama of the demo frontier's shape with a tokenizer trained here on the task sets' texts; the
results of the two modes are checked equal. It imports the package's modules without its
``__init__`` (which would pull in the queue client and its HTTP stack): besides torch,
transformers, tokenizers and numpy it needs pydantic (with pydantic-core, annotated-types,
typing-inspection), pydantic-settings, python-dotenv, platformdirs, and cryptography (with
cffi) and bcrypt, which the model catalog's signing imports.

Figures: docs/performance.md ("Many researchers, one frontier"): ``--docs docs/performance.md
--block NAME`` writes the run's figures between ``<!-- frontier-throughput:NAME:start -->``
and ``<!-- frontier-throughput:NAME:end -->`` there (the markers must exist).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchdocs import add_docs_options, check_docs_options, stamp, write_block

#: The queue mode's first row: jobs one after another, each claimed by its own call (the agent
#: as it was before batching, and as it still claims from a hub without the claims endpoint).
SINGLE_CLAIMS = "sequential, a claim per job"

METHODS_MIX = ("evaluation", "activation_stats", "evaluation", "probe") * 3 + (
    "evaluation",
    "activation_stats",
    "steering",
    "evaluation",
)


def job_spec(k: int, mix: str = "mixed", draws: str = "shared") -> dict[str, Any]:
    """The ``k``-th small job, seeded by ``k``: with ``mix="mixed"`` evaluations, activation
    statistics, probes and steering on 4–24 prompts each (:data:`METHODS_MIX`); with
    ``"evaluation"`` an evaluation on 32 prompts. With ``draws="shared"`` every job reads the
    task sets' default draw (what a spec naming a task set gets: jobs over one set ask for
    the same prompts); with ``"own"`` job ``k`` draws its own items (task-set seed 12345 + k),
    so no two jobs share a prompt row except by chance."""
    method = METHODS_MIX[k % len(METHODS_MIX)] if mix == "mixed" else "evaluation"
    common = {"seed": k, "batch_size": 16 if mix == "mixed" else 32, "max_tokens_per_prompt": 64}
    extra = {} if draws == "shared" else {"seed": 12345 + k}

    def data(name: str, n: int) -> dict[str, Any]:
        return {"kind": "task_set", "name": name, "n": n} | extra

    if method == "evaluation":
        name = ("sentiment", "facts", "ioi")[k % 3]
        n = 16 if mix == "mixed" else 32
        return common | {"method": method, "data": data(name, n)}
    if method == "activation_stats":
        return common | {"method": method, "data": data("neutral", 16), "position": "last"}
    if method == "probe":
        layers = {"depths": [0.5, 1.0]}
        return common | {"method": method, "data": data("sentiment", 24), "layers": layers}
    return common | {
        "method": "steering",
        "contrast": data("sentiment_pairs", 4),
        "evaluate": data("sentiment", 8),
        "target": " good",
        "foil": " bad",
        "scales": [4],
        "layers": {"depths": [0.5]},
    }


def warm_specs(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a warm-up runs, alone and then as one batch: a job of each method, and at least
    two jobs (a batch of one runs alone, and the worker measures a pass's fixed cost at its
    first batch of two or more)."""
    warm = list({spec["method"]: spec for spec in specs}.values())
    return warm if len(warm) > 1 else specs[:2]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median jobs/s (the lower middle of an even count), with every run's jobs/s
    beside it."""
    ordered = sorted(runs, key=lambda r: r["jobs_per_second"])
    middle = ordered[(len(ordered) - 1) // 2]
    return middle | {"runs_jobs_per_second": [r["jobs_per_second"] for r in runs]}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# -- worker only ------------------------------------------------------------------------------


def random_demo_frontier(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised Llama of the demo frontier's shape, saved with a tokenizer
    trained on the task sets' texts (what the demo build would hold, untrained)."""
    import torch
    from transformers import LlamaForCausalLM

    from analoglab.experiments.methods.common import texts_of
    from analoglab.experiments.spec import parse_spec, resolve_task_sets
    from analoglab.foundry.presets import get_preset, llama_config
    from analoglab.foundry.tokenizer import train_tokenizer

    texts: list[str] = []
    for name in ("neutral", "sentiment", "facts", "ioi", "sentiment_pairs"):
        spec = {"method": "activation_stats", "data": {"kind": "task_set", "name": name, "n": 200}}
        texts += texts_of(resolve_task_sets(parse_spec(spec)).data)  # type: ignore[attr-defined]
    texts += [" good", " bad", " yes", " no"] * 50
    preset = get_preset("demo")
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    shape = preset.frontier
    torch.manual_seed(seed)
    config = llama_config(shape, tokenizer, context=512)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def results_equal(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-4) -> bool:
    if isinstance(a, dict):
        keys = set(a) - {"timings", "size_bytes"}
        return (
            isinstance(b, dict)
            and keys == set(b) - {"timings", "size_bytes"}
            and all(results_equal(a[k], b[k], tol) for k in keys)
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(results_equal(x, y, tol) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return bool(a == b)


def light_package() -> None:
    """Make ``import analoglab.<module>`` skip the package's ``__init__`` (the queue client,
    the catalog API, httpx): what the worker-only mode needs on a bare GPU machine."""
    import importlib.util
    import types

    if "analoglab" in sys.modules:
        return
    found = importlib.util.find_spec("analoglab")
    if found is None or not found.submodule_search_locations:
        here = Path(__file__).resolve().parent.parent / "platform" / "analoglab"
        locations = [str(here)]
    else:
        locations = list(found.submodule_search_locations)
    package = types.ModuleType("analoglab")
    package.__path__ = locations
    package.__version__ = "worker-only"  # type: ignore[attr-defined]
    sys.modules["analoglab"] = package


def worker_only(args: argparse.Namespace) -> dict[str, Any]:
    light_package()
    import torch

    from analoglab.lab.worker import Worker

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="analoglab-bench-frontier-") as tmp:
        if args.frontier_path:
            weights = str(args.frontier_path)
        else:
            print("a random demo-shaped frontier (no --frontier-path)...", flush=True)
            weights = str(random_demo_frontier(Path(tmp) / "frontier"))
        specs = [job_spec(k, args.mix, args.draws) for k in range(args.jobs)]
        worker = Worker()
        worker.load("frontier", weights, device=args.device)
        # warm up, not counted: one job of each method, alone and as one batch (first calls
        # pay one-time costs: task sets built, kernels and libraries loaded, a pass's cost)
        warm = warm_specs(specs)
        for spec in warm:
            worker.run("frontier", weights, spec, device=args.device)
        worker.run_batch(
            "frontier",
            weights,
            [{"job_id": i, "spec": spec} for i, spec in enumerate(warm)],
            device=args.device,
            batch_tokens=args.batch_tokens,
        )

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        rows: dict[str, dict[str, Any]] = {}
        outputs: dict[str, list[dict[str, Any]]] = {}
        for mode in ("sequential", "batched"):
            done_at: list[float] = []
            results: list[dict[str, Any]] = []
            sync()
            start = time.perf_counter()
            if mode == "sequential":
                for spec in specs:
                    result, _ = worker.run("frontier", weights, spec, device=args.device)
                    sync()
                    results.append(result)
                    done_at.append(time.perf_counter() - start)
            else:
                for i in range(0, len(specs), args.claim):
                    chunk = [
                        {"job_id": i + j, "spec": s}
                        for j, s in enumerate(specs[i : i + args.claim])
                    ]
                    answers, _ = worker.run_batch(
                        "frontier",
                        weights,
                        chunk,
                        device=args.device,
                        batch_tokens=args.batch_tokens,
                    )
                    sync()
                    now = time.perf_counter() - start
                    for answer in answers:
                        if answer["status"] != "ok":
                            raise SystemExit(f"job {answer['job_id']} failed: {answer['reason']}")
                        results.append(answer["result"])
                        done_at.append(now)
            total = time.perf_counter() - start
            outputs[mode] = results
            rows[mode] = {
                "jobs": len(specs),
                "seconds": round(total, 3),
                "jobs_per_second": round(len(specs) / total, 2),
                "p50_s": round(statistics.median(done_at), 3),
                "p95_s": round(quantile(done_at, 0.95), 3),
            }
            print(mode, rows[mode], flush=True)
        same = all(
            results_equal(a, b)
            for a, b in zip(outputs["sequential"], outputs["batched"], strict=True)
        )
    return {
        "mode": "worker-only",
        "mix": args.mix,
        "draws": args.draws,
        "device": args.device,
        "frontier": "given weights" if args.frontier_path else "random demo-shaped Llama",
        "claim": args.claim,
        "batch_tokens": args.batch_tokens,
        "rows": rows,
        "speedup": round(
            rows["batched"]["jobs_per_second"] / rows["sequential"]["jobs_per_second"], 2
        ),
        "results_equal": same,
        "stamp": stamp(args.threads, args.device),
    }


# -- through the real queue and agent ---------------------------------------------------------


def through_queue(args: argparse.Namespace) -> dict[str, Any]:

    from analoglab.lab.agent import Agent
    from analoglab.lab.config import (
        AgentConfig,
        LocalExecutorConfig,
    )
    from analoglab.lab.executor import Task
    from analoglab.lab.local import LocalExecutor
    from analoglab.queue.client import QueueClient
    from analoglab.queue.errors import QueueError
    from benchsite import lab_config, queue_site

    class TimedClient(QueueClient):
        """The agent's client, noting when each claim began and each result landed, and
        the seconds spent posting results."""

        posted: dict[int, float]
        claims: list[float]
        watch: tuple[int, threading.Event] | None = None

        single = False  # answer the claims endpoint as a hub without it would (404)
        posting = 0.0  # seconds in post_result calls

        def claim(self, *a: Any, **kw: Any) -> Any:
            self.claims.append(time.monotonic())
            return super().claim(*a, **kw)

        def claim_many(self, *a: Any, **kw: Any) -> Any:
            if self.single:
                raise QueueError("Not Found", status=404)
            self.claims.append(time.monotonic())
            return super().claim_many(*a, **kw)

        def post_result(self, job_id: int, *a: Any, **kw: Any) -> Any:
            start = time.monotonic()
            out = super().post_result(job_id, *a, **kw)
            self._landed([job_id], start)
            return out

        def post_results(self, lab: str, posts: Any) -> Any:
            start = time.monotonic()
            out = super().post_results(lab, posts)
            self._landed([a["job_id"] for a in out if a["status"] == 200], start)
            return out

        def _landed(self, job_ids: list[int], start: float) -> None:
            now = time.monotonic()
            self.posting += now - start
            for job_id in job_ids:
                self.posted[job_id] = now
                if self.watch is not None and self.watch[0] == job_id:
                    self.watch[1].set()

    class TimedExecutor(LocalExecutor):
        """The local executor, adding up the time the agent waits on it."""

        busy = 0.0

        def run(self, task: Any, cancel: Any) -> Any:
            start = time.monotonic()
            try:
                return super().run(task, cancel)
            finally:
                self.busy += time.monotonic() - start

        def run_batch(self, tasks: Any, cancel: Any) -> Any:
            start = time.monotonic()
            try:
                return super().run_batch(tasks, cancel)
            finally:
                self.busy += time.monotonic() - start

    users = [f"user{u}" for u in range(args.users)] + ["heavy", "light"]
    with (
        tempfile.TemporaryDirectory(prefix="analoglab-bench-frontier-") as tmp,
        queue_site(
            args.home,
            args.frontier,
            users,
            Path(tmp),
            quota=10**6,
            methods=METHODS_MIX,
            own_process=args.hub == "process",
        ) as site,
    ):
        frontier, url = site.frontier, site.url

        def agent_for(
            batch_tokens: int, claim: int, single: bool = False
        ) -> tuple[Agent, TimedClient]:
            ex_cfg = LocalExecutorConfig(threads=args.threads, batch_tokens=batch_tokens)
            cfg = lab_config(
                site, ex_cfg, AgentConfig(batch=claim, wait_seconds=0, heartbeat_seconds=5)
            )
            client = TimedClient(url, "tok-bot")
            client.posted, client.claims, client.single = {}, [], single
            return Agent(cfg, client, TimedExecutor(ex_cfg)), client

        def warm_up(executor: Any) -> None:
            """One job of each method, alone and as one batch, outside the queue and the
            clock (first calls pay one-time costs in a fresh worker)."""
            specs = warm_specs([job_spec(k, args.mix, args.draws) for k in range(args.jobs)])
            tasks = [
                Task(-1 - i, frontier, spec, str(site.weights)) for i, spec in enumerate(specs)
            ]
            never = threading.Event()
            for task in tasks:
                executor.run(task, never)
            executor.run_batch(tasks, never)
            executor.busy = 0.0

        def submit(user: str, specs: list[dict[str, Any]]) -> list[tuple[int, float]]:
            out = []
            with QueueClient(url, f"tok-{user}") as c:
                for spec in specs:
                    job = c.submit(spec, frontier)
                    out.append((int(job["id"]), time.monotonic()))
            return out

        runs: dict[str, list[dict[str, Any]]] = {}
        modes = (
            (SINGLE_CLAIMS, 0, True),
            ("sequential", 0, False),
            ("batched", args.batch_tokens, False),
        )
        # the modes take turns, round after round
        for round_, (mode, batch_tokens, single) in itertools.product(range(args.repeats), modes):
            agent, client = agent_for(batch_tokens, args.claim, single)
            agent.verify_frontiers()  # load the model before the clock starts
            warm_up(agent.executor)
            submitted: list[tuple[int, float]] = []
            for k in range(args.jobs):  # interleaved: user k % users submits job k
                submitted += submit(users[k % args.users], [job_spec(k, args.mix, args.draws)])
            print(f"{mode} (round {round_ + 1}): {args.jobs} jobs on {frontier}...", flush=True)
            try:
                stats = agent.run(max_jobs=args.jobs)
            finally:
                agent.executor.close()
                client.close()
            if stats.posted != args.jobs:
                raise SystemExit(f"{mode}: {stats.posted} of {args.jobs} posted: {stats}")
            to_result = [client.posted[j] - t for j, t in submitted]
            span = max(client.posted.values()) - client.claims[0]
            assert isinstance(agent.executor, TimedExecutor)
            row = {
                "jobs": args.jobs,
                "seconds": round(span, 3),
                "executor_s": round(agent.executor.busy, 3),
                "posting_s": round(client.posting, 3),
                "jobs_per_second": round(args.jobs / span, 2),
                "p50_s": round(statistics.median(to_result), 3),
                "p95_s": round(quantile(to_result, 0.95), 3),
            }
            runs.setdefault(mode, []).append(row)
            print(mode, row, flush=True)
        rows = {mode: median_run(each) for mode, each in runs.items()}

        # the flood: one user's many jobs, then another's single job
        agent, client = agent_for(args.batch_tokens, args.claim)
        agent.verify_frontiers()
        warm_up(agent.executor)
        flood = submit("heavy", [job_spec(k, args.mix, args.draws) for k in range(args.flood)])
        ((light_id, light_at),) = submit("light", [job_spec(1, args.mix, args.draws)])
        landed = threading.Event()
        client.watch = (light_id, landed)
        threading.Thread(
            target=lambda: (landed.wait(), agent.stop()), daemon=True, name="stopper"
        ).start()
        try:
            agent.run()
        finally:
            agent.executor.close()
            client.close()
        light_done = client.posted[light_id]
        flood_ids = {j for j, _ in flood}
        before = sum(1 for j, t in client.posted.items() if j in flood_ids and t < light_done)
        flood_row = {
            "flood_jobs": args.flood,
            "flood_posted_before_single": before,
            "claim_batch": args.claim,
            "single_wait_s": round(light_done - light_at, 3),
        }
        print("flood", flood_row, flush=True)
    return {
        "mode": "queue",
        "mix": args.mix,
        "draws": args.draws,
        "users": args.users,
        "frontier": frontier,
        "claim": args.claim,
        "batch_tokens": args.batch_tokens,
        "hub": args.hub,
        "rows": rows,
        "speedup": round(
            rows["batched"]["jobs_per_second"] / rows["sequential"]["jobs_per_second"], 2
        ),
        "speedup_vs_single_claims": round(
            rows["batched"]["jobs_per_second"] / rows[SINGLE_CLAIMS]["jobs_per_second"], 2
        ),
        "repeats": args.repeats,
        "speedups": [
            round(b["jobs_per_second"] / q["jobs_per_second"], 2)
            for b, q in zip(runs["batched"], runs["sequential"], strict=True)
        ],
        "flood": flood_row,
        "stamp": stamp(args.threads),
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["stamp"]
    hub = {
        "process": "the queue service in its own process",
        "thread": "the queue service in a thread of the agent's process",
    }
    where = (
        f"through the real queue and lab agent on `{report['frontier']}` "
        f"({hub[report.get('hub', 'thread')]})"
        if report["mode"] == "queue"
        else f"through the worker in-process on {report['device']} ({report['frontier']})"
    )
    mix = {
        "mixed": "mixed small jobs (evaluations, activation statistics, probes, steering)",
        "evaluation": "evaluations of 32 prompts",
    }[report["mix"]]
    if report.get("draws") == "own":
        mix += ", each job its own draw of the task sets' items"
    else:
        mix += ", on the task sets' default draws"
    lines = [
        f"{report['rows']['sequential']['jobs']} {mix}"
        + (f" from {report['users']} users" if "users" in report else "")
        + f" {where}; claimed {report['claim']} "
        f"at a time, at most {report['batch_tokens']} tokens a shared pass. Measured at commit "
        f"`{s['commit']}` on {s['date']}, {s['machine']}, {s['threads']} torch thread(s), "
        f"torch {s['torch']} (`benchmarks/frontier_throughput.py`).",
        "",
        "| execution | jobs | wall | in the executor | posting results | jobs/s "
        "| time to result p50 | p95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in report["rows"].items():
        busy = f"{r['executor_s']:.1f} s" if "executor_s" in r else "—"
        posting = f"{r['posting_s']:.1f} s" if "posting_s" in r else "—"
        lines.append(
            f"| {mode} | {r['jobs']} | {r['seconds']:.1f} s | {busy} | {posting} | "
            f"{r['jobs_per_second']:.2f} | {r['p50_s']:.2f} s | {r['p95_s']:.2f} s |"
        )
    if report.get("repeats", 1) > 1:
        lines += [
            "",
            f"Each row is the median of {report['repeats']} rounds (the modes taking turns); "
            "jobs/s in each round: "
            + "; ".join(
                f"{mode} "
                + ", ".join(f"{v:.1f}" for v in r["runs_jobs_per_second"])
                for mode, r in report["rows"].items()
            )
            + ". Batched against sequential, round by round: "
            + ", ".join(f"{v:.2f}×" for v in report["speedups"])
            + ".",
        ]
    lines += ["", f"Batched: **{report['speedup']:.2f}×** the sequential warm worker's jobs/s."]
    if "speedup_vs_single_claims" in report:
        lines[-1] += (
            f" Against the warm worker as it was before batching, a claim per job: "
            f"**{report['speedup_vs_single_claims']:.2f}×**."
        )
    if "results_equal" in report:
        lines.append(
            "Every job's result equal batched and sequential (1e-4): "
            + ("yes." if report["results_equal"] else "**no**.")
        )
    if "flood" in report:
        f = report["flood"]
        lines.append(
            f"Flood: one user queued {f['flood_jobs']} jobs, another 1 job after them; "
            f"{f['flood_posted_before_single']} of the flood's jobs were posted before the "
            f"single job (claims of {f['claim_batch']}), which waited {f['single_wait_s']:.1f} s."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-only", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frontier-path", type=Path, help="worker only: a frontier's weights")
    parser.add_argument("--home", type=Path, help="data folder with a built foundry")
    parser.add_argument("--frontier", default=None, help="default: the site's first frontier")
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the worker")
    parser.add_argument("--claim", type=int, default=16, help="jobs claimed (batched) at once")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument(
        "--hub",
        choices=("process", "thread"),
        default="process",
        help="the queue service in its own process (as the platform runs it), or in a thread "
        "of the benchmark's process, sharing the agent's interpreter lock",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="queue mode: rounds of the three modes, taking turns; each row is the median",
    )
    parser.add_argument(
        "--mix",
        choices=("mixed", "evaluation"),
        default="mixed",
        help="the jobs: mixed methods on a few prompts each, or evaluations on 32 prompts",
    )
    parser.add_argument(
        "--draws",
        choices=("shared", "own"),
        default="shared",
        help="the task sets' default draw for every job, or each job its own items",
    )
    parser.add_argument("--markdown", type=Path)
    add_docs_options(parser)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    check_docs_options(parser, args, "frontier-throughput")
    if args.repeats < 1:
        parser.error("--repeats: at least 1 round")
    report = worker_only(args) if args.worker_only else through_queue(args)
    text = markdown(report)
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.docs:
        write_block(args.docs, "frontier-throughput", args.block, text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
