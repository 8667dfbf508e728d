"""Token positions in a padded batch: addressed relative to each row's real tokens.

The padding rule: a position counts real tokens only, as given by the attention mask.
``-1`` is each row's last real token, ``-2`` the one before it, ``0`` its first real
token, whatever padding sits on either side. With left padding (what generation uses)
every row's last real token is the last column, so ``-1`` picks the last column; with right
padding it picks column ``length - 1`` of each row. A row's real tokens must be contiguous.
Without an attention mask every token is real.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import torch
from torch import Tensor

from analoglab.interventions.errors import InterventionError

Positions: TypeAlias = int | Sequence[int]
"""One position or several, relative to each row's real tokens (``-1`` = last real token)."""


def normalize_positions(positions: Positions) -> tuple[int, ...]:
    """``positions`` as a tuple of ints, checked."""
    items = (positions,) if isinstance(positions, int) else tuple(positions)
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int):
            raise InterventionError(f"a position must be an int (-1 = last real token), not {p!r}")
    return items


def token_indices(
    attention_mask: Tensor | None,
    positions: Sequence[int],
    *,
    batch: int,
    seq_len: int,
    device: torch.device,
) -> Tensor:
    """Column indices ``[batch, len(positions)]`` of ``positions`` in each row.

    ``attention_mask`` is ``[batch, >= seq_len]`` (1 = real token); when it is longer than
    the activations, as in cached generation, its last ``seq_len`` columns are used.
    """
    pos = torch.tensor(positions, dtype=torch.long, device=device).unsqueeze(0)
    if attention_mask is None:
        start = torch.zeros(batch, 1, dtype=torch.long, device=device)
        length = torch.full((batch, 1), seq_len, dtype=torch.long, device=device)
    else:
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch:
            raise InterventionError(
                f"the attention mask has shape {tuple(attention_mask.shape)}; positions need a "
                f"[batch, seq] mask with batch {batch}"
            )
        if attention_mask.shape[1] < seq_len:
            raise InterventionError(
                f"the attention mask has {attention_mask.shape[1]} columns, fewer than the "
                f"{seq_len} positions of the activations"
            )
        real = attention_mask[:, -seq_len:].to(device=device) != 0
        length = real.sum(dim=1, keepdim=True)
        start = real.to(torch.uint8).argmax(dim=1, keepdim=True)
        columns = torch.arange(seq_len, device=device).unsqueeze(0)
        if not torch.equal(real, (columns >= start) & (columns < start + length)):
            raise InterventionError(
                "a row of the attention mask has padding between real tokens; positions are "
                "counted over contiguous real tokens (left or right padding only)"
            )
    if not bool(((pos >= -length) & (pos < length)).all()):
        raise InterventionError(
            f"positions {list(positions)} do not all exist in every row: the shortest row "
            f"has {int(length.min())} real tokens"
        )
    return torch.where(pos >= 0, start + pos, start + length + pos)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids counting real tokens only, as ``generate`` passes them.

    Models with learned absolute positions (gpt2) need these with left padding, so that a
    padded row sees the positions it would see alone; rotary models give the same result
    with or without them, up to rounding.
    """
    ids = attention_mask.long().cumsum(dim=-1) - 1
    return ids.masked_fill(attention_mask == 0, 1)


def gather_positions(x: Tensor, indices: Tensor) -> Tensor:
    """``x[b, indices[b, k]]`` for each row: ``[batch, seq, ...]`` → ``[batch, k, ...]``."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[rows, indices]


def scatter_positions(x: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    """A copy of ``x`` with ``values`` ``[batch, k, ...]`` written at ``indices``."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    out = x.clone()
    out[rows, indices] = values.to(dtype=x.dtype)
    return out
