"""Mean and covariance of activations, out of core, in one pass over the rows.

With ``k`` the mean of the first chunk (a shift against cancellation), each chunk adds its
count, ``Σ(x − k)`` and ``(X − k)ᵀ(X − k)`` in float64; then

    mean = k + Σ(x − k) / n
    cov  = ((X − k)ᵀ(X − k) − n (mean − k)(mean − k)ᵀ) / (n − ddof)

which is ``np.cov(X, rowvar=False, ddof=ddof)`` without holding ``X``. Memory per task is one
chunk and a ``d × d`` float64 sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.activations.matrix import Rows, as_matrix, dask_modules, shift_of


@dataclass(frozen=True)
class MeanCovariance:
    """Row count, mean ``[d]`` and covariance ``[d, d]`` (``ddof`` as computed)."""

    n: int
    mean: np.ndarray
    covariance: np.ndarray
    ddof: int = 1

    @property
    def variance(self) -> np.ndarray:
        return np.diag(self.covariance).copy()

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "covariance": self.covariance}

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "mean_covariance",
            "n": self.n,
            "dim": int(self.mean.shape[0]),
            "ddof": self.ddof,
            "total_variance": float(np.trace(self.covariance)),
        }


def mean(x: Rows) -> np.ndarray:
    """The float64 mean of the rows of ``x``."""
    m = as_matrix(x)
    return np.asarray(m.astype(np.float64).mean(axis=0).compute())


def mean_and_covariance(x: Rows, *, ddof: int = 1) -> MeanCovariance:
    """Mean and covariance of the rows of ``x`` in one pass (see the module docstring)."""
    dask, _ = dask_modules()

    m = as_matrix(x)
    n = int(m.shape[0])
    if n - ddof <= 0:
        raise ActivationError(f"a covariance with ddof={ddof} needs more than {ddof} rows")
    k = shift_of(m)
    xs = m.astype(np.float64) - k
    total, second = dask.compute(xs.sum(axis=0), xs.T @ xs)
    delta = np.asarray(total) / n
    cov = (np.asarray(second) - n * np.outer(delta, delta)) / (n - ddof)
    cov = (cov + cov.T) / 2
    return MeanCovariance(n=n, mean=k + delta, covariance=cov, ddof=ddof)
