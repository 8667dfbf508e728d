"""The ``analoglab`` command: the root that assembles one command group per area.

Command groups, each declared beside the area it drives:

- ``doctor`` (check this machine), ``config`` (the settings in effect): :mod:`analoglab.cli.config`
- ``models`` (the catalog: list, show, build, pack, install): :mod:`analoglab.models.commands`
- ``foundry`` (the demo lab's models, corpus, task sets): :mod:`analoglab.foundry.commands`
- ``spec`` (schema, validation), ``run`` (a spec on one model), ``transfer`` (a spec on an
  analog and its frontier): :mod:`analoglab.experiments.commands`
- ``activations`` (datasets: extract, info, ls): :mod:`analoglab.activations.commands`
- ``queue`` (the gated queue, and ``queue audit``): :mod:`analoglab.queue.commands`
- ``lab`` (a lab site's agent): :mod:`analoglab.lab.commands`
- ``tracking`` (MLflow: analog cards, the tracking server): :mod:`analoglab.tracking.commands`
- ``demo`` (the public demo; ``demo publish``): :mod:`analoglab.demos.commands`
- ``up`` (the platform on this machine), ``status``, ``users``: :mod:`analoglab.hub.commands`

Shared helpers (``handles_errors``, ``print_json``, ``JsonFlag``, the consoles) are in
:mod:`analoglab.cli.common`. Every command that lists or shows something takes ``--json``
(stable keys, for scripts). Errors of ours are printed as one line on stderr with a non-zero
exit, never a traceback. Heavy imports (torch, transformers, mlflow) happen inside the
commands that need them, so no area's ``commands.py`` loads them at import.

The groups are added on first use of ``app`` (or ``main()``), not at ``import analoglab.cli``:
an area's ``commands.py`` imports :mod:`analoglab.cli.common`, so importing the areas here
eagerly would make ``import analoglab.<area>.commands`` circular.
"""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from analoglab import __version__
from analoglab.cli.common import out

__all__ = ["app", "main"]

_root = typer.Typer(
    name="analoglab",
    help="Analog Lab: study analog models and check what transfers to their frontier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"analoglab {__version__}")
        raise typer.Exit()


@_root.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Analog Lab: study analog models and check what transfers to their frontier."""


@functools.cache
def _assembled() -> typer.Typer:
    """The root with every area's commands and groups, in the order ``--help`` lists them."""
    from analoglab.activations.commands import activations_app
    from analoglab.cli.config import config_app, doctor
    from analoglab.demos.commands import demo_app
    from analoglab.experiments.commands import map_app, run_command, spec_app, transfer_command
    from analoglab.foundry.commands import foundry_app
    from analoglab.hub.commands import register as register_platform
    from analoglab.lab.commands import lab_app
    from analoglab.models.commands import models_app
    from analoglab.queue.commands import queue_app
    from analoglab.tracking.commands import tracking_app

    _root.command()(doctor)
    _root.command("run")(run_command)
    _root.command("transfer")(transfer_command)
    for name, group in (
        ("config", config_app),
        ("models", models_app),
        ("foundry", foundry_app),
        ("spec", spec_app),
        ("map", map_app),
        ("activations", activations_app),
        ("queue", queue_app),
        ("lab", lab_app),
        ("tracking", tracking_app),
        ("demo", demo_app),
    ):
        _root.add_typer(group, name=name)
    register_platform(_root)  # up, status, users
    return _root


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        return _assembled()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    _assembled()()
