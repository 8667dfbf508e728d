"""What the command groups share: the consoles, ``--json`` and ``--device``, one-line errors,
JSON output and a progress bar.

Every area's ``commands.py`` imports these; nothing here imports more than typer and rich.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from analoglab.config import redact_text
from analoglab.errors import AnalogLabError

# Piped output gets 120 columns rather than rich's 80, so tables stay readable in logs.
_WIDTH = None if sys.stdout.isatty() else 120
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

F = TypeVar("F", bound=Callable[..., Any])
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps.")]


def handles_errors(func: F) -> F:
    """Turn our errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AnalogLabError as exc:
            # URIs in messages lose their passwords (config.redact_text)
            err.print(f"[red]error:[/red] {escape(redact_text(str(exc)))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted; run the command again to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Print JSON on stdout (stable keys for scripts; dates and paths as strings)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def progress_bar(description: str) -> tuple[Any, Callable[[int, int], None]]:
    """A transient progress bar on stderr, and the ``(done, total)`` callback that moves it."""
    from rich.progress import Progress

    progress = Progress(console=err, transient=True)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update
