"""Validate the transfer metrics on the demo foundry: does the report tell apart a behaviour
the analogs share (sentiment), one they lack (IOI), and real methods from their controls?

    python benchmarks/transfer.py [--analogs demo-analog-s demo-analog-m] [--frontier demo-frontier]

Runs every spec in docs/specs/ on each analog and on the frontier (the frontier from the demo
lab site of this machine) and prints the transfer score of each pair, with its 95% bootstrap
interval and the verdict from it, as a Markdown table: the one in docs/transfer.md; then the
confusion matrix of verdicts against the foundry's ground truth (``EXPECTED``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from analoglab.experiments.runner import ExperimentError, run
from analoglab.experiments.spec import load_spec
from analoglab.experiments.transfer import compare
from analoglab.models.loading import load_any, quiet_transformers

SPECS = Path(__file__).resolve().parent.parent / "docs" / "specs"

# What should happen, by the demo foundry's ground truth (docs/foundry.md): the frontier and
# the analogs learned sentiment; only the frontier learned IOI; controls never transfer.
# Norm profiles over depth are a property of the architecture, shared by construction.
EXPECTED = {
    "evaluate-sentiment.yaml": "transfers",
    "probe-sentiment.yaml": "transfers",
    "steer-sentiment.yaml": "transfers",
    "stats-neutral.yaml": "transfers",
    "evaluate-ioi.yaml": "does not",
    "ablate-ioi.yaml": "does not",
    "patch-ioi.yaml": "does not",
    "probe-shuffled-control.yaml": "control",
    "steer-random-control.yaml": "control",
}
VERDICTS = ("transfers", "partial", "inconclusive", "does_not_transfer", "no_effect")


def correct(expected: str, verdict: str) -> bool:
    """A case is right when a real shared behaviour transfers, a frontier-only one does not,
    and a control does not reach ``partial``."""
    if expected == "transfers":
        return verdict == "transfers"
    return verdict in ("does_not_transfer", "no_effect")


def confusion(rows: list[tuple[str, str, str, float, str, str]]) -> list[str]:
    """The confusion matrix of verdict against ground truth, as Markdown lines."""
    lines = ["| expected \\ verdict | " + " | ".join(v.replace("_", " ") for v in VERDICTS) + " |"]
    lines.append("|---|" + "---:|" * len(VERDICTS))
    for expected in ("transfers", "does not", "control"):
        counts = [
            sum(1 for r in rows if EXPECTED.get(r[0]) == expected and r[5] == v) for v in VERDICTS
        ]
        lines.append(f"| {expected} | " + " | ".join(str(c) for c in counts) + " |")
    right = sum(1 for r in rows if r[0] in EXPECTED and correct(EXPECTED[r[0]], r[5]))
    lines.append(f"\n{right} of {sum(1 for r in rows if r[0] in EXPECTED)} labelled cases right.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analogs", nargs="+", default=["demo-analog-s", "demo-analog-m"])
    parser.add_argument("--frontier", default="demo-frontier")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    quiet_transformers()
    models = {name: load_any(name, device=args.device) for name in [*args.analogs, args.frontier]}
    rows: list[tuple[str, str, str, float, str, str]] = []
    for path in sorted(SPECS.glob("*.yaml")):
        spec = load_spec(path)
        t0 = time.perf_counter()
        try:
            results = {name: run(spec, m) for name, m in models.items()}
        except ExperimentError as exc:  # e.g. patch pairs of unequal length on this tokenizer
            print(f"{path.name}: cannot run on these models: {exc}", flush=True)
            continue
        for analog in args.analogs:
            rep = compare(results[analog], results[args.frontier])
            parts = {p.name: p for p in rep.parts}
            eff = parts.get("effect_agreement")
            effect = "" if eff is None else f"{eff.analog:+.2f} / {eff.frontier:+.2f}"
            ci = rep.score_interval
            interval = "" if ci is None else f"{ci.low:.3f}–{ci.high:.3f}"
            rows.append((path.name, analog, effect, rep.score, interval, rep.verdict))
        print(f"{path.name}: {time.perf_counter() - t0:.1f}s", flush=True)
    print("\n| spec | analog | effect (analog / frontier) | score | 95% interval | verdict |")
    print("|---|---|---:|---:|---:|---|")
    for name, analog, effect, score, interval, verdict in rows:
        print(
            f"| {name} | {analog} | {effect} | {score:.3f} | {interval} "
            f"| {verdict.replace('_', ' ')} |"
        )
    print()
    print("\n".join(confusion(rows)))


if __name__ == "__main__":
    main()
