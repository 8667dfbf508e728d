"""A progress bar for :func:`~analoglab.experiments.runner.run` in notebooks and scripts.

The runner reports ``(done, total)`` units of work to a callback; :func:`progress_bar` turns
that callback into a tqdm bar (a widget in Jupyter where ipywidgets is installed, else the
text bar, which notebooks show too), closed when the block ends::

    from analoglab.experiments.progress import progress_bar

    with progress_bar("steering · demo-analog-s") as progress:
        result = run(spec, model, progress=progress)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ProgressCallback = Callable[[int, int], None]


@contextmanager
def progress_bar(description: str, **tqdm_kwargs: Any) -> Iterator[ProgressCallback]:
    """A callback for ``run(..., progress=)`` that draws one bar; closed on leaving the block."""
    try:  # tqdm.auto without ipywidgets warns in every notebook; the text bar does not
        import ipywidgets  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:
        from tqdm.std import tqdm  # type: ignore[import-untyped]

    bars: list[Any] = []  # drawn at the first report, when the total is known

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=description, total=total, dynamic_ncols=True, **tqdm_kwargs))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()
