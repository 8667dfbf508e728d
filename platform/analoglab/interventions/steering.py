"""Steering: :func:`add_vector` adds a scaled vector to a hook point's activation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.hooks import Forward, PointLike, hooks_installed
from analoglab.interventions.names import hook_point
from analoglab.interventions.positions import Positions
from analoglab.interventions.selection import Selection
from analoglab.interventions.verification import layout_of


@contextmanager
def add_vector(
    model: nn.Module,
    point: PointLike,
    vector: Tensor,
    *,
    scale: float = 1.0,
    positions: Positions | None = None,
) -> Iterator[None]:
    """Add ``scale * vector`` at ``point``, at every position or only at ``positions``.

    ``vector`` is ``[d_model]``, or ``[n_heads, d_head]`` at ``attn.hook_z``; it may require
    grad, to learn a steering vector. Positions count real tokens (``-1`` = each row's last
    real token, see :mod:`.positions`).

    Example, steering at the middle of any model::

        name = layout_of(model).hook_name("hook_resid_post", depth=0.5)
        with add_vector(model, name, direction, scale=4.0, positions=[-1]):
            logits = model(**batch).logits
    """
    layout = layout_of(model)
    parsed = hook_point(point, layout.n_layers)
    expected = layout.activation_shape(parsed.site)
    if not isinstance(vector, Tensor) or tuple(vector.shape) != expected:
        shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise InterventionError(
            f"the steering vector for {parsed.name} has shape {shape}; it needs {expected}"
        )
    selection = Selection.build(parsed, layout.n_heads, positions=positions, heads=None)
    # One copy per device and dtype; a vector that requires grad is scaled on every forward
    # pass, so that each pass has its own graph back to it.
    converted: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def edit(x: Tensor, forward: Forward) -> Tensor:
        key = (x.device, x.dtype)
        delta = converted.get(key)
        if delta is None:
            delta = (vector * scale).to(device=x.device, dtype=x.dtype)
            if not delta.requires_grad:
                converted[key] = delta
        return selection.add(x, forward, delta)

    with hooks_installed(model, {parsed: edit}, track_mask=selection.positions is not None):
        yield
