"""The ``analoglab`` command: doctor, config, models, foundry, spec, run, transfer, activations,
queue, lab, tracking.

Every command that lists or shows something takes ``--json`` (stable keys, for scripts).
Errors of ours are printed as one line on stderr with a non-zero exit, never a traceback.
Heavy imports (torch, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from analoglab import __version__
from analoglab.config import explain, get_settings
from analoglab.errors import AnalogLabError

app = typer.Typer(
    name="analoglab",
    help="Analog Lab: study analog models and check what transfers to their frontier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)
models_app = typer.Typer(
    help="The model catalog: list, show, build, pack, install.", no_args_is_help=True
)
foundry_app = typer.Typer(
    help="The demo foundry: corpus, task sets, and the demo lab's models.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(foundry_app, name="foundry")

# Piped output gets 120 columns rather than rich's 80, so tables stay readable in logs.
_WIDTH = None if sys.stdout.isatty() else 120
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

F = TypeVar("F", bound=Callable[..., Any])
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def handles_errors(func: F) -> F:
    """Turn our errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AnalogLabError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted; run the command again to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"analoglab {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Analog Lab: study analog models and check what transfers to their frontier."""


# -- doctor ------------------------------------------------------------------------------------


@app.command()
@handles_errors
def doctor(as_json: JsonFlag = False) -> None:
    """Check this machine: python, torch and its device, GPU, data folder, services."""
    from analoglab.doctor import failed, run_checks

    checks = run_checks(get_settings())
    if as_json:
        print_json({"ok": not failed(checks), "checks": [c.to_dict() for c in checks]})
    else:
        marks = {
            "ok": "[green]ok[/green]  ",
            "warn": "[yellow]warn[/yellow]",
            "fail": "[red]FAIL[/red]",
        }
        for c in checks:
            out.print(f"{marks[c.status]} {c.name:<13} {c.detail}")
    if failed(checks):
        raise typer.Exit(1)


# -- config ------------------------------------------------------------------------------------


@config_app.command("show")
@handles_errors
def config_show(as_json: JsonFlag = False) -> None:
    """Print every setting, its value and where the value came from."""
    rows = explain(get_settings())
    if as_json:
        print_json(
            {
                r.name: {"value": r.value, "source": r.source, "description": r.description}
                for r in rows
            }
        )
        return
    table = Table("setting", "value", "source", title="Analog Lab settings")
    for r in rows:
        table.add_row(r.name, "—" if r.value is None else str(r.value), r.source)
    out.print(table)


# -- models ------------------------------------------------------------------------------------


def _models_json(cat: Any) -> dict[str, Any]:
    return {
        "labs": [
            {"id": lab.id, "name": lab.name, "frontiers": [f.id for f in lab.frontiers]}
            for lab in cat.labs
        ],
        "frontiers": [
            {
                "id": f.id,
                "lab": f.lab,
                "parameters": f.parameters,
                "capabilities": f.capabilities,
                "analogs": [a.name for a in cat.analogs_of(f.id)],
            }
            for f in cat.frontiers()
        ],
        "analogs": [
            {
                "name": a.name,
                "lab": a.card.lab,
                "frontier": a.card.frontier,
                "parameters": a.card.parameters,
                "parameter_ratio": a.card.parameter_ratio,
                "kl": a.card.fidelity.kl if a.card.fidelity else None,
                "top1_agreement": a.card.fidelity.top1_agreement if a.card.fidelity else None,
                "path": str(a.path),
            }
            for a in cat.analogs
        ],
        "problems": [{"path": str(p.path), "reason": p.reason} for p in cat.problems],
    }


