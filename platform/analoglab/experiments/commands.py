"""``analoglab spec``, ``analoglab run``, ``analoglab transfer`` and ``map_app`` (residual
maps): experiment specs, runs of one spec on one model, transfer checks from an analog to its
frontier, and the maps the mapped methods carry an analog's artifact through.

Nothing here imports torch at module level: the runner and the models load inside commands.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from analoglab.cli.common import (
    DeviceOpt,
    JsonFlag,
    err,
    handles_errors,
    out,
    print_json,
    progress_bar,
)
from analoglab.config import get_settings
from analoglab.experiments.mapping import MIN_CONTEXT
from analoglab.tracking.commands import track_result

spec_app = typer.Typer(help="Experiment specs: the JSON Schema, validation.", no_args_is_help=True)


@spec_app.command("schema")
@handles_errors
def spec_schema(
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Write it here.")] = None,
) -> None:
    """Print the JSON Schema of experiment specs."""
    from analoglab.experiments.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out_path:
        from analoglab.files import atomic_write

        atomic_write(out_path, text)
        err.print(f"wrote {out_path}")
    else:
        sys.stdout.write(text)


@spec_app.command("validate")
@handles_errors
def spec_validate(
    spec_file: Annotated[Path, typer.Argument(help="A YAML or JSON spec.")],
    as_json: JsonFlag = False,
) -> None:
    """Check a spec file; print its method, hash and whether it is self-contained."""
    from analoglab.experiments.spec import is_self_contained, load_spec, spec_hash, spec_to_dict

    spec = load_spec(spec_file)
    info = {
        "method": spec.method,
        "spec_hash": spec_hash(spec),
        "self_contained": is_self_contained(spec),
        "spec": spec_to_dict(spec),
    }
    if as_json:
        print_json(info)
    else:
        out.print(
            f"valid {spec.method} spec, hash {spec_hash(spec)[:16]}"
            + ("" if info["self_contained"] else " (uses task sets: not self-contained)")
        )


map_app = typer.Typer(
    help="Residual maps between an analog and its frontier (fitted at the lab site).",
    no_args_is_help=True,
)

# The options of fitting a map, shared by `analoglab map fit` and `analoglab lab map fit`.
MAP_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
MapDepthsOpt = Annotated[
    list[float] | None,
    typer.Option("--depth", help="A relative depth (repeatable); default 0, .25, .5, .75, 1."),
]
MapTextsOpt = Annotated[int, typer.Option(help="Corpus texts to fit on (at least 2).")]
MapCorpusOpt = Annotated[
    str,
    typer.Option(
        help="The text to fit on: 'general' (the toy world's mixed text; the default) or "
        "'neutral' (filler sentences)."
    ),
]
MapL2Opt = Annotated[
    float | None,
    typer.Option(
        help="Ridge strength (per token, in units of each standardised input's variance); "
        "default: chosen per direction by validation R²."
    ),
]
MapSeedOpt = Annotated[int, typer.Option(help="Seeds the corpus draw and the held-out split.")]
MapContextOpt = Annotated[
    int,
    typer.Option(
        "--min-context",
        help="Fit on the tokens with at least this many tokens of their text before them "
        "(a text's first positions relate the two streams least).",
    ),
]


def check_map_options(l2: float | None, texts: int, min_context: int = 0) -> None:
    """Refuse a ridge strength, a number of texts or a context the fit cannot use (before
    any load)."""
    if l2 is not None and not (l2 > 0.0 and math.isfinite(l2)):
        raise typer.BadParameter(
            f"{l2:g}: the ridge strength must be a positive number (or left out: chosen by "
            "validation R²)",
            param_hint="--l2",
        )
    if texts < 2:
        raise typer.BadParameter(f"{texts}: fit on at least 2 texts", param_hint="--texts")
    if min_context < 0:
        raise typer.BadParameter(
            f"{min_context}: the context before a token is 0 tokens or more",
            param_hint="--min-context",
        )


def print_map_fit(rmap: Any, where: str) -> None:
    """What a fitted map is: its corpus, its tokens, where it went, each depth's R²."""
    out.print(
        f"map {rmap.analog} → {rmap.frontier} on the {rmap.corpus} corpus ({rmap.texts} texts): "
        f"{rmap.tokens_fit:,} tokens fitted, {rmap.tokens_held_out:,} held out (each with at "
        f"least {rmap.min_context} tokens of its text before it); {where}"
    )
    for layer in rmap.layers:
        out.print(
            f"  depth {layer.depth:.2f}: blocks {layer.analog_block} → {layer.frontier_block}, "
            f"held-out R² {layer.r2_forward:.3f} (back {layer.r2_backward:.3f})"
        )


