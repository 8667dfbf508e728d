"""Probes' two-class fits: Newton's steps through the examples' space against the Hessian's.

A probe over a few dozen texts of a wide model fits fewer examples ``n`` than features ``d``:
each Newton step of ``experiments.methods.logistic`` is then solved through an ``n``-square
system (Woodbury's identity) instead of the ``(d+1)``-square Hessian. This times
``solve_binary`` on probe-shaped requests (by default three probes of the mixed jobs of
``frontier_throughput.py``: 24 training texts × 0.7, the demo frontier's 192-wide stream,
2 layers × 4 splits each) both ways — the Hessian's way by turning the examples' step off —
and checks the two give the same weights.

    python benchmarks/probe_fits.py [--docs docs/performance.md --block probe-fits]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdocs import add_docs_options, check_docs_options, stamp, write_block


def requests(probes: int, texts: int, width: int, fits: int, seed: int) -> list[Any]:
    """``probes`` requests of ``fits`` fits each on ``texts`` examples of ``width`` features:
    standardised features, one of them carrying the label (as a probe's standardised
    residual stream does)."""
    import torch

    from analoglab.experiments.methods.logistic import BinaryFits

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(probes):
        x = torch.randn(fits, texts, width, generator=g)
        y = torch.randint(0, 2, (fits, texts), generator=g)
        x[:, :, 0] += 1.5 * (2 * y - 1)
        out.append(BinaryFits(x, y, 1e-2))
    return out


def timed(call: Any, repeats: int) -> tuple[float, Any]:
    call()  # warm-up, not counted
    seconds, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--texts", type=int, default=17, help="training texts a probe fits")
    parser.add_argument("--width", type=int, default=192, help="the stream's width")
    parser.add_argument("--fits", type=int, default=8, help="fits a probe (layers × splits)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    add_docs_options(parser)
    args = parser.parse_args()
    check_docs_options(parser, args, "probe-fits")

    import torch

    from analoglab.experiments.methods import logistic

    torch.set_num_threads(args.threads)
    reqs = requests(args.probes, args.texts, args.width, args.fits, seed=0)
    few_s, few = timed(lambda: logistic.solve_binary(reqs), args.repeats)
    real = logistic._few_examples_step
    logistic._few_examples_step = lambda *a: None  # type: ignore[assignment]
    try:
        full_s, full = timed(lambda: logistic.solve_binary(reqs), args.repeats)
    finally:
        logistic._few_examples_step = real  # type: ignore[assignment]
    gap = max(
        float((a[0] - b[0]).abs().max().item()) for a, b in zip(few, full, strict=True)
    )
    s = stamp(args.threads)
    text = (
        f"{args.probes} probes' fits ({args.fits} each: layers × splits), {args.texts} training "
        f"texts of a {args.width}-wide stream, pooled in one `solve_binary` call; median of "
        f"{args.repeats}. Measured at commit `{s['commit']}` on {s['date']}, {s['machine']}, "
        f"{s['threads']} torch thread(s), torch {s['torch']} (`benchmarks/probe_fits.py`).\n\n"
        "| Newton's step solved | seconds |\n|---|---:|\n"
        f"| through the ({args.width}+1)-square Hessian | {full_s * 1e3:.1f} ms |\n"
        f"| through the {args.texts}-square examples' system | {few_s * 1e3:.1f} ms |\n\n"
        f"**{full_s / few_s:.1f}×** faster; the largest difference between the two ways' "
        f"weights: {gap:.1e}.\n"
    )
    print(text)
    if args.docs:
        write_block(args.docs, "probe-fits", args.block, text)
    if gap > 1e-4:
        raise SystemExit(f"error: the two ways' weights differ by {gap:.1e}")


if __name__ == "__main__":
    main()
