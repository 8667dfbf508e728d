"""Logistic-regression probes trained over chunks: Newton's method with per-chunk sums.

The probe minimises ``Σ log(1 + exp(z)) − y·z + (l2 / 2)‖w‖²`` with ``z = x·w + b`` (the
intercept is not penalised): scikit-learn's ``LogisticRegression(C=1/l2)``. Each iteration is
one pass over the rows, in which every chunk adds its share of the gradient ``Xᵀ(p − y)`` and
of the Hessian ``Xᵀ diag(p(1 − p)) X`` (IRLS); the ``(d + 1)²`` system is then solved in
memory. A step that would raise the objective is halved. Newton needs about ten passes where
stochastic gradient needs hundreds, and the fit is the exact optimum, not an approximation.

Memory per task: one chunk and a ``d × d`` float64 matrix, so widths up to a few thousand.
:func:`split_by_prompt` holds out whole prompts, so no prompt's tokens are on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.activations.matrix import Rows, aligned, as_matrix, as_vector, dask_modules


@dataclass(frozen=True)
class Probe:
    """A fitted linear probe: ``P(positive | x) = σ(x·weights + bias)``."""

    weights: np.ndarray
    bias: float
    positive: str
    negative: str
    l2: float
    n: int
    n_iter: int
    converged: bool
    loss: float
    """Mean log-loss on the training rows (without the penalty)."""
    train_accuracy: float
    hook: str | None = None
    positive_value: Any = field(default=None, repr=False, compare=False)
    """The ``positive`` given to :func:`train_probe` (``None``: ``y`` was 0/1)."""
    negative_value: Any = field(default=None, repr=False, compare=False)
    """The ``negative`` given to :func:`train_probe` (``None``: every other row)."""

    def decision(self, x: Rows) -> Any:
        """``x·w + b`` per row (a lazy dask array)."""
        return as_matrix(x).astype(np.float64) @ self.weights + self.bias

    def predict_proba(self, x: Rows) -> np.ndarray:
        _, da = dask_modules()

        return np.asarray((1.0 / (1.0 + da.exp(-self.decision(x)))).compute())

    def accuracy(self, x: Rows, y: Any = None) -> float:
        """The fraction of rows classified right (``y`` from the labels of a HookView).

        Raw rows and their ``y`` go through the training's mapping: with ``positive`` (and
        ``negative``) given to :func:`train_probe`, ``y == positive`` is the positive class
        (and only rows whose ``y`` is ``positive`` or ``negative`` count)."""
        from analoglab.activations.dataset import HookView

        if isinstance(x, HookView):
            view, target = _targets(x, y, self.positive, _negative_label(self.negative))
        else:
            view, target = _targets(x, y, self.positive_value, self.negative_value)
        z = self.decision(view)
        return float(((z > 0) == (aligned(target, z) > 0.5)).mean().compute())

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": np.array([self.bias])}

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "logistic_probe",
            "hook": self.hook,
            "positive": self.positive,
            "negative": self.negative,
            "l2": self.l2,
            "n": self.n,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "loss": self.loss,
            "train_accuracy": self.train_accuracy,
        }


def _negative_label(name: str) -> str | None:
    return None if name.startswith("not ") else name


def _targets(x: Rows, y: Any, positive: Any, negative: Any) -> tuple[Rows, Any]:
    """The rows to use and their 0/1 targets (float64 dask)."""
    from analoglab.activations.dataset import HookView

    if isinstance(x, HookView):
        if y is not None:
            raise ActivationError("a HookView carries its labels: do not pass y too")
        if positive is None:
            raise ActivationError("name the positive label (positive=...)")
        wanted = [positive] if negative is None else [positive, negative]
        if negative is None:
            view = x.isel(x.mask(label=list(x.label_names)))  # every labelled row
        else:
            view = x.sel(label=wanted)
        code = view.label_codes(positive)[0]
        return view, (view.coords["label"] == code).astype(np.float64)
    if y is None:
        raise ActivationError("give y (0/1 per row) for rows that are not a HookView")
    m = as_matrix(x)
    n = int(m.shape[0])
    target = as_vector(y, n, name="y")
    if positive is None:
        if negative is not None:
            raise ActivationError("name the positive class too (positive=...)")
        values = np.unique(np.asarray(target.compute()))
        numeric = values.dtype.kind in "biuf"
        if not numeric or not np.isin(values, [0, 1]).all():
            shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:4])
            raise ActivationError(
                f"y holds the values {shown}{', ...' if len(values) > 4 else ''}, not 0/1; "
                "name the positive class (positive=...) and optionally the negative one"
            )
        return m, target.astype(np.float64)
    if negative is not None:
        keep = np.asarray(((target == positive) | (target == negative)).compute())
        if not keep.any():
            raise ActivationError(f"no row of y is {positive!r} or {negative!r}")
        rows = np.flatnonzero(keep)
        m, target = m[rows], target[rows]
    return m, (target == positive).astype(np.float64)


def train_probe(
    x: Rows,
    y: Any = None,
    *,
    positive: Any = None,
    negative: Any = None,
    l2: float = 1.0,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> Probe:
    """Fit a logistic probe on the rows of ``x``.

    With a :class:`HookView`: ``positive`` is a label name, ``negative`` another (``None``:
    every other labelled row). Otherwise ``y`` is 0/1 per row, or any values (strings too)
    with ``positive`` (rows whose ``y == positive``) and optionally ``negative`` (then only
    the rows whose ``y`` is one of the two are used). :meth:`Probe.accuracy` maps raw rows the
    same way.
    """
    dask, _ = dask_modules()

    from analoglab.activations.dataset import HookView

    if not l2 >= 0:
        raise ActivationError(f"l2 must be >= 0, not {l2!r}")
    rows, target = _targets(x, y, positive, negative)
    m = as_matrix(rows).astype(np.float64)
    t = aligned(target, m)
    n, d = (int(s) for s in m.shape)
    count_pos = float(t.sum().compute())
    if count_pos in (0.0, float(n)):
        raise ActivationError("a probe needs rows of both classes; one class has none")

    x_blocks = m.to_delayed().ravel()
    t_blocks = t.to_delayed().ravel()

    def terms(w: np.ndarray, b: float) -> tuple[Any, ...]:
        # One task per chunk computes all of its sums; one task adds them up.
        parts = [
            dask.delayed(_chunk_terms)(xb, tb, w, b)
            for xb, tb in zip(x_blocks, t_blocks, strict=True)
        ]
        (total,) = dask.compute(dask.delayed(_add_terms)(parts))
        return tuple(total)

    w = np.zeros(d)
    b = 0.0
    best: tuple[np.ndarray, float, float, tuple[Any, ...]] | None = None
    step_w, step_b, step = np.zeros(d), 0.0, 1.0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        t_ = terms(w, b)
        objective = float(t_[0]) + 0.5 * l2 * float(w @ w)
        if best is not None and objective > best[2] + 1e-12 * abs(best[2]):
            step /= 2.0  # overshot: go back toward the best point
            w, b = best[0] + step * step_w, best[1] + step * step_b
            if step < 1e-10:
                w, b = best[0], best[1]
                break
            continue
        if best is not None and best[2] - objective <= 1e-14 * max(abs(objective), 1.0):
            best = (w, b, objective, t_)
            converged = True
            break
        best = (w, b, objective, t_)
        _, gw, gb, hww, hwb, hbb, _ = t_
        grad = np.concatenate([np.asarray(gw) + l2 * w, [float(gb)]])
        hess = np.empty((d + 1, d + 1))
        hess[:d, :d] = np.asarray(hww) + l2 * np.eye(d)
        hess[:d, d] = hess[d, :d] = np.asarray(hwb)
        hess[d, d] = float(hbb)
        try:
            delta = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            delta = np.linalg.lstsq(hess, grad, rcond=None)[0]
        scale = max(1.0, float(np.abs(np.concatenate([w, [b]])).max()))
        if float(np.abs(delta).max()) <= tol * scale:
            converged = True
            break
        step_w, step_b, step = -delta[:d], -float(delta[d]), 1.0
        w, b = w + step_w, b + step_b
    assert best is not None
    w, b, _, final = best
    positive_name = str(positive) if positive is not None else "1"
    negative_name = (
        str(negative) if negative is not None else (f"not {positive}" if positive else "0")
    )
    return Probe(
        weights=np.asarray(w, dtype=np.float64),
        bias=float(b),
        positive=positive_name,
        negative=negative_name,
        l2=float(l2),
        n=n,
        n_iter=it,
        converged=converged,
        loss=float(final[0]) / n,
        train_accuracy=float(final[6]) / n,
        hook=x.hook if isinstance(x, HookView) else None,
        positive_value=positive,
        negative_value=negative,
    )


def _chunk_terms(x: np.ndarray, t: np.ndarray, w: np.ndarray, b: float) -> tuple[Any, ...]:
    """One chunk's share: log-loss, gradient, Hessian blocks and correct predictions."""
    x = x.astype(np.float64, copy=False)
    z = x @ w + b
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
    r = p - t
    s = p * (1.0 - p)
    loss = float((np.logaddexp(0.0, z) - t * z).sum())
    correct = int(((z > 0) == (t > 0.5)).sum())
    return loss, x.T @ r, float(r.sum()), (x * s[:, None]).T @ x, x.T @ s, float(s.sum()), correct


def _add_terms(parts: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    total = list(parts[0])
    for part in parts[1:]:
        for i, value in enumerate(part):
            total[i] = total[i] + value
    return tuple(total)


def split_by_prompt(view: Any, test_fraction: float = 0.25, seed: int = 0) -> tuple[Any, Any]:
    """``(train, test)`` views of a :class:`HookView`, whole prompts on each side."""
    if not 0.0 < test_fraction < 1.0:
        raise ActivationError(f"test_fraction must be in (0, 1), not {test_fraction!r}")
    prompts = np.asarray(view.coords["prompt"].compute())
    unique = np.unique(prompts)
    if len(unique) < 2:
        raise ActivationError("a split by prompt needs at least two prompts")
    rng = np.random.default_rng(seed)
    n_test = min(len(unique) - 1, max(1, round(len(unique) * test_fraction)))
    test_prompts = rng.choice(unique, size=n_test, replace=False)
    is_test = np.isin(prompts, test_prompts)
    return view.isel(np.flatnonzero(~is_test)), view.isel(np.flatnonzero(is_test))