def print_catalog(cat: Any) -> None:
    """One table per lab: its frontier models, each followed by its analogs."""
    if not cat.analogs and not cat.frontiers():
        out.print("No models yet: `analoglab models build` makes the demo lab's models.")
    task_names: list[str] = []
    for f in cat.frontiers():
        task_names += [t for t in f.capabilities if t not in task_names]
    known = {f.id for f in cat.frontiers()}
    groups = [(lab.name, lab.frontiers) for lab in cat.labs]
    orphans = [a for a in cat.analogs if a.card.frontier not in known]
    for title, frontiers in groups + (
        [("analogs without a frontier in the catalog", [])] if orphans else []
    ):
        table = Table(title=title, title_justify="left")
        table.add_column("model", no_wrap=True)
        for col in ("params", "ratio", "KL", "top-1", *task_names):
            table.add_column(col, justify="right")
        for f in frontiers:
            table.add_row(
                f"{f.id} (frontier)",
                _short(f.parameters),
                "",
                "",
                "",
                *[_pct(f.capabilities.get(t)) for t in task_names],
            )
            for a in cat.analogs_of(f.id):
                table.add_row(*_analog_row(a, task_names))
        for a in orphans if not frontiers else []:
            table.add_row(*_analog_row(a, task_names))
        out.print(table)
    if cat.analogs or cat.frontiers():
        out.print("KL: next-token KL(frontier ‖ analog), nats/token; task columns: accuracy.")
    for p in cat.problems:
        err.print(f"[yellow]warn:[/yellow] {p.path}: {p.reason}")


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _analog_row(a: Any, task_names: list[str]) -> list[str]:
    fid = a.card.fidelity
    tasks = [_pct(fid.tasks[t].analog) if fid and t in fid.tasks else "" for t in task_names]
    return [
        f"└ {a.name}",
        _short(a.card.parameters),
        f"{a.card.parameter_ratio:.1%}",
        f"{fid.kl:.3f}" if fid else "",
        f"{fid.top1_agreement:.0%}" if fid else "",
        *tasks,
    ]


@models_app.command("list")
@handles_errors
def models_list(as_json: JsonFlag = False) -> None:
    """List the labs' frontier models and their analogs, with fidelity figures."""
    from analoglab.models.catalog import Catalog

    cat = Catalog.load(get_settings())
    if as_json:
        print_json(_models_json(cat))
    else:
        print_catalog(cat)


@models_app.command("show")
@handles_errors
def models_show(
    name: Annotated[str, typer.Argument(help="An analog or frontier model name.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one model: an analog's card, or a frontier's metadata and policy."""
    from analoglab.models.card import render_readme
    from analoglab.models.catalog import AnalogEntry, Catalog

    found = Catalog.load(get_settings()).resolve(name)
    if isinstance(found, AnalogEntry):
        if as_json:
            print_json(
                {
                    "kind": "analog",
                    "path": str(found.path),
                    "card": found.card.model_dump(mode="json"),
                }
            )
        else:
            out.print(Markdown(render_readme(found.card)))
            out.print(f"folder: {found.path}")
        return
    if as_json:
        print_json({"kind": "frontier", "frontier": found.model_dump(mode="json")})
        return
    out.print(f"[bold]{found.id}[/bold] — frontier of {found.lab}: {found.description}")
    out.print(
        f"parameters {found.parameters:,}; trained {found.trained}; architecture "
        f"{found.architecture.model_type}, {found.architecture.layers} layers"
    )
    out.print("capabilities: " + ", ".join(f"{k} {v:.3f}" for k, v in found.capabilities.items()))
    out.print("policy: " + json.dumps(found.policy.model_dump()))


PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="tiny, demo or large.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild from nothing.")]


def _build(preset_name: str | None, device: str | None, force: bool) -> None:
    from analoglab.foundry.build import build
    from analoglab.foundry.presets import get_preset
    from analoglab.progress import RichReporter

    settings = get_settings()
    preset = get_preset(preset_name or settings.default_preset)
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


@models_app.command("build")
@handles_errors
def models_build(
    preset: PresetOpt = None, device: DeviceOpt = None, force: ForceOpt = False
) -> None:
    """Build the demo lab's frontier and analogs if missing, then list the catalog."""
    from analoglab.models.catalog import Catalog

    _build(preset, device, force)
    print_catalog(Catalog.load(get_settings()))


@models_app.command("pack")
@handles_errors
def models_pack(
    name: Annotated[str, typer.Argument(help="The analog to pack.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Archive path or folder.")
    ] = None,
) -> None:
    """Write a release bundle of an analog: weights, tokenizer, card, sha256 manifest."""
    from analoglab.models.bundle import pack, sha256_file

    path = pack(name, out_path, get_settings())
    out.print(f"packed {name} → {path}")
    out.print(f"sha256 {sha256_file(path)}")


@models_app.command("install")
@handles_errors
def models_install(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `models pack`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an installed analog.")] = False,
) -> None:
    """Verify every checksum of a bundle, then install it into the model store."""
    from rich.progress import Progress

    from analoglab.errors import BundleError
    from analoglab.models.bundle import install

    if not bundle.is_file():
        raise BundleError(f"no bundle file at {bundle}")
    total = bundle.stat().st_size
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"verifying {bundle.name}", total=total)
        path = install(
            bundle, get_settings(), force=force, progress=lambda n: progress.advance(task, n)
        )
    out.print(f"installed {path.name} → {path}")


