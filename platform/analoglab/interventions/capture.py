"""Capturing activations: :func:`capture` records hook points during forward passes.

Capture costs one forward hook per hook point and, mostly, no copy: the stored tensors are the
forward pass's own activations, detached (``attn.hook_z`` is a view of the output
projection's input). Captured values are values all the same: where the model changes an
activation in place after the hook has seen it (falcon adds attention into its MLP's output),
the layout says so and that site is copied. Copies are also made when asked for: at chosen
positions, or on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.hooks import Edit, Forward, PointLike, hooks_installed
from analoglab.interventions.layout import ModelLayout
from analoglab.interventions.names import HookPoint, hook_point
from analoglab.interventions.positions import Positions, gather_positions, normalize_positions


@contextmanager
def capture(
    model: nn.Module,
    points: PointLike | Iterable[PointLike],
    *,
    positions: Positions | None = None,
    to_cpu: bool = False,
    copy: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Record ``points`` during each forward pass in the block, into the dict it yields.

    Keys are hook point names; each forward pass overwrites what the previous one stored.
    Values are ``[batch, pos, ...]``, or ``[batch, len(positions), ...]`` at ``positions``
    (``-1`` = each row's last real token, see :mod:`.positions`); detached; moved to the CPU
    when ``to_cpu``; copied when ``copy`` (else they share memory with the forward pass: clone
    one before changing it).

    Example::

        with capture(model, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]) as cache:
            model(**batch)
        cache["blocks.1.attn.hook_z"].shape  # [batch, pos, n_heads, d_head]
    """
    from analoglab.interventions.verification import layout_of

    layout = layout_of(model)
    with capture_with(model, points, layout, positions=positions, to_cpu=to_cpu, copy=copy) as c:
        yield c


@contextmanager
def capture_with(
    model: nn.Module,
    points: PointLike | Iterable[PointLike],
    layout: ModelLayout,
    *,
    positions: Positions | None = None,
    to_cpu: bool = False,
    copy: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """:func:`capture` with a given layout (the self-test captures with the one it checks)."""
    n_layers = layout.n_layers
    names = [points] if isinstance(points, str | HookPoint) else list(points)
    parsed = [hook_point(p, n_layers) for p in names]
    chosen = None if positions is None else normalize_positions(positions)
    cache: dict[str, Tensor] = {}

    shared: dict[str, tuple[Tensor, int]] = {}  # stored without a copy: its version then

    def store(name: str) -> Edit:
        def edit(x: Tensor, forward: Forward) -> None:
            value = x.detach()
            if chosen is not None:
                value = gather_positions(value, forward.token_indices(chosen, value))
            value = value.to("cpu") if to_cpu else value
            if copy and value.data_ptr() == x.data_ptr():
                value = value.clone()
            cache[name] = value
            version = _version(value) if value.data_ptr() == x.data_ptr() else None
            if version is None:
                shared.pop(name, None)
            else:
                shared[name] = (value, version)

        return edit

    def still_values(module: nn.Module, args: object, output: object) -> None:
        # The layout copies what its probe saw the model change in place; this catches
        # anything it did not see, so a captured value is never silently another one.
        for name, (value, version) in shared.items():
            if _version(value) != version:
                raise InterventionError(
                    f"{name} was changed in place after it was captured (the model reuses "
                    "its memory there); capture it with copy=True"
                )
        shared.clear()

    edits: dict[PointLike, Edit] = {point: store(point.name) for point in parsed}
    check = model.register_forward_hook(still_values)
    try:
        with hooks_installed(model, edits, track_mask=chosen is not None, layout=layout):
            yield cache
    finally:
        check.remove()


def _version(x: Tensor) -> int | None:
    """``x``'s version counter (bumped by in-place changes); None for inference tensors."""
    try:
        return int(x._version)
    except RuntimeError:
        return None
