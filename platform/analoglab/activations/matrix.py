"""What the analyses take: a row matrix ``[n, d]`` as a dask array, whatever it was given as.

Every analysis accepts a :class:`~analoglab.activations.dataset.HookView`, a dask array or a
NumPy array of rows. :func:`as_matrix` makes it a 2-D dask array whose features form one
chunk (so each task holds whole rows: the shape blockwise sums need) and whose row chunks
are those of the store. :func:`shift_of` gives the mean of the first chunk, which the
analyses subtract before summing squares, so sums of float64 stay accurate when the
activations sit far from the origin (one-pass covariance without cancellation).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from analoglab.activations.errors import ActivationError

if TYPE_CHECKING:
    from analoglab.activations.dataset import HookView

DaskArray: TypeAlias = Any
"""A ``dask.array.Array`` (dask's array API has no type hints, so it is ``Any`` to mypy)."""

Rows: TypeAlias = "HookView | DaskArray | np.ndarray"
"""Rows to analyse: a hook view, a dask array or a NumPy array, ``[n, ...]``."""


def dask_modules() -> tuple[Any, Any]:
    """``dask`` and ``dask.array``, imported on first use and typed loosely."""
    return importlib.import_module("dask"), importlib.import_module("dask.array")


DEFAULT_ROW_CHUNK = 16384


def as_matrix(x: Any, *, name: str = "x") -> DaskArray:
    """``x`` as a 2-D ``[n, d]`` dask array with one chunk along the features."""
    _, da = dask_modules()

    from analoglab.activations.dataset import HookView

    if isinstance(x, HookView):
        x = x.data
    if isinstance(x, np.ndarray):
        if x.ndim == 1:
            x = x[:, None]
        x = da.from_array(x, chunks=(min(DEFAULT_ROW_CHUNK, max(len(x), 1)), -1))
    if not isinstance(x, da.Array):
        raise ActivationError(
            f"{name} must be a HookView, a dask array or a NumPy array, not {type(x).__name__}"
        )
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
        raise ActivationError(f"{name} has no rows")
    if any(np.isnan(c) for c in x.chunks[0]):
        x = x.compute_chunk_sizes()
    if len(x.chunks[1]) > 1:
        x = x.rechunk({1: -1})
    return x


def as_vector(y: Any, n: int, *, name: str = "y") -> DaskArray:
    """``y`` as a 1-D dask array of ``n`` entries."""
    _, da = dask_modules()

    from analoglab.activations.dataset import HookView

    if isinstance(y, HookView):
        raise ActivationError(f"{name} must be per-row values, not a HookView")
    if not isinstance(y, da.Array):
        y = da.from_array(np.asarray(y), chunks=min(DEFAULT_ROW_CHUNK, max(n, 1)))
    if y.ndim != 1 or y.shape[0] != n:
        raise ActivationError(f"{name} needs one value per row: shape {y.shape}, {n} rows")
    return y


def shift_of(x: DaskArray) -> np.ndarray:
    """The float64 mean of the first row chunk of ``x`` (computed: one chunk)."""
    first = x[: x.chunks[0][0]].astype(np.float64)
    return np.asarray(first.mean(axis=0).compute(), dtype=np.float64)


def aligned(y: DaskArray, x: DaskArray) -> DaskArray:
    """``y`` re-chunked along rows like ``x``, so blockwise products need no shuffling."""
    return y if y.chunks[0] == x.chunks[0] else y.rechunk({0: x.chunks[0]})
