"""``analoglab config show`` and ``analoglab doctor``: the settings in effect, and a check of
this machine.
"""

from __future__ import annotations

import typer
from rich.table import Table

from analoglab.cli.common import JsonFlag, handles_errors, out, print_json
from analoglab.config import explain, get_settings

config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)


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
