"""What ``analoglab activations extract|info|ls`` do, apart from parsing their options.

The command line's own module (:mod:`analoglab.cli`) declares the options and calls these;
here the options become a :class:`~analoglab.activations.sources.Source` and hook list, and
results become tables. Nothing here imports torch until an extraction starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from analoglab.activations.errors import ActivationError
from analoglab.activations.sources import Source


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
