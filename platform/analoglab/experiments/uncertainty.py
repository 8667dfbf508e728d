"""Uncertainty: the bootstrap every result carries, its intervals, and what would narrow them.

A method that aggregates over items (prompts, pairs, test examples) computes its headline
numbers once on the items as given (the point estimate) and again on ``B`` resamples of them
(the spec's ``bootstrap.resamples``), drawn with replacement by :func:`resample_weights`. A
resample is a row of weights ``w`` (counts / n), so a mean over items becomes ``w @ values``
and nothing is run on the model again. Where a method has random parts of its own (a probe's
train/test split, a random control vector), replicate ``b`` also uses draw ``b mod K`` of
them, so the interval holds their variation too.

Resamples are seeded by the spec's ``bootstrap.seed`` and a name per item set
(:func:`resample_weights`): the analog's and the frontier's runs of one spec draw the very same
resamples of their (shared) items, a *paired* bootstrap, and replicate ``b`` of one result
goes with replicate ``b`` of the other in :mod:`.transfer`.

Intervals of a result's metrics are percentile intervals (:func:`percentile_interval`, 95%
by default); a transfer report's score and parts, bounded to [0, 1], get
:func:`bounded_interval` (the percentile interval widened to the basic one, clipped), which
does not miss a true value at a bound. How many items would narrow one: an interval's width
shrinks as ``1/√n``, so reaching ``target`` from ``width`` on ``n`` items takes about
``n · (width / target)²`` (:func:`items_to_narrow`). Only the part of the width that comes
from the items shrinks so: the spread between a method's random draws does not.
This module imports no torch (results and reports are read on the hub).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence

import numpy as np

from analoglab.experiments.result import Replicates

LEVEL = 0.95
DEFAULT_RESAMPLES = 200
MIN_RESAMPLES = 20
MAX_RESAMPLES = 2000


def stream_seed(seed: int, stream: str) -> list[int]:
    """The seed sequence of one named item set (``"evaluate"``, ``"test"``, ...)."""
    return [seed & 0xFFFFFFFF, zlib.crc32(stream.encode()), 0xB0075]


def resample_weights(n: int, resamples: int, seed: int, stream: str) -> np.ndarray:
    """``[resamples, n]`` weights, each row the counts of a draw of ``n`` items with
    replacement divided by ``n`` (rows sum to 1): ``weights @ values`` is the resampled mean.
    Read-only, and kept for the next caller with the same arguments (the jobs of a warm
    worker draw the same few again and again)."""
    if n <= 0:
        raise ValueError("nothing to resample: no items")
    return _resample_weights(n, resamples, seed, stream)


@functools.lru_cache(maxsize=256)
def _resample_weights(n: int, resamples: int, seed: int, stream: str) -> np.ndarray:
    rng = np.random.default_rng(stream_seed(seed, stream))
    picks = rng.integers(0, n, size=(resamples, n))
    # each row's counts: one bincount over the picks offset by their row
    flat = (picks + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    weights: np.ndarray = counts / n
    weights.flags.writeable = False
    return weights


def percentile_interval(
    replicates: Sequence[float] | np.ndarray, level: float = LEVEL
) -> tuple[float, float]:
    """The central ``level`` percentile interval of the replicates."""
    values = np.asarray(replicates, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no replicates")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bounded_interval(
    replicates: Sequence[float] | np.ndarray,
    point: float,
    lower: float = 0.0,
    upper: float = 1.0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """The interval of a number bounded to ``[lower, upper]`` (a transfer score or part):
    the percentile interval ``[q_lo, q_hi]`` widened to the *basic* interval
    ``[2θ − q_hi, 2θ − q_lo]`` (``θ`` the point estimate) where that reaches further, and
    clipped to the bounds.

    Near a bound the replicates of such a number pile up on one side of the point estimate
    (a score of ``min/max`` of two effects is never above 1), and the percentile interval
    alone misses a true value at the bound (69% of seeds for a true score of 1 in
    ``tests/experiments/test_uncertainty.py``); the basic interval reflects that pile-up back
    over the point. Their union covers 91–98% of seeds in the cases tested there."""
    q_lo, q_hi = percentile_interval(replicates, level)
    low = min(q_lo, 2.0 * point - q_hi)
    high = max(q_hi, 2.0 * point - q_lo)
    return float(min(max(low, lower), upper)), float(max(min(high, upper), lower))


def items_to_narrow(n: int, width: float, target: float) -> int | None:
    """Items needed for an interval of ``width`` on ``n`` items to shrink to ``target``:
    ``ceil(n · (width / target)²)`` (never fewer than ``n``); None when ``target`` is 0
    (a point estimate exactly on a cut-off: no number of items settles it)."""
    if target <= 0.0:
        return None
    if width <= target:
        return n
    # rounded first: float noise (0.7 - 0.3 is 0.39999...) must not add an item
    return max(n, math.ceil(round(n * (width / target) ** 2, 6)))


def headline_rows(profiles: np.ndarray) -> np.ndarray:
    """``[B, L]`` → ``[B]``: each row's value of largest magnitude (signed; the first on ties),
    as ``methods.common.headline`` picks a profile's headline."""
    rows = np.asarray(profiles, dtype=np.float64)
    best = np.argmax(np.abs(rows), axis=1)
    picked: np.ndarray = rows[np.arange(rows.shape[0]), best]
    return picked


def _short(values: np.ndarray) -> list[float]:
    """Six significant digits: replicates are estimates, and results are kept small. Each
    value is what ``float(f"{v:.6g}")`` gives it: by arithmetic (``rint(v · 10^p) / 10^p``,
    both exact where ``|p| <= 22``, the division correctly rounded), and by the string for the
    few it could get wrong (zeros, non-finite values, far exponents, a product within a hair
    of a tie or outside six digits)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    with np.errstate(all="ignore"):
        magnitude = np.abs(flat)
        power = 5 - np.floor(np.log10(magnitude))  # 10^power brings v to six digits
        scale = 10.0 ** np.abs(power)
        scaled = np.where(power >= 0, flat * scale, flat / scale)
        digits = np.rint(scaled)
        out = np.where(power >= 0, digits / scale, digits * scale)
        tie = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) < 1e-6
        by_string = (
            ~np.isfinite(flat)
            | (magnitude == 0)
            | (np.abs(power) > 22)
            | tie
            | (np.abs(digits) < 1e5)
            | (np.abs(digits) >= 1e6)
        )
    short: list[float] = out.tolist()
    for i in np.flatnonzero(by_string).tolist():
        short[i] = float(f"{flat[i]:.6g}")
    return short


def make_replicates(
    *,
    resamples: int,
    seed: int,
    items: dict[str, int],
    metrics: dict[str, np.ndarray] | None = None,
    profiles: dict[str, np.ndarray] | None = None,
) -> Replicates:
    """A result's :class:`~analoglab.experiments.result.Replicates` from arrays: metrics
    ``[B]``, profiles ``[B, L]`` (built without validating again the floats made right here:
    about half a millisecond a result otherwise)."""
    rows: dict[str, list[list[float]]] = {}
    for k, v in (profiles or {}).items():
        table = np.asarray(v, dtype=np.float64)
        table = table.reshape(len(table), -1) if table.size else table.reshape(len(table), 0)
        width, flat = table.shape[1], _short(table)
        rows[k] = [flat[i * width : (i + 1) * width] for i in range(table.shape[0])]
    return Replicates.model_construct(
        resamples=int(resamples),
        seed=int(seed),
        items={str(k): int(n) for k, n in items.items()},
        metrics={str(k): _short(v) for k, v in (metrics or {}).items()},
        profiles=rows,
    )
