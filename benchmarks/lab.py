"""The lab site's costs: the queue round trip per job, and warm workers against a load per job.

    python benchmarks/lab.py [--home DATA_FOLDER] [--frontier ID] [--jobs 12] [--json out.json]
        [--docs docs/performance.md --block NAME]

Starts a queue service (uvicorn on loopback, SQLite, in its own process) over the catalog of
``--home`` (default: a tiny foundry build made in a temporary folder, ~30 s), submits
``--jobs`` small evaluation jobs to the frontier (auto-approved), and serves them with an
in-process lab agent and its local executor, twice: with a warm worker (the model stays
loaded between jobs) and with a fresh worker per job. For every job it records the time
from the start of the claim to the posted result, and the worker's own load and run times,
and prints:

- **round-trip overhead** = claim-to-posted − load − run: what the queue, the release checks
  and the worker protocol add to each job (the warm run's median and p95);
- **per job, warm vs cold**: median claim-to-posted time with a warm worker and with a worker
  (torch import + weights load) per job, and the ratio.

``--docs PAGE --block NAME`` writes the table, stamped with the commit, date and machine,
between ``<!-- lab-site:NAME:start -->`` and ``<!-- lab-site:NAME:end -->`` of PAGE.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from analoglab.lab.agent import Agent
from analoglab.lab.config import AgentConfig, LocalExecutorConfig
from analoglab.lab.local import LocalExecutor
from analoglab.models.catalog import Catalog
from analoglab.queue.client import QueueClient
from benchdocs import add_docs_options, check_docs_options, stamp, write_block
from benchsite import Site, lab_config, queue_site

SPEC = {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 32}}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def serve_jobs(site: Site, jobs: int, warm: bool, threads: int) -> list[dict[str, Any]]:
    with QueueClient(site.url, "tok-ada") as ada:
        for i in range(jobs):
            ada.submit(SPEC | {"seed": i}, site.frontier)
    ex_cfg = LocalExecutorConfig(warm=warm, threads=threads)
    cfg = lab_config(site, ex_cfg, AgentConfig(batch=1, wait_seconds=0, heartbeat_seconds=5))
    executor = LocalExecutor(ex_cfg)
    with QueueClient(site.url, "tok-bot") as bot:
        agent = Agent(cfg, bot, executor)
        try:
            stats = agent.run(max_jobs=jobs)
        finally:
            executor.close()
    assert stats.posted == jobs, stats
    return stats.outcomes


def summarise(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    total = [o["claim_to_done_seconds"] for o in outcomes]
    overhead = [
        o["claim_to_done_seconds"] - o["load_seconds"] - o["run_seconds"] for o in outcomes
    ]
    return {
        "jobs": len(outcomes),
        "per_job_median_s": statistics.median(total),
        "overhead_median_ms": 1000 * statistics.median(overhead),
        "overhead_p95_ms": 1000 * _quantile(overhead, 0.95),
        "run_median_ms": 1000 * statistics.median(o["run_seconds"] for o in outcomes),
        "load_median_s": statistics.median(o["load_seconds"] for o in outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="data folder with a built foundry")
    parser.add_argument("--frontier", default=None, help="default: the site's first frontier")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the worker")
    parser.add_argument("--json", type=Path)
    add_docs_options(parser)
    args = parser.parse_args()
    check_docs_options(parser, args, "lab-site")

    with (
        tempfile.TemporaryDirectory(prefix="analoglab-bench-lab-") as tmp,
        queue_site(args.home, args.frontier, ["ada"], Path(tmp), quota=10_000) as site,
    ):
        results = {}
        for warm in (True, False):
            label = "warm" if warm else "cold"
            print(f"{label}: {args.jobs} jobs on {site.frontier}...", flush=True)
            outcomes = serve_jobs(site, args.jobs, warm, args.threads)
            # The warm worker's first job pays the load once: leave it out of its figures.
            results[label] = summarise(outcomes[1:] if warm else outcomes)
        parameters = Catalog.load(site.settings).frontier(site.frontier).parameters

    warm, cold = results["warm"], results["cold"]
    gain = cold["per_job_median_s"] / warm["per_job_median_s"]
    s = stamp(args.threads)
    lines = [
        f"{args.jobs} evaluations of 32 sentiment prompts each on `{site.frontier}` "
        f"({parameters:,} parameters) through the real queue and lab agent, one job a claim. "
        f"Measured at commit `{s['commit']}` on {s['date']}, {s['machine']}, {s['threads']} "
        f"torch thread(s) in the worker, torch {s['torch']} (`benchmarks/lab.py`).",
        "",
        "| worker | jobs | per job, claim to posted (median) | load | run | overhead median "
        "| p95 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        name = "warm" if label == "warm" else "cold (a worker per job)"
        lines.append(
            f"| {name} | {r['jobs']} | {r['per_job_median_s']:.3f} s | "
            f"{r['load_median_s']:.2f} s | {r['run_median_ms']:.0f} ms | "
            f"{r['overhead_median_ms']:.0f} ms | {r['overhead_p95_ms']:.0f} ms |"
        )
    lines += ["", f"Warm workers: **{gain:.0f}×** faster per job than a worker per job."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.docs:
        write_block(args.docs, "lab-site", args.block, text)
    if args.json:
        args.json.write_text(
            json.dumps({"frontier": site.frontier, **results, "stamp": s}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
