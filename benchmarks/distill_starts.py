"""How much a demo build's distillation result depends on the student's random start.

    python benchmarks/distill_starts.py --home /tmp/b1=seed-0 --home /tmp/b3=seed-0-1-thread \\
        --starts 3 --docs docs/foundry.md --block starts

A build trains each analog once, from one random start, and its scratch twin from the same
start. Whether a 50k-parameter student learns to copy from context is sensitive to that start
(docs/foundry.md), so one build's KD/scratch ratio is one draw. For each build
(``--home PATH[=LABEL]``, a finished build of ``--preset``, default ``demo``), this trains the
preset's first analog recipe (the one with a scratch twin) again from ``--starts`` other
random starts (torch seeds ``preset seed + 101 + k``), distilled exactly as the build
distils it (same recipe, batches, steps, and the teacher targets read from the build's own
teacher cache) and from scratch from the same start, and measures each pair as the fidelity
stage does (next-token KL to the frontier on the held-out windows, top-1 agreement, the KL on
copied positions, IOI accuracy). ``--docs PAGE --block NAME`` writes the table into the
page's ``<!-- distill-starts:NAME:start/end -->`` block.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from analoglab.config import Settings
from analoglab.foundry import tasks as tasks_mod
from analoglab.foundry.build import FoundryBuild
from analoglab.foundry.fidelity import choices
from analoglab.foundry.presets import get_preset
from analoglab.foundry.training import TeacherCache, train_students
from analoglab.models.loading import quiet_transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import check_block, parse_home, stamp, write_block

KIND = "distill-starts"


def build_seed(home: Path, preset: str) -> int:
    """The seed a build was made with (its corpus manifest)."""
    path = home / "foundry" / preset / "corpus" / "manifest.json"
    if not (home / "foundry" / preset / "fidelity.json").is_file() or not path.is_file():
        raise SystemExit(f"error: {home} holds no finished build of preset {preset!r}")
    return int(json.loads(path.read_text())["seed"])


def measure_build(home: Path, label: str, preset_name: str, starts: int) -> dict[str, Any]:
    seed = build_seed(home, preset_name)
    p = get_preset(preset_name, seed=seed)
    b = FoundryBuild(p, Settings(home=home))
    recipe = next((r for r in p.analogs if r.scratch_baseline), None)
    if recipe is None:
        raise SystemExit(f"error: preset {p.name!r} has no analog with a scratch twin")
    teacher = b._load_frontier()
    tokens, heldout, tok = b.tokens("train"), b.tokens("heldout"), b.tokenizer
    ioi = tasks_mod.task_set("ioi", p.eval_items, world=b.world).items
    run = replace(b.distill_run(), checkpoint_every=10**9)
    cache: TeacherCache | None = None
    rows = []
    for k in range(starts):
        row: dict[str, Any] = {"start": p.seed + 101 + k}
        for mode in ("distill", "scratch"):
            s = b.new_student(mode, recipe, mode, teacher, p.seed + 101 + k)
            model = s.model
            if mode == "distill" and cache is None:
                # the build's own cached targets for this student (read, never rewritten)
                cache = b.teacher_cache([s], run, tokens, create=False)
                if cache is None:
                    raise SystemExit(
                        f"error: {b.work} has no teacher cache for this recipe's targets: "
                        "build it first"
                    )
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="distill-starts-") as scratch:
                train_students(
                    teacher,
                    [s],
                    tokens,
                    run,
                    Path(scratch) / "checkpoint.pt",  # apart from the build's own files
                    torch.device("cpu"),
                    None,
                    cache if mode == "distill" else None,
                    p.teacher_top_k,
                    p.hidden_positions,
                )
            agreement = b.heldout_agreement(teacher, model, heldout)
            row[mode] = {
                "kl": agreement["kl"],
                "kl_copied": agreement["kl_copied"],
                "top1": agreement["top1_agreement"],
                "ioi": sum(choices(model, tok, ioi)) / len(ioi),
                "seconds": time.perf_counter() - t0,
            }
            print(
                f"[{label}] start {row['start']} {mode}: KL {agreement['kl']:.4f}, "
                f"IOI {row[mode]['ioi']:.2f} ({row[mode]['seconds']:.0f} s)",
                flush=True,
            )
        rows.append(row)
    return {"label": label, "seed": seed, "preset": p.name, "recipe": recipe.suffix, "rows": rows}


def markdown(builds: list[dict[str, Any]], threads: int) -> str:
    s = stamp(threads)
    lines = [
        f"*Generated by `benchmarks/distill_starts.py` at commit {s['commit']}, {s['date']}, "
        f"on {s['machine']}, torch {s['torch']}, {s['threads']} torch thread(s).*",
        "",
        "| build | start (torch seed) | KL KD | KL scratch | **KL KD/scratch** "
        "| KL on copied positions KD / scratch | top-1 KD / scratch | IOI KD / scratch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in builds:
        for r in b["rows"]:
            d, sc = r["distill"], r["scratch"]
            lines.append(
                f"| {b['label']} | {r['start']} | {d['kl']:.4f} | {sc['kl']:.4f} "
                f"| **{d['kl'] / sc['kl']:.2f}×** | {d['kl_copied']:.3f} / {sc['kl_copied']:.3f} "
                f"| {d['top1']:.1%} / {sc['top1']:.1%} | {d['ioi']:.2f} / {sc['ioi']:.2f} |"
            )
    ratios = [r["distill"]["kl"] / r["scratch"]["kl"] for b in builds for r in b["rows"]]
    if ratios:
        met = sum(1 for x in ratios if x <= 0.6)
        lines += [
            "",
            f"KL KD/scratch over the {len(ratios)} starts: {min(ratios):.2f}× to "
            f"{max(ratios):.2f}×; at most 0.6× in {met} of {len(ratios)}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--home", action="append", required=True, help="PATH[=LABEL]")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--starts", type=int, default=3, help="random starts per build")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--docs", type=Path, help="write the table into this page's block")
    parser.add_argument("--block", default="starts")
    args = parser.parse_args()
    if args.starts < 1:
        raise SystemExit("error: --starts must be at least 1")
    if args.docs:
        check_block(args.docs, KIND, args.block)
    quiet_transformers()
    torch.set_num_threads(args.threads)
    builds = [
        measure_build(home, label, args.preset, args.starts)
        for home, label in map(parse_home, args.home)
    ]
    text = markdown(builds, args.threads)
    print(text)
    if args.docs:
        write_block(args.docs, KIND, args.block, text)
        print(f"wrote {args.docs} (block {args.block})")


if __name__ == "__main__":
    main()