# -- foundry -----------------------------------------------------------------------------------


@foundry_app.command("build")
@handles_errors
def foundry_build(
    preset: PresetOpt = None, device: DeviceOpt = None, force: ForceOpt = False
) -> None:
    """Train the demo lab's frontier and distil its analogs (idempotent, resumable)."""
    _build(preset, device, force)


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


# -- experiments -------------------------------------------------------------------------------

spec_app = typer.Typer(help="Experiment specs: the JSON Schema, validation.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@spec_app.command("schema")
@handles_errors
def spec_schema(
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Write it here.")] = None,
) -> None:
    """Print the JSON Schema of experiment specs."""
    from analoglab.experiments.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out_path:
        out_path.write_text(text)
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


def _progress_bar(description: str) -> tuple[Any, Callable[[int, int], None]]:
    from rich.progress import Progress

    progress = Progress(console=err, transient=True)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


@app.command("run")
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
) -> None:
    """Run an experiment spec on one model and print (or save) its result."""
    from analoglab.experiments.runner import run
    from analoglab.experiments.spec import load_spec
    from analoglab.models.loading import load_any

    spec = load_spec(spec_file)
    settings = get_settings()
    loaded = load_any(model, device=device, settings=settings)
    ref = load_any(reference, device=device, settings=settings) if reference else None
    progress, update = _progress_bar(f"{spec.method} on {loaded.name}")
    with progress:
        result = run(spec, loaded, reference=ref, progress=update)
    if out_path:
        result.save(out_path)
        err.print(f"wrote {out_path} ({result.size_bytes:,} bytes)")
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    elif not out_path:
        _print_result(result)
    if track:
        _track_result(spec, result, loaded.name)


def _print_result(result: Any) -> None:
    out.print(
        f"[bold]{result.method}[/bold] on {result.model.name} "
        f"({result.timings.get('total_seconds', 0):.1f}s, {result.size_bytes:,} bytes)"
    )
    for key, value in result.metrics.items():
        out.print(f"  {key:<24} {value:.4f}")
    for name, prof in result.profiles.items():
        values = " ".join(
            f"{d:.2f}:{v:+.3f}" for d, v in zip(prof.depths, prof.values, strict=True)
        )
        out.print(f"  profile {name:<16} {values}")
    for sample in result.samples:
        out.print(f"  sample: {sample!r}")


@app.command("transfer")
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
        str | None, typer.Option("--token", help="With --via-queue: the queue token.")
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
        from analoglab.loop import transfer_check

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
        results = []
        for name in (analog, frontier):
            loaded = load_any(name, device=device, settings=settings)
            progress, update = _progress_bar(f"{spec.method} on {loaded.name}")
            with progress:
                results.append(run(spec, loaded, progress=update))
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
    colour = {"transfers": "green", "partial": "yellow"}.get(report.verdict, "red")
    out.print(
        f"[bold]{report.method}[/bold]: {report.analog.name} → {report.frontier.name}: "
        f"transfer score [bold]{report.score:.3f}[/bold] "
        f"([{colour}]{report.verdict.replace('_', ' ')}[/{colour}])"
    )
    table = Table("part", "value", "analog", "frontier", "detail")
    for part in report.parts:
        table.add_row(
            part.name,
            f"{part.value:.3f}",
            "" if part.analog is None else f"{part.analog:.3f}",
            "" if part.frontier is None else f"{part.frontier:.3f}",
            part.detail,
        )
    out.print(table)
    for note in report.notes:
        out.print(f"note: {note}")


