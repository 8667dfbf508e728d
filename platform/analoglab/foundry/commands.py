"""``analoglab foundry``: build the demo lab's models, list presets, print corpus and tasks.

Also the build step ``analoglab models build`` shares (:func:`build_preset`). Nothing here
imports torch at module level.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from analoglab.cli.common import (
    DeviceOpt,
    JsonFlag,
    err,
    handles_errors,
    out,
    print_json,
)
from analoglab.config import get_settings

foundry_app = typer.Typer(
    help="The demo foundry: corpus, task sets, and the demo lab's models.", no_args_is_help=True
)

PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="tiny, demo or large.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild from nothing.")]


def build_preset(
    preset_name: str | None, device: str | None, force: bool, seed: int | None = None
) -> None:
    from analoglab.foundry.build import build
    from analoglab.foundry.presets import get_preset
    from analoglab.progress import RichReporter

    settings = get_settings()
    preset = get_preset(preset_name or settings.default_preset)
    if seed is not None:  # another draw of the same preset: the corpus, the weights, the batches
        preset = get_preset(preset.name, seed=seed)
    reporter = RichReporter(err)
    try:
        result = build(preset, settings, device=device, reporter=reporter, force=force)
    finally:
        reporter.close()
    if result.already_built:
        err.print(f"preset {preset.name!r} is already built (use --force to rebuild)")
    else:
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items())
        err.print(f"built preset {preset.name!r} in {result.seconds:.0f}s ({stages})")


@foundry_app.command("build")
@handles_errors
def foundrybuild_preset(
    preset: PresetOpt = None,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Build another draw of the preset: its seed fixes the world's corpus, the "
            "initial weights and the batches (the preset's own seed by default)."
        ),
    ] = None,
) -> None:
    """Train the demo lab's frontier and distil its analogs (idempotent, resumable)."""
    build_preset(preset, device, force, seed)


@foundry_app.command("presets")
@handles_errors
def foundry_presets(as_json: JsonFlag = False) -> None:
    """List the presets and their sizes."""
    from dataclasses import asdict

    from analoglab.foundry.presets import PRESETS

    if as_json:
        print_json({name: asdict(p) for name, p in PRESETS.items()})
        return
    table = Table("preset", "frontier", "steps", "analogs", "description")
    for p in PRESETS.values():
        f = p.frontier
        analogs = ", ".join(f"{a.suffix} ({a.shape.layers}×{a.shape.hidden})" for a in p.analogs)
        table.add_row(
            p.name, f"{f.layers}×{f.hidden}", str(p.frontier_steps), analogs, p.description
        )
    out.print(table)


@foundry_app.command("corpus")
@handles_errors
def foundry_corpus(
    n: Annotated[int, typer.Option("-n", help="How many documents.", min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Corpus seed.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Print documents of the toy-world corpus."""
    from analoglab.foundry.corpus import generate

    docs = list(generate(n, seed))
    if as_json:
        print_json({"seed": seed, "documents": docs})
        return
    for doc in docs:
        sys.stdout.write(doc + "\n")


@foundry_app.command("tasks")
@handles_errors
def foundry_tasks(
    name: Annotated[
        str, typer.Argument(help="sentiment, sentiment_pairs, ioi, facts, truth, neutral")
    ],
    n: Annotated[int, typer.Option("-n", help="How many items.")] = 5,
    seed: Annotated[int | None, typer.Option(help="Task seed.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print items of a labelled task set (the ground truth methods are checked on)."""
    from analoglab.foundry.tasks import DEFAULT_TASK_SEED, task_set

    ts = task_set(name, n, DEFAULT_TASK_SEED if seed is None else seed)
    if as_json:
        print_json(ts.to_dict())
        return
    out.print(f"[bold]{ts.name}[/bold]: {ts.description}")
    for item in ts.to_dict()["items"]:
        out.print(f"  {item}")
