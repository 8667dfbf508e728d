"""Nearest-direction search: which tokens activate a direction most.

Every row is scored by its projection on the unit direction, ``x · v / ‖v‖`` (or by cosine
similarity, ``cosine=True``), lazily per chunk; ``dask.array.argtopk`` keeps the ``k`` best
of each chunk and merges them, so nothing of size ``n`` is gathered. For each hit the row's
coordinates are read back (prompt, position, token id) and, where a tokenizer is given and
the store holds every token, the token and the few tokens before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.activations.matrix import as_matrix, dask_modules


@dataclass(frozen=True)
class TokenHit:
    """One row that activates the direction strongly."""

    row: int
    score: float
    prompt: int
    position: int
    token_id: int
    token: str | None = None
    context: str | None = None
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_activating(
    view: Any,
    direction: Any,
    k: int = 10,
    *,
    cosine: bool = False,
    lowest: bool = False,
    tokenizer: Any = None,
    context: int = 8,
) -> list[TokenHit]:
    """The ``k`` rows of ``view`` (a :class:`HookView`) scoring highest along ``direction``
    (``lowest=True``: lowest), best first. ``direction`` is a vector or anything with a
    ``vector`` (a :class:`~analoglab.activations.directions.Direction`) or ``weights`` (a
    probe)."""
    dask, da = dask_modules()

    from analoglab.activations.dataset import HookView

    if not isinstance(view, HookView):
        raise ActivationError("search needs a HookView (dataset[hook]) for the rows' tokens")
    vector = getattr(direction, "vector", getattr(direction, "weights", direction))
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    m = as_matrix(view).astype(np.float64)
    if v.shape[0] != m.shape[1]:
        raise ActivationError(f"the direction has {v.shape[0]} entries, the rows {m.shape[1]}")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ActivationError("the direction is zero")
    score = m @ (v / norm)
    if cosine:
        score = score / da.maximum(da.sqrt((m**2).sum(axis=1)), 1e-30)
    k = min(int(k), view.n_rows)
    if k < 1:
        raise ActivationError("k must be at least 1")
    rows = np.asarray(da.argtopk(-score if lowest else score, k).compute())
    picked = dask.compute(
        score[rows], *(view.coords[c][rows] for c in ("prompt", "position", "token_id"))
    )
    scores, prompts, positions, token_ids = (np.asarray(a) for a in picked)
    labels = view.labels()[rows] if "label" in view.coords else None
    contexts = _contexts(view, rows, positions, context) if tokenizer is not None else None
    hits = []
    for i, row in enumerate(rows):
        token = context_text = None
        if tokenizer is not None and token_ids[i] >= 0:
            token = tokenizer.decode([int(token_ids[i])])
            if contexts is not None:
                context_text = tokenizer.decode([int(t) for t in contexts[i]])
        hits.append(
            TokenHit(
                row=int(row),
                score=float(scores[i]),
                prompt=int(prompts[i]),
                position=int(positions[i]),
                token_id=int(token_ids[i]),
                token=token,
                context=context_text,
                label=None if labels is None else (str(labels[i]) or None),
            )
        )
    return hits


def _contexts(view: Any, rows: np.ndarray, positions: np.ndarray, width: int) -> list[Any] | None:
    """The token ids of up to ``width`` rows before each hit and the hit, when rows are the
    tokens of their prompts in order (``positions="all"``); else ``None``."""
    dask, _ = dask_modules()

    if width <= 0 or (positions < 0).any():
        return None
    ids = view.coords["token_id"]
    prompts = view.coords["prompt"]
    spans = [
        (max(0, int(r) - min(int(p), width)), int(r) + 1)
        for r, p in zip(rows, positions, strict=True)
    ]
    got = dask.compute(*[(ids[a:b], prompts[a:b]) for a, b in spans])
    out = []
    for tok, prm in got:
        prm = np.asarray(prm)
        out.append(np.asarray(tok)[prm == prm[-1]])  # the hit's own prompt only
    return out