@map_app.command("fit")
@handles_errors
def map_fit(
    analog: Annotated[str, typer.Option("--analog", "-a", help="The analog (name or folder).")],
    frontier: Annotated[
        str, typer.Option("--frontier", "-f", help="The frontier (its id here, or a folder).")
    ],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the map (.npz).")],
    depths: MapDepthsOpt = None,
    texts: MapTextsOpt = 256,
    corpus: MapCorpusOpt = "general",
    l2: MapL2Opt = None,
    seed: MapSeedOpt = 0,
    min_context: MapContextOpt = MIN_CONTEXT,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Fit the map between an analog's and a frontier's residual streams on a corpus.

    Run it at the lab site: it needs the frontier's weights, and the map stays there unless
    the lab releases it."""
    from analoglab.experiments.mapping import fit_map, map_corpus
    from analoglab.models.loading import load_any

    check_map_options(l2, texts, min_context)
    texts_to_fit = map_corpus(corpus, texts, seed)  # an unknown corpus fails before any load
    settings = get_settings()
    a = load_any(analog, device=device, settings=settings)
    f = load_any(frontier, device=device, settings=settings)
    rmap = fit_map(
        a,
        f,
        texts_to_fit,
        depths or MAP_DEPTHS,
        l2=l2,
        seed=seed,
        corpus=corpus,
        min_context=min_context,
    )
    rmap.save(out_path)
    if as_json:
        print_json(rmap.summary() | {"path": str(out_path)})
        return
    print_map_fit(rmap, f"wrote {out_path}")


@handles_errors
def run_command(
    spec_file: Annotated[Path, typer.Argument(help="A YAML or JSON experiment spec.")],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Analog name, frontier id on a lab site here, or a model folder."
        ),
    ],
    reference: Annotated[
        str | None, typer.Option(help="The frontier, for the fidelity method.")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the result JSON.")
    ] = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
    track: Annotated[
        bool, typer.Option("--track", help="Log the run to MLflow (see `analoglab tracking`).")
    ] = False,
    residual_map: Annotated[
        Path | None,
        typer.Option(
            "--map", help="For mapped_steering / mapped_probe: the residual map (.npz) to use."
        ),
    ] = None,
) -> None:
    """Run an experiment spec on one model and print (or save) its result."""
    from analoglab.experiments.mapping import ResidualMap
    from analoglab.experiments.runner import run
    from analoglab.experiments.spec import load_spec
    from analoglab.models.loading import load_any

    spec = load_spec(spec_file)
    settings = get_settings()
    rmap = ResidualMap.load(residual_map) if residual_map else None
    loaded = load_any(model, device=device, settings=settings)
    ref = load_any(reference, device=device, settings=settings) if reference else None
    progress, update = progress_bar(f"{spec.method} on {loaded.name}")
    with progress:
        result = run(spec, loaded, reference=ref, residual_map=rmap, progress=update)
    if out_path:
        result.save(out_path)
        err.print(f"wrote {out_path} ({result.size_bytes:,} bytes)")
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    elif not out_path:
        _print_result(result)
    if track:
        track_result(spec, result, loaded.name)


def _print_result(result: Any) -> None:
    out.print(
        f"[bold]{result.method}[/bold] on {result.model.name} "
        f"({result.timings.get('total_seconds', 0):.1f}s, {result.size_bytes:,} bytes)"
    )
    boot = result.bootstrap
    for key, value in result.metrics.items():
        interval = boot.interval(key) if boot is not None else None
        shown = "" if interval is None else f"  95% [{interval[0]:.4f}, {interval[1]:.4f}]"
        out.print(f"  {key:<24} {value:.4f}{shown}")
    if boot is not None:
        items = ", ".join(f"{k} {n}" for k, n in boot.items.items())
        out.print(f"  (intervals: {boot.resamples} bootstrap resamples over {items})")
    artifact = result.spec.get("artifact") or {}
    if artifact.get("source"):
        out.print(f"  artifact from {escape(str(artifact['source']))}")
    for name, prof in result.profiles.items():
        values = " ".join(
            f"{d:.2f}:{v:+.3f}" for d, v in zip(prof.depths, prof.values, strict=True)
        )
        out.print(f"  profile {name:<16} {values}")
    for sample in result.samples:
        out.print(f"  sample: {sample!r}")


@handles_errors
def transfer_command(
    spec_file: Annotated[Path, typer.Option("--spec", "-s", help="A YAML or JSON spec.")],
    analog: Annotated[str, typer.Option("--analog", "-a", help="The analog (name or folder).")],
    frontier: Annotated[
        str,
        typer.Option(
            "--frontier",
            "-f",
            help="The frontier: its id on a lab site of this machine, or a folder.",
        ),
    ],
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
    via_queue: Annotated[
        bool,
        typer.Option(
            "--via-queue",
            help="Send the frontier run through the gated queue and log the check to MLflow "
            "(analoglab.transfer_check); rerun to resume waiting.",
        ),
    ] = False,
    url: Annotated[
        str | None, typer.Option("--url", help="With --via-queue: the queue's URL.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="With --via-queue: the queue token (the process list shows it: prefer "
            "--token-file or $ANALOGLAB_QUEUE_TOKEN).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="With --via-queue: read the queue token from this file ('-': stdin).",
        ),
    ] = None,
    residual_map: Annotated[
        Path | None,
        typer.Option(
            "--map",
            help="For mapped_steering / mapped_probe run here: the residual map (.npz) the "
            "frontier run carries the artifact through (the analog applies it as it is).",
        ),
    ] = None,
) -> None:
    """Run a spec on an analog and on its frontier, here, and report how well it transfers.

    With --via-queue the frontier is not run here: the spec goes to the frontier's lab through
    the gated queue, and both runs and the report are logged to MLflow."""
    from analoglab.experiments.runner import run
    from analoglab.experiments.spec import load_spec
    from analoglab.experiments.transfer import compare
    from analoglab.models.loading import load_any

    spec = load_spec(spec_file)
    settings = get_settings()
    if via_queue:
        from analoglab.config import read_secret
        from analoglab.loop import transfer_check

        if token is None and token_file is not None:
            token = read_secret(token_file, what="the queue token")

        report = transfer_check(
            spec,
            analog=analog,
            frontier=frontier,
            queue_url=url,
            token=token,
            settings=settings,
            device=device,
            show=None if as_json else (lambda line: err.print(escape(line))),
        )
        if as_json:
            print_json({"report": report.model_dump(mode="json")})
            return
    else:
        from analoglab.experiments.mapping import ResidualMap

        rmap = ResidualMap.load(residual_map) if residual_map else None
        results = []
        for name, with_map in ((analog, None), (frontier, rmap)):
            loaded = load_any(name, device=device, settings=settings)
            progress, update = progress_bar(f"{spec.method} on {loaded.name}")
            with progress:
                results.append(run(spec, loaded, residual_map=with_map, progress=update))
            del loaded
        report = compare(results[0], results[1])
        if as_json:
            print_json(
                {
                    "report": report.model_dump(mode="json"),
                    "analog_result": results[0].model_dump(mode="json"),
                    "frontier_result": results[1].model_dump(mode="json"),
                }
            )
            return
    print_report(report)


def print_report(report: Any) -> None:
    """A transfer report as the terminal shows it: the score with its 95% interval and
    verdict, a table of the parts with theirs, and the notes."""
    colour = {"transfers": "green", "partial": "yellow", "inconclusive": "magenta"}.get(
        report.verdict, "red"
    )
    interval = report.score_interval
    out.print(
        f"[bold]{report.method}[/bold]: {report.analog.name} → {report.frontier.name}: "
        f"transfer score [bold]{report.score:.3f}[/bold]"
        + ("" if interval is None else f", 95% interval {interval}")
        + f" ([{colour}]{report.verdict.replace('_', ' ')}[/{colour}])"
    )
    table = Table("part", "value", "95% interval", "analog", "frontier", "detail")
    for part in report.parts:
        table.add_row(
            part.name,
            f"{part.value:.3f}",
            "" if part.interval is None else str(part.interval),
            "" if part.analog is None else f"{part.analog:.3f}",
            "" if part.frontier is None else f"{part.frontier:.3f}",
            part.detail,
        )
    out.print(table)
    for note in report.notes:
        out.print(f"note: {escape(note)}")
    if report.resamples:
        items = ", ".join(f"{k} {n}" for k, n in report.items.items())
        out.print(f"intervals: {report.resamples} paired bootstrap resamples over {items}")
