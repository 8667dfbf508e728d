"""Principal components of activations, out of core.

``method="randomized"`` (default): the rows are centred lazily and
``dask.array.linalg.svd_compressed`` (a randomised range finder with ``n_power_iter`` power
iterations, each followed by a QR re-orthonormalisation, and ``oversamples`` extra directions,
Halko et al. 2011) gives the top ``k`` right singular vectors in ``2 · n_power_iter + 3``
passes, whatever the number of features.
It runs with ``compute=True``: each pass reads the rows again rather than keeping them for
the next, so memory holds chunks and ``n × (k + oversamples)`` factors, never the data.
``method="covariance"``: the exact eigendecomposition of the one-pass covariance
(:func:`~analoglab.activations.stats.mean_and_covariance`), for widths up to a few thousand.

Explained variance is ``s² / (n − 1)`` as in scikit-learn, and its ratio is taken against the
total variance ``‖X − mean‖²_F / (n − 1)``. Signs are fixed so that each component's entry of
largest magnitude is positive, so results do not flip between runs or methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.activations.matrix import Rows, as_matrix, dask_modules


@dataclass(frozen=True)
class PCAResult:
    """``components [k, d]`` (rows, unit norm), their variances and the data's mean."""

    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    mean: np.ndarray
    n: int
    method: str

    def transform(self, x: Rows) -> Any:
        """The rows of ``x`` in component coordinates ``[n, k]`` (a lazy dask array)."""
        m = as_matrix(x)
        return (m.astype(np.float64) - self.mean) @ self.components.T

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "components": self.components,
            "explained_variance": self.explained_variance,
            "explained_variance_ratio": self.explained_variance_ratio,
            "singular_values": self.singular_values,
            "mean": self.mean,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "pca",
            "method": self.method,
            "n": self.n,
            "k": int(self.components.shape[0]),
            "explained_variance_ratio": [float(v) for v in self.explained_variance_ratio],
        }


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Each row flipped so that its entry of largest magnitude is positive."""
    rows = np.arange(components.shape[0])
    signs = np.sign(components[rows, np.abs(components).argmax(axis=1)])
    signs[signs == 0] = 1.0
    flipped: np.ndarray = components * signs[:, None]
    return flipped


def pca(
    x: Rows,
    k: int,
    *,
    method: Literal["randomized", "covariance"] = "randomized",
    n_power_iter: int = 4,
    oversamples: int = 10,
    seed: int = 0,
) -> PCAResult:
    """The top ``k`` principal components of the rows of ``x``."""
    dask, da = dask_modules()

    m = as_matrix(x)
    n, d = (int(s) for s in m.shape)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(n, d):
        raise ActivationError(f"k must be an integer from 1 to min(rows, features) = {min(n, d)}")
    if n < 2:
        raise ActivationError("PCA needs at least two rows")
    if method == "covariance":
        from analoglab.activations.stats import mean_and_covariance

        mc = mean_and_covariance(m)
        values, vectors = np.linalg.eigh(mc.covariance)
        order = np.argsort(values)[::-1][:k]
        variance = np.clip(values[order], 0.0, None)
        components = fix_signs(vectors[:, order].T)
        total = float(np.trace(mc.covariance))
        center = mc.mean
    elif method == "randomized":
        center = np.asarray(m.astype(np.float64).mean(axis=0).compute())
        xc = m.astype(np.float64) - center
        _, s, v = da.linalg.svd_compressed(
            xc,
            k,
            iterator="QR",  # re-orthonormalised between power iterations: "power" loses
            n_power_iter=n_power_iter,  # the small components of an ill-conditioned spectrum
            n_oversamples=oversamples,
            seed=seed,
            compute=True,
        )
        s_np, v_np, sq = dask.compute(s, v, (xc**2).sum())
        variance = np.asarray(s_np) ** 2 / (n - 1)
        components = fix_signs(np.asarray(v_np))
        total = float(sq) / (n - 1)
    else:
        raise ActivationError(f"method must be 'randomized' or 'covariance', not {method!r}")
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    return PCAResult(
        components=components,
        explained_variance=variance,
        explained_variance_ratio=ratio,
        singular_values=np.sqrt(variance * (n - 1)),
        mean=center,
        n=n,
        method=method,
    )
