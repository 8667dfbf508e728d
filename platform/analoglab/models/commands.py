"""``analoglab models``: list, show, build, pack and install the catalog's models.

Options are parsed here; the work is in :mod:`.catalog`, :mod:`.bundle` and the foundry.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markdown import Markdown
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
from analoglab.foundry.commands import ForceOpt, PresetOpt, build_preset

models_app = typer.Typer(
    help="The model catalog: list, show, build, pack, install, publish a layout.",
    no_args_is_help=True,
)


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
                "cka": a.card.fidelity.cka if a.card.fidelity else None,
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
        for col in ("params", "ratio", "KL", "top-1", "CKA", *task_names):
            table.add_column(col, justify="right")
        for f in frontiers:
            table.add_row(
                f"{f.id} (frontier)",
                _short(f.parameters),
                "",
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
        out.print(
            "KL: next-token KL(frontier ‖ analog), nats/token; CKA: linear CKA of the residual "
            "streams at matched depths (1: the same up to rotation and scale); task columns: "
            "accuracy."
        )
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
        f"{fid.cka:.2f}" if fid and fid.cka is not None else "",
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
    out.print(layout_line(found.layout))


def layout_line(layout: Any) -> str:
    """One line on a frontier's published hook layout (the queue vets sites against it)."""
    if layout is None:
        return "layout: not published (vetting says nothing about hook sites)"
    if layout.refused:
        return f"layout: refused ({layout.refused})"
    line = f"layout: {layout.n_layers} blocks; every block offers " + (
        ", ".join(layout.supported) or "no site"
    )
    for r in layout.refusals:
        blocks = ",".join(str(b) for b in r.blocks[:8]) + ("…" if len(r.blocks) > 8 else "")
        line += f"; {r.site} refused at {blocks or 'no block'} ({r.reason})"
    return line


@models_app.command("layout")
@handles_errors
def models_layout(
    frontier: Annotated[str, typer.Argument(help="The frontier model id in the catalog.")],
    report: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help="The layout report the lab site wrote (`analoglab lab layout --out`); - reads "
            "stdin.",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Publish a frontier's verified hook layout in the catalog, for the queue's vetting.

    The lab site writes the report (it needs the weights); the hub keeps only the sites each
    block offers or refuses, and why. Replaces the frontier's earlier layout."""
    from analoglab.errors import CorruptModelError
    from analoglab.models.catalog import publish_layout

    try:
        text = sys.stdin.read() if str(report) == "-" else report.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptModelError(f"cannot read {report}: {exc.__class__.__name__}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptModelError(f"{report} is not JSON ({exc.msg}, line {exc.lineno})") from None
    updated = publish_layout(frontier, data, get_settings())
    if as_json:
        print_json({"frontier": updated.id, "layout": updated.model_dump(mode="json")["layout"]})
        return
    out.print(f"published {updated.id}'s layout")
    out.print(layout_line(updated.layout))


@models_app.command("build")
@handles_errors
def modelsbuild_preset(
    preset: PresetOpt = None, device: DeviceOpt = None, force: ForceOpt = False
) -> None:
    """Build the demo lab's frontier and analogs if missing, then list the catalog."""
    from analoglab.models.catalog import Catalog

    build_preset(preset, device, force)
    print_catalog(Catalog.load(get_settings()))


@models_app.command("pack")
@handles_errors
def models_pack(
    name: Annotated[str, typer.Argument(help="The analog to pack.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Archive path or folder.")
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", help="The lab's signing key (PEM); default: <lab_sites>/<lab>/signing.key."
        ),
    ] = None,
    unsigned: Annotated[
        bool, typer.Option("--unsigned", help="Do not sign (a local build nobody else installs).")
    ] = False,
) -> None:
    """Write a release bundle of an analog, signed by its lab: files, card, sha256 manifest."""
    from analoglab.models.bundle import pack, sha256_file, signer
    from analoglab.signing import load_private_key

    private = load_private_key(key) if key is not None else None
    path = pack(name, out_path, get_settings(), key=private, unsigned=unsigned)
    out.print(f"packed {name} → {path}")
    out.print(f"sha256 {sha256_file(path)}")
    if (key_id := signer(path)) is not None:
        out.print(f"signed by key {key_id}")
    else:
        err.print("[yellow]warning:[/yellow] not signed: installs only with --allow-unsigned")


@models_app.command("install")
@handles_errors
def models_install(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `models pack`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an installed analog.")] = False,
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="The lab's key, 'ed25519:<base64>'; default: the lab's key in the catalog.",
        ),
    ] = None,
    allow_unsigned: Annotated[
        bool,
        typer.Option("--allow-unsigned", help="Install an unsigned bundle (your own local build)."),
    ] = False,
) -> None:
    """Check a bundle's signature and every checksum, then install it into the model store."""
    from rich.progress import Progress

    from analoglab.errors import BundleError
    from analoglab.models.bundle import install

    if not bundle.is_file():
        raise BundleError(f"no bundle file at {bundle}")
    total = bundle.stat().st_size
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"verifying {bundle.name}", total=total)
        path = install(
            bundle,
            get_settings(),
            force=force,
            progress=lambda n: progress.advance(task, n),
            public_key=public_key,
            allow_unsigned=allow_unsigned,
        )
    out.print(f"installed {path.name} → {path}")
