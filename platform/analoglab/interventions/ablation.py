"""Ablation: :func:`ablate` zeroes an activation, or sets it to a given mean.

Ablate attention heads at ``attn.hook_z`` (the head's output before the output projection,
so a zeroed head contributes only the projection's bias) and an MLP at ``hook_mlp_out``;
any other hook point works the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.hooks import Forward, PointLike, hooks_installed
from analoglab.interventions.names import hook_point
from analoglab.interventions.positions import Positions
from analoglab.interventions.selection import Selection
from analoglab.interventions.verification import layout_of


@contextmanager
def ablate(
    model: nn.Module,
    point: PointLike,
    *,
    mode: Literal["zero", "mean"] = "zero",
    mean: Tensor | None = None,
    heads: Sequence[int] | None = None,
    positions: Positions | None = None,
) -> Iterator[None]:
    """Replace the activation at ``point`` by zeros (``mode="zero"``) or by ``mean``.

    ``mean`` (for ``mode="mean"``) is ``[d_model]``, or ``[n_heads, d_head]`` at
    ``attn.hook_z`` (each head's mean; only the chosen ``heads`` are used), for instance the
    mean of captured activations over a reference set. ``heads`` (``attn.hook_z`` only) and
    ``positions`` (``-1`` = each row's last real token) restrict what is ablated; an empty
    list ablates nothing.

    Example, zero-ablating head 3 of block 1::

        with ablate(model, "blocks.1.attn.hook_z", heads=[3]):
            logits = model(**batch).logits
    """
    layout = layout_of(model)
    parsed = hook_point(point, layout.n_layers)
    selection = Selection.build(parsed, layout.n_heads, positions=positions, heads=heads)
    expected = layout.activation_shape(parsed.site)
    if mode == "zero":
        if mean is not None:
            raise InterventionError("a mean was given for a zero ablation; pass mode='mean'")
        replacement = torch.zeros(())
    elif mode == "mean":
        if not isinstance(mean, Tensor):
            raise InterventionError(f"mean ablation of {parsed.name} needs a mean tensor")
        if tuple(mean.shape) != expected:
            raise InterventionError(
                f"the mean for {parsed.name} has shape {tuple(mean.shape)}; it needs {expected}"
            )
        replacement = mean.detach()
    else:
        raise InterventionError(f"unknown ablation mode {mode!r}; use 'zero' or 'mean'")

    converted: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # moved once, not per pass

    def edit(x: Tensor, forward: Forward) -> Tensor:
        key = (x.device, x.dtype)
        if key not in converted:
            converted[key] = replacement.to(device=x.device, dtype=x.dtype)
        return selection.replace(x, forward, converted[key])

    with hooks_installed(model, {parsed: edit}, track_mask=selection.positions is not None):
        yield
