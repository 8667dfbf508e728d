"""Progress display for long work: rich bars in terminals and notebooks, or silence.

Library code reports through a :class:`Reporter`; the CLI passes :class:`RichReporter`,
tests and services :class:`SilentReporter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

StepCallback = Callable[[int, dict[str, float]], None]  # (steps done so far, latest numbers)


class Reporter(Protocol):
    def note(self, message: str) -> None: ...

    def steps(self, description: str, total: int, done: int = 0) -> StepCallback: ...

    def close(self) -> None: ...


class SilentReporter:
    def note(self, message: str) -> None:
        pass

    def steps(self, description: str, total: int, done: int = 0) -> StepCallback:
        return lambda done, numbers: None

    def close(self) -> None:
        pass


class RichReporter:
    """One line per note, one bar per stepped task, showing the latest numbers (loss, ...)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[numbers]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._started = False

    def note(self, message: str) -> None:
        self.console.print(escape(message))  # notes are text, not markup: "[demo]" stays

    def steps(self, description: str, total: int, done: int = 0) -> StepCallback:
        if not self._started:
            self._progress.start()
            self._started = True
        task = self._progress.add_task(description, total=total, completed=done, numbers="")

        def update(steps_done: int, numbers: dict[str, float]) -> None:
            text = " ".join(f"{k} {v:.3f}" for k, v in list(numbers.items())[:3])
            self._progress.update(task, completed=steps_done, numbers=text)

        return update

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False
