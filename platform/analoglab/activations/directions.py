"""Difference-of-means directions: ``mean(rows labelled A) − mean(rows labelled B)``.

On a store extracted at the last token of contrasting prompts this is the steering vector of
contrastive activation addition (the experiments' steering method computes the same thing
from contrast pairs); added to the residual stream with ``add_vector`` it moves the model
toward A. Both means come from one pass: per chunk, the rows of each class are summed with a
0/1 weight vector (``wᵀX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.activations.matrix import Rows, aligned, as_matrix, as_vector, dask_modules


@dataclass(frozen=True)
class Direction:
    """``vector = mean(positive) − mean(negative)`` at a hook, with the class sizes."""

    vector: np.ndarray
    positive: str
    negative: str
    n_positive: int
    n_negative: int
    hook: str | None = None

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    @property
    def unit(self) -> np.ndarray:
        """The direction with unit norm."""
        return self.vector / max(self.norm, 1e-30)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vector": self.vector}

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "diff_of_means",
            "hook": self.hook,
            "positive": self.positive,
            "negative": self.negative,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "norm": self.norm,
        }


def class_masks(x: Rows, labels: Any, positive: Any, negative: Any) -> tuple[Any, Any, str, str]:
    """0/1 float weights of the positive and negative rows, and the classes' names.

    With a :class:`HookView` the classes are label names (``negative=None``: every other
    labelled row); otherwise ``labels`` gives a value per row and the classes are values.
    """
    from analoglab.activations.dataset import HookView

    if isinstance(x, HookView):
        if labels is not None:
            raise ActivationError("a HookView carries its labels: do not pass labels too")
        if "label" not in x.coords:
            raise ActivationError("this dataset has no labels; pass labels= with raw rows")
        codes = x.coords["label"]
        pos = codes == x.label_codes(positive)[0]
        if negative is None:
            neg = (codes >= 0) & ~pos
            neg_name = f"not {positive}"
        else:
            neg = codes == x.label_codes(negative)[0]
            neg_name = str(negative)
        return pos, neg, str(positive), neg_name
    if labels is None:
        raise ActivationError("give labels= (one per row) for rows that are not a HookView")
    n = int(as_matrix(x).shape[0])
    lab = as_vector(labels, n, name="labels")
    pos = lab == positive
    neg = ~pos if negative is None else lab == negative
    return pos, neg, str(positive), (f"not {positive}" if negative is None else str(negative))


def diff_of_means(x: Rows, labels: Any = None, *, positive: Any, negative: Any = None) -> Direction:
    """The difference of the class means of the rows of ``x`` (see :func:`class_masks`)."""
    dask, _ = dask_modules()

    from analoglab.activations.dataset import HookView

    m = as_matrix(x)
    pos, neg, pos_name, neg_name = class_masks(x, labels, positive, negative)
    wp = aligned(pos.astype(np.float64), m)
    wn = aligned(neg.astype(np.float64), m)
    xs = m.astype(np.float64)
    sp, sn, cp, cn = dask.compute(wp @ xs, wn @ xs, wp.sum(), wn.sum())
    for name, count in ((pos_name, cp), (neg_name, cn)):
        if count == 0:
            raise ActivationError(f"no rows of class {name!r}; a mean needs at least one")
    vector = np.asarray(sp) / cp - np.asarray(sn) / cn
    hook = x.hook if isinstance(x, HookView) else None
    return Direction(vector, pos_name, neg_name, int(cp), int(cn), hook)
