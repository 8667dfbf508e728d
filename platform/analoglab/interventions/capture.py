"""Capturing activations: :func:`capture` records hook points during forward passes.

Capture costs one forward hook per hook point and no copy: the stored tensors are the
forward pass's own activations, detached (``attn.hook_z`` is a view of the output
projection's input). Copies are made only when asked for: at chosen positions, or on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from analoglab.interventions.architectures import layout_of
from analoglab.interventions.hooks import Edit, Forward, PointLike, hooks_installed
from analoglab.interventions.names import HookPoint, hook_point
from analoglab.interventions.positions import Positions, gather_positions, normalize_positions


@contextmanager
def capture(
    model: nn.Module,
    points: PointLike | Iterable[PointLike],
    *,
    positions: Positions | None = None,
    to_cpu: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Record ``points`` during each forward pass in the block, into the dict it yields.

    Keys are hook point names; each forward pass overwrites what the previous one stored.
    Values are ``[batch, pos, ...]``, or ``[batch, len(positions), ...]`` at ``positions``
    (``-1`` = each row's last real token, see :mod:`.positions`); detached; moved to the CPU
    when ``to_cpu``. They share memory with the forward pass: clone one before changing it.

    Example::

        with capture(model, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]) as cache:
            model(**batch)
        cache["blocks.1.attn.hook_z"].shape  # [batch, pos, n_heads, d_head]
    """
    n_layers = layout_of(model).n_layers
    names = [points] if isinstance(points, str | HookPoint) else list(points)
    parsed = [hook_point(p, n_layers) for p in names]
    chosen = None if positions is None else normalize_positions(positions)
    cache: dict[str, Tensor] = {}

    def store(name: str) -> Edit:
        def edit(x: Tensor, forward: Forward) -> None:
            value = x.detach()
            if chosen is not None:
                value = gather_positions(value, forward.token_indices(chosen, value))
            cache[name] = value.to("cpu") if to_cpu else value

        return edit

    edits: dict[PointLike, Edit] = {point: store(point.name) for point in parsed}
    with hooks_installed(model, edits, track_mask=chosen is not None):
        yield cache