# -- activations -------------------------------------------------------------------------------

activations_app = typer.Typer(
    help="Activation datasets: extract to zarr stores, inspect them, list them.",
    no_args_is_help=True,
)
app.add_typer(activations_app, name="activations")


@activations_app.command("extract")
@handles_errors
def activations_extract(
    model: Annotated[
        str, typer.Argument(help="Analog name, frontier id on a lab site here, or a model folder.")
    ],
    store: Annotated[
        str, typer.Option("--store", "-o", help="Path; a bare name goes under <home>/activations.")
    ],
    task_set: Annotated[
        str | None, typer.Option("--task-set", "-t", help="A foundry task set: sentiment, ioi, ...")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Items of the task set.", min=1)] = 200,
    seed: Annotated[int | None, typer.Option(help="Task-set seed.")] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", "-f", help="Text file (a prompt a line) or .jsonl.")
    ] = None,
    hooks: Annotated[
        str | None, typer.Option(help="Hook names, comma-separated: blocks.0.hook_resid_post,...")
    ] = None,
    depths: Annotated[
        str | None, typer.Option(help="Relative depths of --site, comma-separated: 0,0.5,1.")
    ] = None,
    site: Annotated[str, typer.Option(help="The site --depths (or no hooks) address.")] = (
        "hook_resid_post"
    ),
    positions: Annotated[str, typer.Option(help="all (every token), last or mean.")] = "all",
    dtype: Annotated[str, typer.Option(help="float16 or float32.")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.", min=1)] = 16,
    max_tokens: Annotated[int, typer.Option(help="Tokens kept per prompt (its last).", min=1)] = (
        128
    ),
    compression: Annotated[str, typer.Option(help="none or zstd.")] = "none",
    overwrite: Annotated[bool, typer.Option(help="Replace a store of other inputs.")] = False,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Extract activations into a zarr store (rerun the same command to resume)."""
    from analoglab.activations.commands import parse_hooks, print_summary, source_from_options
    from analoglab.activations.extraction import extract
    from analoglab.progress import RichReporter

    source = source_from_options(task_set, n, seed, prompts_file)
    reporter = RichReporter(err)
    try:
        summary = extract(
            model,
            source,
            store=store,
            hooks=parse_hooks(hooks, depths),
            site=site,
            positions=positions,  # type: ignore[arg-type]  # checked by extract
            dtype=dtype,  # type: ignore[arg-type]
            batch_size=batch_size,
            max_tokens=max_tokens,
            compression=compression,  # type: ignore[arg-type]
            device=device,
            progress=reporter,
            overwrite=overwrite,
        )
    finally:
        reporter.close()
    if as_json:
        print_json(summary.to_dict())
    else:
        print_summary(out, summary)


@activations_app.command("info")
@handles_errors
def activations_info(
    store: Annotated[str, typer.Argument(help="A store path or a name under <home>/activations.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a store: its model, source, hooks, rows, arrays and state."""
    from analoglab.activations.commands import print_info
    from analoglab.activations.store import describe, resolve_store

    info = describe(resolve_store(store).absolute())
    if as_json:
        print_json(info)
    else:
        print_info(out, info)


@activations_app.command("ls")
@handles_errors
def activations_ls(
    folder: Annotated[
        Path | None, typer.Argument(help="Where to look (default <home>/activations).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the activation stores in a folder."""
    from analoglab.activations.commands import print_list
    from analoglab.activations.store import default_folder, list_stores

    where = folder or default_folder(get_settings())
    rows = list_stores(where)
    if as_json:
        print_json({"folder": str(where), "stores": rows})
    else:
        print_list(out, where, rows)


# -- queue -------------------------------------------------------------------------------------

queue_app = typer.Typer(help="The gated queue service.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


@queue_app.command("serve")
@handles_errors
def queue_serve(
    tokens: Annotated[
        Path | None, typer.Option("--tokens", help="Tokens TOML (hashed tokens and roles).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="SQLAlchemy URL; default sqlite:///<home>/queue.db."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Interface; default: JUPYTERHUB_SERVICE_URL's, else 127.0.0.1."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port; default: JUPYTERHUB_SERVICE_URL's, else 8765.")
    ] = None,
    root_path: Annotated[
        str | None,
        typer.Option(
            "--root-path",
            help="URL prefix a proxy forwards unchanged; default: JUPYTERHUB_SERVICE_PREFIX.",
        ),
    ] = None,
    hub_auth: Annotated[
        bool | None,
        typer.Option(
            "--hub-auth/--no-hub-auth",
            help="Accept JupyterHub tokens too; default: the queue_hub_auth setting, else on "
            "when JUPYTERHUB_API_TOKEN is set.",
        ),
    ] = None,
) -> None:
    """Run the queue service (migrates its database first).

    Static tokens from --tokens, and JupyterHub tokens when run as a hub service; the review
    pages' CSRF key is the queue_page_secret setting (ANALOGLAB_QUEUE_PAGE_SECRET)."""
    import uvicorn

    from analoglab.queue.hubauth import hub_auth_enabled, service_binding
    from analoglab.queue.service import create_app

    settings = get_settings() if hub_auth is None else get_settings(queue_hub_auth=hub_auth)
    if tokens is not None and not tokens.is_file():
        raise typer.BadParameter(f"no tokens file at {tokens}", param_hint="--tokens")
    if tokens is None and not hub_auth_enabled(settings):
        raise typer.BadParameter(
            "give a tokens file, or run as a JupyterHub service (JUPYTERHUB_API_TOKEN, "
            "or --hub-auth)",
            param_hint="--tokens",
        )
    application = create_app(database_url, settings, tokens)
    host, port, application.root_path = service_binding(host, port, root_path)
    uvicorn.run(application, host=host, port=port, log_level="info")


@queue_app.command("hash-token")
@handles_errors
def queue_hash_token(token: Annotated[str, typer.Argument(help="A token to hash.")]) -> None:
    """Print the sha256 of a token, as the tokens file stores it."""
    from analoglab.queue.auth import hash_token

    out.print(hash_token(token))


# The queue's client commands talk to a running service with QueueClient.

audit_app = typer.Typer(help="The queue's audit log (admin).", no_args_is_help=True)
queue_app.add_typer(audit_app, name="audit")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The queue service's URL; default: the queue_url setting."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Queue token; default: $JUPYTERHUB_API_TOKEN, then $ANALOGLAB_QUEUE_TOKEN.",
    ),
]
JobIdArg = Annotated[int, typer.Argument(help="The job's id.")]


def _queue_client(url: str | None, token: str | None) -> Any:
    from analoglab.errors import ConfigError
    from analoglab.queue.client import QueueClient

    url = url or get_settings().queue_url
    if not url:
        raise ConfigError(
            "no queue URL: pass --url or set queue_url (ANALOGLAB_QUEUE_URL or the config file)"
        )
    return QueueClient(url, token)


def _queue_call(call: Callable[[], Any]) -> Any:
    """Run a client call; a refusal becomes a one-line QueueError (handles_errors prints it)."""
    from analoglab.queue.errors import QueueError

    try:
        return call()
    except QueueError as exc:
        message = " ".join(str(exc).split())
        findings = exc.detail.get("findings") if isinstance(exc.detail, dict) else None
        if findings and all(isinstance(f, dict) for f in findings):
            codes = ", ".join(str(f.get("code")) for f in findings)
            message += f" [{codes}]"
        raise QueueError(message, status=exc.status, detail=exc.detail) from None


def _print_job_line(job: dict[str, Any]) -> None:
    out.print(
        f"job {job['id']}: {job['state']} ({escape(str(job['spec'].get('method', '?')))} "
        f"on {escape(job['frontier'])}, lab {escape(job['lab'])})"
    )


def _print_job(job: dict[str, Any]) -> None:
    spec = job["spec"]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", job["id"]),
        ("state", job["state"]),
        ("frontier", job["frontier"]),
        ("lab", job["lab"]),
        ("submitter", job["submitter"]),
        ("method", spec.get("method", "?")),
        ("description", spec.get("description") or ""),
        ("spec hash", job["spec_hash"]),
        ("analog result", job.get("analog_result_ref") or ""),
        ("submitted", job["created_at"]),
        ("updated", job["updated_at"]),
        ("attempts", job["attempts"]),
    ]
    if job.get("release_decision"):
        rows.append(("release", f"{job['release_decision']}: {job.get('release_reason') or ''}"))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    out.print(table)
    for r in job.get("reviews", []):
        out.print(
            f"review by {escape(r['reviewer'])}: {escape(r['decision'])}"
            + (f" ({escape(r['comment'])})" if r.get("comment") else "")
        )


@queue_app.command("submit")
@handles_errors
def queue_submit(
    spec_file: Annotated[Path, typer.Argument(help="A YAML or JSON spec.")],
    frontier: Annotated[str, typer.Option("--frontier", help="The target frontier's id.")],
    analog_result: Annotated[
        str | None,
        typer.Option("--analog-result", help="The analog run this checks (an MLflow run ref)."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="A retry with the same key returns the same job."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a spec to a frontier's gated queue; it is vetted at once."""
    from analoglab.experiments.spec import load_spec, spec_to_dict

    spec = spec_to_dict(load_spec(spec_file))
    with _queue_client(url, token) as client:
        job = _queue_call(
            lambda: client.submit(
                spec,
                frontier,
                idempotency_key=idempotency_key,
                analog_result_ref=analog_result,
            )
        )
    if as_json:
        print_json(job)
    else:
        _print_job_line(job)


@queue_app.command("list")
@handles_errors
def queue_list(
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    lab: Annotated[
        str | None,
        typer.Option("--lab", help="A lab's queue (reviewers, admins) instead of your own jobs."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="At most this many.")] = 50,
    cursor: Annotated[
        int | None,
        typer.Option("--cursor", help="Start after this job (the next page, as printed)."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Your jobs (or a lab's queue with --lab), newest first, a page at a time."""
    with _queue_client(url, token) as client:
        if lab is not None:
            page = _queue_call(
                lambda: client.lab_queue(lab, state=state, limit=limit, cursor=cursor)
            )
        else:
            page = _queue_call(lambda: client.list(state=state, limit=limit, cursor=cursor))
    if as_json:
        print_json(page)
        return
    if not page["jobs"]:
        out.print("no jobs")
        return
    table = Table("id", "state", "method", "frontier", "submitter", "submitted")
    for job in page["jobs"]:
        table.add_row(
            str(job["id"]),
            job["state"],
            escape(str(job["spec"].get("method", "?"))),
            escape(job["frontier"]),
            escape(job["submitter"]),
            str(job["created_at"])[:19],
        )
    out.print(table)
    if page.get("next_cursor") is not None:
        parts = ["analoglab", "queue", "list"]
        for flag, value in (("--state", state), ("--lab", lab), ("--url", url)):
            if value is not None:
                parts += [flag, value]
        if limit != 50:
            parts += ["--limit", str(limit)]
        parts += ["--cursor", str(page["next_cursor"])]
        out.print(f"more: {escape(shlex.join(parts))}", soft_wrap=True)


@queue_app.command("show")
@handles_errors
def queue_show(
    job_id: JobIdArg,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """One job: its state, spec and reviews."""
    with _queue_client(url, token) as client:
        job = _queue_call(lambda: client.get(job_id))
    if as_json:
        print_json(job)
    else:
        _print_job(job)


@queue_app.command("review")
@handles_errors
def queue_review(
    job_id: JobIdArg,
    comment: Annotated[str, typer.Option("--comment", help="Why (the submitter reads it).")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve the job.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the job.")] = False,
    request_changes: Annotated[
        bool, typer.Option("--request-changes", help="Ask the submitter for another spec.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Decide on a job awaiting review (reviewers of its lab)."""
    chosen = [
        d
        for d, on in (
            ("approve", approve),
            ("reject", reject),
            ("request_changes", request_changes),
        )
        if on
    ]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --approve, --reject, --request-changes")
    with _queue_client(url, token) as client:
        job = _queue_call(lambda: client.review(job_id, chosen[0], comment))
    if as_json:
        print_json(job)
    else:
        _print_job_line(job)


@queue_app.command("release")
@handles_errors
def queue_release(
    job_id: JobIdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")],
    release: Annotated[bool, typer.Option("--release", help="Release the result.")] = False,
    withhold: Annotated[bool, typer.Option("--withhold", help="Withhold the result.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Release or withhold a posted result (reviewers of the job's lab)."""
    if release == withhold:
        raise typer.BadParameter("give exactly one of --release, --withhold")
    decision = "release" if release else "withhold"
    with _queue_client(url, token) as client:
        job = _queue_call(lambda: client.release(job_id, decision, reason))
    if as_json:
        print_json(job)
    else:
        _print_job_line(job)


@audit_app.command("verify")
@handles_errors
def queue_audit_verify(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Walk the audit log's hash chain (admin); exit 1 when it is broken."""
    with _queue_client(url, token) as client:
        check = _queue_call(client.verify_audit)
    if as_json:
        print_json(check)
    elif check["ok"]:
        out.print("audit log ok: the hash chain holds")
    else:
        err.print(f"[red]audit log broken[/red] at entry {check['first_broken_seq']}")
    if not check["ok"]:
        raise typer.Exit(1)


# -- lab site ----------------------------------------------------------------------------------

lab_app = typer.Typer(
    help="A lab site: the agent that runs approved jobs on the lab's frontier models.",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")


@lab_app.command("agent")
@handles_errors
def lab_agent(
    lab: Annotated[
        str | None, typer.Option("--lab", help="The lab; default: `lab` in the config.")
    ] = None,
    hub: Annotated[
        str | None, typer.Option("--hub", help="The queue's URL; default: `hub` in the config.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the agent's token (mode 600)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="The site's lab.toml; default: <lab_sites>/<lab>/lab.toml."
        ),
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="Exit after this many jobs.")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", help="Exit after this many idle seconds.")
    ] = None,
) -> None:
    """Run the lab agent: claim approved jobs, run them, check and post their results."""
    import logging
    import os
    import signal

    from rich.logging import RichHandler

    from analoglab.lab.agent import Agent
    from analoglab.lab.config import load_lab_config
    from analoglab.lab.executors import make_executor
    from analoglab.queue.client import QueueClient

    if config is None:
        if lab is None:
            raise typer.BadParameter("give --config or --lab", param_hint="--config")
        config = get_settings().lab_sites_path / lab / "lab.toml"
    cfg = load_lab_config(config)
    if lab is not None and lab != cfg.lab:
        raise AnalogLabError(f"{config} is the site of lab {cfg.lab!r}, not {lab!r}")
    url = hub or cfg.hub
    if not url:
        raise typer.BadParameter(
            "no hub URL: give --hub or set `hub` in lab.toml", param_hint="--hub"
        )
    token_path = token_file or cfg.token_file
    if token_path is None:
        raise typer.BadParameter("give --token-file (or `token_file` in lab.toml)")
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise AnalogLabError(f"cannot read the token file {token_path}: {exc.strerror}") from exc
    if not token:
        raise AnalogLabError(f"the token file {token_path} is empty")
    if token_path.stat().st_mode & 0o077:
        err.print(f"[yellow]warning:[/yellow] {token_path} is readable by others; chmod 600 it")
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, markup=False)],
    )
    executor = make_executor(cfg)
    client = QueueClient(url, token)
    agent = Agent(cfg, client, executor, withheld_dir=config.parent / "withheld")
    def on_signal(*_: object) -> None:
        if agent.stopping:  # the second signal: do not wait for the hub any longer
            err.print("stopping now; jobs still held return to the queue when their leases end")
            os._exit(1)
        err.print("stopping: giving back the current job (signal again to quit at once)")
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    err.print(f"lab agent of {cfg.lab} on {url}: {len(cfg.models)} frontier(s), "
              f"{cfg.executor.kind} executor")
    try:
        stats = agent.run(max_jobs=max_jobs, idle_exit=idle_exit)
    finally:
        executor.close()
        client.close()
    err.print(
        f"stopped: {stats.claimed} claimed, {stats.posted} posted, {stats.withheld} withheld, "
        f"{stats.failed} failed, {stats.given_back} given back, {stats.lost} lost"
    )


# -- tracking ----------------------------------------------------------------------------------

tracking_app = typer.Typer(
    help="Shared results in MLflow: analog cards, the tracking server.", no_args_is_help=True
)
app.add_typer(tracking_app, name="tracking")


def _track_result(spec: Any, result: Any, model: str) -> None:
    """Log a local run to MLflow and say where it went (on stderr: stdout may be JSON)."""
    from analoglab.tracking import TrackingStore, log_result

    settings = get_settings()
    run_id = log_result(spec, result, model=model, settings=settings)
    store = TrackingStore.open(settings)
    url = store.run_url(store.experiment_id(), run_id)
    err.print(f"logged to MLflow: run {run_id} ({url or store.uri})")


@tracking_app.command("register-analogs")
@handles_errors
def tracking_register_analogs(as_json: JsonFlag = False) -> None:
    """Log each analog card and register it in the MLflow model registry (idempotent)."""
    from analoglab.tracking import TrackingStore, register_analogs

    settings = get_settings()
    done = register_analogs(settings=settings)
    if as_json:
        print_json(
            {
                "tracking_uri": TrackingStore.open(settings).uri,
                "analogs": [r.to_dict() for r in done],
            }
        )
        return
    if not done:
        out.print("no analogs in the model store (`analoglab models build` makes the demo ones)")
    for r in done:
        out.print(
            f"{r.name:<24} version {r.version:<4} {r.status:<12} analog of {r.frontier} ({r.lab})"
        )


@tracking_app.command(
    "server", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@handles_errors
def tracking_server(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 1,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(help="Database; default: sqlite:///<home>/mlflow/mlflow.db."),
    ] = None,
    artifacts_destination: Annotated[
        str | None, typer.Option(help="Served artifacts; default: <home>/mlflow/artifacts.")
    ] = None,
    print_command: Annotated[
        bool, typer.Option("--print-command", help="Print the mlflow command; do not run it.")
    ] = False,
) -> None:
    """Run `mlflow server` on the data folder's SQLite store with served artifacts.

    Further options go to `mlflow server` as they are (e.g. --allowed-hosts)."""
    import os

    from analoglab.tracking.server import ServerOptions, server_command, server_url
    from analoglab.tracking.store import artifacts_path

    settings = get_settings()
    options = ServerOptions(
        host=host,
        port=port,
        workers=workers,
        backend_store_uri=backend_store_uri,
        artifacts_destination=artifacts_destination,
        extra=list(ctx.args),
    )
    command = server_command(settings, options)
    if print_command:
        sys.stdout.write(shlex.join(command) + "\n")
        return
    artifacts_path(settings).mkdir(parents=True, exist_ok=True)
    err.print(
        f"MLflow at {server_url(host, port)} (clients: "
        f"ANALOGLAB_MLFLOW_TRACKING_URI={server_url(host, port)})"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def main() -> None:
    app()
