"""``analoglab activations extract|info|ls``: their options, and what they do with them.

The options become a :class:`~analoglab.activations.sources.Source` and hook list, and
results become tables. Nothing here imports torch until an extraction starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from analoglab.activations.errors import ActivationError
from analoglab.activations.sources import Source
from analoglab.cli.common import DeviceOpt, JsonFlag, err, handles_errors, out, print_json
from analoglab.config import get_settings


def parse_hooks(hooks: str | None, depths: str | None) -> list[str | float] | None:
    """``--hooks a,b`` (names) and ``--depths 0,0.5,1`` (relative depths), together."""
    found: list[str | float] = []
    if hooks:
        found += [h.strip() for h in hooks.split(",") if h.strip()]
    if depths:
        for part in (p.strip() for p in depths.split(",")):
            if not part:
                continue
            try:
                found.append(float(part))
            except ValueError:
                raise ActivationError(
                    f"--depths takes numbers in [0, 1] separated by commas, not {part!r}"
                ) from None
    return found or None


def source_from_options(
    task_set: str | None, n: int, seed: int | None, prompts_file: Path | None
) -> Source:
    """Exactly one of ``--task-set`` and ``--prompts``, as a source."""
    if (task_set is None) == (prompts_file is None):
        raise ActivationError(
            "give the prompts with exactly one of --task-set NAME or --prompts FILE"
        )
    if task_set is not None:
        return Source.task_set(task_set, n, seed)
    assert prompts_file is not None
    return Source.text_file(prompts_file)


def print_summary(out: Console, summary: Any) -> None:
    if summary.already_complete:
        out.print(f"{summary.path} is already complete ({summary.rows:,} rows): nothing to do")
        return
    resumed = f", resumed at prompt {summary.resumed_from:,}" if summary.resumed_from else ""
    out.print(
        f"wrote {summary.rows:,} rows × {len(summary.hooks)} hooks ({summary.positions}, "
        f"{summary.dtype}) from {summary.prompts:,} prompts to {summary.path}{resumed}: "
        f"{summary.seconds:.1f}s, {summary.tokens_per_s:,.0f} tokens/s"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def print_info(out: Console, info: dict[str, Any]) -> None:
    meta = info["meta"]
    ident = meta["identity"]
    model = ident["model"]
    state = info["state"]
    if state != "complete":
        state += f" ({info['prompts_done']:,} of {info['prompts']:,} prompts)"
    out.print(f"[bold]{info['name']}[/bold] — {state}, {_size(info['bytes_on_disk'])} on disk")
    out.print(f"  model      {model['name']} (weights sha256 {model['weights_sha256'][:16]}…)")
    out.print(f"  tokenizer  {ident['tokenizer']['name']}, {ident['tokenizer']['vocab_size']} ids")
    out.print(
        f"  source     {ident['source']['description']}, {ident['source']['prompts']:,} prompts, "
        f"{ident['source']['tokens']:,} tokens (sha256 {ident['source']['sha256'][:16]}…)"
    )
    labels = ", ".join(ident["source"]["label_names"]) or "none"
    out.print(f"  labels     {labels}")
    out.print(
        f"  rows       {info['rows']:,} ({ident['positions']}), dtype {ident['dtype']}, "
        f"batch {ident['batch_size']}, max {ident['max_tokens']} tokens per prompt"
    )
    out.print(f"  created    {meta['created']} on {meta['device']}; {meta['extract_seconds']}s")
    table = Table("array", "shape", "chunks", "dtype", title_justify="left")
    for name, arr in info["arrays"].items():
        table.add_row(
            name,
            " × ".join(map(str, arr["shape"])),
            " × ".join(map(str, arr["chunks"])),
            arr["dtype"],
        )
    out.print(table)


def print_list(out: Console, folder: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print(f"No activation stores in {folder}; make one: `analoglab activations extract`")
        return
    table = Table("store", "state", "model", "hooks", "positions", "rows", "size", "source")
    for r in rows:
        if r["state"] == "damaged":
            table.add_row(r["name"], "[red]damaged[/red]", "", "", "", "", "", r["error"])
            continue
        state = (
            r["state"]
            if r["state"] == "complete"
            else (f"[yellow]{r['prompts_done']:,}/{r['prompts']:,}[/yellow]")
        )
        table.add_row(
            r["name"],
            state,
            r["model"],
            str(len(r["hooks"])),
            r["positions"],
            f"{r['rows']:,}",
            _size(r["bytes_on_disk"]),
            r["source"],
        )
    out.print(table)


activations_app = typer.Typer(
    help="Activation datasets: extract to zarr stores, inspect them, list them.",
    no_args_is_help=True,
)


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
    from analoglab.activations.store import default_folder, list_stores

    where = folder or default_folder(get_settings())
    rows = list_stores(where)
    if as_json:
        print_json({"folder": str(where), "stores": rows})
    else:
        print_list(out, where, rows)
