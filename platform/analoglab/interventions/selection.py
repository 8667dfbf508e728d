"""Which part of an activation an operation touches: some positions, some heads, or all.

A :class:`Selection` of ``positions`` (counted over real tokens, see :mod:`.positions`) and
``heads`` (``attn.hook_z`` only) replaces the selected part of an activation with new values
and leaves the rest as it was, without Python loops over positions or heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.hooks import Forward
from analoglab.interventions.names import HookPoint
from analoglab.interventions.positions import (
    Positions,
    gather_positions,
    normalize_positions,
    scatter_positions,
)


@dataclass(frozen=True)
class Selection:
    """Positions (``None``: all) × heads (``None``: all, or the site has no heads)."""

    positions: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    _head_masks: dict[tuple[int, torch.device], Tensor] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(
        cls,
        point: HookPoint,
        n_heads: int,
        *,
        positions: Positions | None,
        heads: Sequence[int] | None,
    ) -> Selection:
        """A checked selection at ``point`` of a model with ``n_heads`` heads."""
        if heads is not None:
            if point.site != "attn.hook_z":
                raise InterventionError(
                    f"heads can be chosen only at attn.hook_z, not at {point.name}"
                )
            heads = tuple(heads)
            for head in heads:
                if isinstance(head, bool) or not isinstance(head, int):
                    raise InterventionError(f"a head must be an int index, not {head!r}")
                if not 0 <= head < n_heads:
                    raise InterventionError(
                        f"head {head} is out of range: {point.name} has {n_heads} heads "
                        f"(0 to {n_heads - 1})"
                    )
        chosen = None if positions is None else normalize_positions(positions)
        return cls(chosen, heads)

    def replace(self, x: Tensor, forward: Forward, values: Tensor) -> Tensor:
        """A new tensor: ``x`` with the selection replaced by ``values``.

        ``values`` broadcasts against ``x`` (``[batch, pos, ...]``), or against
        ``x`` at the selected positions (``[batch, len(positions), ...]``) when there are some.
        """
        values = values.to(device=x.device, dtype=x.dtype)
        head_mask = self._head_mask(x)
        if self.positions is None:
            if head_mask is None:
                return values.expand_as(x).clone(memory_format=torch.contiguous_format)
            return torch.where(head_mask, values, x)
        indices = forward.token_indices(self.positions, x)
        current = gather_positions(x, indices)
        new = values.expand_as(current)
        if head_mask is not None:
            new = torch.where(head_mask, new, current)
        return scatter_positions(x, indices, new)

    def add(self, x: Tensor, forward: Forward, delta: Tensor) -> Tensor:
        """A new tensor: ``x`` plus ``delta`` on the selection."""
        delta = delta.to(device=x.device, dtype=x.dtype)
        head_mask = self._head_mask(x)
        if head_mask is not None:
            delta = delta * head_mask
        if self.positions is None:
            return x + delta
        indices = forward.token_indices(self.positions, x)
        return scatter_positions(x, indices, gather_positions(x, indices) + delta)

    def _head_mask(self, x: Tensor) -> Tensor | None:
        """``[n_heads, 1]``, True on the selected heads; ``None`` when all are selected."""
        if self.heads is None:
            return None
        key = (x.shape[-2], x.device)
        mask = self._head_masks.get(key)
        if mask is None:
            mask = torch.zeros(x.shape[-2], 1, dtype=torch.bool)
            mask[list(self.heads)] = True
            mask = self._head_masks[key] = mask.to(x.device)
        return mask
