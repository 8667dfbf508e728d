"""Linear CKA between two sets of activations of the same rows, out of core.

With ``X [n, dx]`` and ``Y [n, dy]`` the activations of two models (or layers) on the same
tokens, column-centred,

    CKA(X, Y) = ‖XᵀY‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)

(Kornblith et al. 2019): 1 for representations equal up to rotation and isotropic scaling,
near 0 for unrelated ones, and defined across widths, so an analog compares with its
frontier. One pass: each chunk of rows adds its shifted sums and ``XᵀX``, ``YᵀY``, ``XᵀY``;
the centring is applied to the sums at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.activations.matrix import Rows, aligned, as_matrix, dask_modules, shift_of


def check_same_rows(x: Any, y: Any) -> None:
    """For two hook views, an error unless their rows are the same tokens of the same prompts."""
    dask, _ = dask_modules()

    from analoglab.activations.dataset import HookView

    if not (isinstance(x, HookView) and isinstance(y, HookView)):
        return
    if x.n_rows != y.n_rows:
        raise ActivationError(
            f"the datasets have {x.n_rows:,} and {y.n_rows:,} rows; CKA compares the same rows "
            "(extract both models on the same prompts with the same positions)"
        )
    checks = [
        (x.coords[c] != aligned(y.coords[c], x.coords[c])).any()
        for c in ("prompt", "position", "token_id")
        if c in x.coords and c in y.coords
    ]
    if checks and any(bool(v) for v in dask.compute(*checks)):
        raise ActivationError(
            "the datasets' rows are different tokens (prompt, position or token id differ); "
            "CKA compares the same rows: extract both on the same prompts and tokenizer, or "
            "pass check_rows=False"
        )


def linear_cka(x: Rows, y: Rows, *, check_rows: bool = True) -> float:
    """Linear CKA of the rows of ``x`` and ``y`` (see the module docstring); 0 if degenerate."""
    dask, _ = dask_modules()

    if check_rows:
        check_same_rows(x, y)
    mx = as_matrix(x, name="x")
    my = as_matrix(y, name="y")
    n = int(mx.shape[0])
    if int(my.shape[0]) != n:
        raise ActivationError(f"x has {n} rows and y {int(my.shape[0])}; CKA needs the same rows")
    my = aligned(my, mx)
    xs = mx.astype(np.float64) - shift_of(mx)
    ys = my.astype(np.float64) - shift_of(my)
    sx, sy, xx, yy, xy = dask.compute(
        xs.sum(axis=0), ys.sum(axis=0), xs.T @ xs, ys.T @ ys, xs.T @ ys
    )
    sx, sy = np.asarray(sx), np.asarray(sy)
    cxx = np.asarray(xx) - np.outer(sx, sx) / n
    cyy = np.asarray(yy) - np.outer(sy, sy) / n
    cxy = np.asarray(xy) - np.outer(sx, sy) / n
    denom = float(np.linalg.norm(cxx) * np.linalg.norm(cyy))
    if denom <= 0.0:
        return 0.0
    return float(np.linalg.norm(cxy) ** 2 / denom)
