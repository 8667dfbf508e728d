"""Progress of an extraction in tokens: a tqdm reporter for notebooks, and the token meter.

:func:`~analoglab.activations.extract` reports through any :class:`analoglab.progress.Reporter`:
``RichReporter`` in the terminal (what the CLI uses), :class:`TqdmReporter` in a notebook,
``SilentReporter`` (the default) elsewhere. One step is one token; the numbers shown are the
throughput in thousands of tokens per second (``ktok/s``), and the bar's ETA follows from it.
"""

from __future__ import annotations

import time
from typing import Any

from analoglab.progress import Reporter, StepCallback


class TqdmReporter:
    """A :class:`~analoglab.progress.Reporter` drawing ``tqdm.auto`` bars (widgets in Jupyter,
    text elsewhere)."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kwargs = tqdm_kwargs
        self._bars: list[Any] = []

    def note(self, message: str) -> None:
        _tqdm().write(message)

    def steps(self, description: str, total: int, done: int = 0) -> StepCallback:
        tqdm = _tqdm()
        kwargs = {"unit": "tok", "unit_scale": True, "dynamic_ncols": True, **self._kwargs}
        bar = tqdm(total=total, initial=done, desc=description, **kwargs)
        self._bars.append(bar)

        def update(steps_done: int, numbers: dict[str, float]) -> None:
            bar.update(steps_done - bar.n)
            if numbers:
                bar.set_postfix({k: f"{v:.3g}" for k, v in numbers.items()}, refresh=False)

        return update

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars.clear()


def _tqdm() -> Any:
    """``tqdm.auto``'s bar where Jupyter widgets are installed, else the text bar (which
    notebooks show too, without a warning about the missing widgets)."""
    try:
        import ipywidgets  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:
        from tqdm.std import tqdm  # type: ignore[import-untyped]
    return tqdm


class TokenMeter:
    """Turns "tokens done" into reporter steps and a tokens/s figure over this run."""

    def __init__(self, reporter: Reporter, description: str, total: int, done: int) -> None:
        self._update = reporter.steps(description, total=total, done=done)
        self._start_done = done
        self._start = time.perf_counter()
        self.done = done

    def advance(self, tokens: int) -> None:
        self.done += tokens
        seconds = max(time.perf_counter() - self._start, 1e-9)
        self._update(self.done, {"ktok/s": (self.done - self._start_done) / seconds / 1e3})
