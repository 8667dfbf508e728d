"""Where a batch's rows are cut into forward passes: the measured pass cost against the fewest
passes.

``experiments.batching.pack_passes`` cuts a batch's rows (sorted by length) where the passes
cost least: each its tokens, padding included, plus a pass's fixed cost, which the worker
measures once per loaded model (``experiments.packed.measure_pass_tokens``). Without it the
rows take the fewest passes the token bound allows. This runs the 64 small jobs of
``frontier_throughput.py`` (in batches of 16, through ``experiments.runner.run_batch``) both
ways, alternating, and reports each way's median seconds and whether every result is equal.

    python benchmarks/packing.py [--frontier-path DIR] [--docs docs/performance.md --block packing]

Without ``--frontier-path``, a randomly initialised Llama of the demo frontier's shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdocs import add_docs_options, check_docs_options, stamp, write_block
from frontier_throughput import job_spec, random_demo_frontier, results_equal

#: (label, mix, draws) of the job sets timed.
SETS = (
    ("mixed small jobs, the task sets' default draws", "mixed", "shared"),
    ("mixed small jobs, each its own draw", "mixed", "own"),
    ("evaluations of 32 prompts, default draws", "evaluation", "shared"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontier-path", type=Path)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--claim", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    add_docs_options(parser)
    args = parser.parse_args()
    check_docs_options(parser, args, "packing")

    import torch

    from analoglab.experiments.packed import measure_pass_tokens
    from analoglab.experiments.runner import run_batch
    from analoglab.experiments.spec import parse_spec
    from analoglab.models.loading import load_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="analoglab-bench-packing-") as tmp:
        path = args.frontier_path or random_demo_frontier(Path(tmp) / "frontier")
        model = load_model(path, device="cpu", name="frontier")
        measured = measure_pass_tokens(model.model, args.batch_tokens)
        rows = []
        for label, mix, draws in SETS:
            specs = [parse_spec(job_spec(k, mix, draws)) for k in range(args.jobs)]

            def batched(pass_tokens: int | None, specs: list[Any] = specs) -> list[Any]:
                out: list[Any] = []
                for i in range(0, len(specs), args.claim):
                    chunk = specs[i : i + args.claim]
                    out += run_batch(
                        chunk, model, batch_tokens=args.batch_tokens, pass_tokens=pass_tokens
                    )
                return out

            batched(measured)  # warm-up
            seconds: dict[int | None, list[float]] = {None: [], measured: []}
            results: dict[int | None, list[Any]] = {}
            for _ in range(args.repeats):
                for way in seconds:
                    start = time.perf_counter()
                    results[way] = batched(way)
                    seconds[way].append(time.perf_counter() - start)
            same = all(
                results_equal(a.model_dump(mode="json"), b.model_dump(mode="json"))
                for a, b in zip(results[None], results[measured], strict=True)
            )
            fewest, cut = statistics.median(seconds[None]), statistics.median(seconds[measured])
            rows.append((label, fewest, cut, same))
            print(f"{label}: fewest passes {fewest:.3f} s, cut by cost {cut:.3f} s", flush=True)
    s = stamp(args.threads)
    frontier = "given weights" if args.frontier_path else "random demo-shaped Llama"
    text = (
        f"{args.jobs} jobs run in batches of {args.claim} through `run_batch` on the CPU "
        f"({frontier}), at most {args.batch_tokens} tokens a pass; the measured fixed cost of "
        f"a pass: {measured} tokens; medians of {args.repeats} runs each way, alternating. "
        f"Measured at commit `{s['commit']}` on {s['date']}, {s['machine']}, {s['threads']} "
        f"torch thread(s), torch {s['torch']} (`benchmarks/packing.py`).\n\n"
        "| jobs | fewest passes | cut where passes cost least | results equal |\n"
        "|---|---:|---:|---|\n"
        + "".join(
            f"| {label} | {fewest:.3f} s | {cut:.3f} s | {'yes' if same else 'NO'} |\n"
            for label, fewest, cut, same in rows
        )
    )
    print()
    print(text)
    if args.docs:
        write_block(args.docs, "packing", args.block, text)
    if not all(same for *_, same in rows):
        raise SystemExit("error: a result differs between the two packings")


if __name__ == "__main__":
    main()
