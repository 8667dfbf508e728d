"""Activation patching: :func:`patch` replaces activations with ones stored from another run.

The stored activations come from :func:`~analoglab.interventions.capture.capture`: capture a
clean run, then patch it into a corrupted one. With ``positions``, capture and patch at the
same positions: as they count real tokens (``-1`` = last real token), the two runs may
differ in length and padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.hooks import Edit, Forward, PointLike, hooks_installed
from analoglab.interventions.names import HookPoint, hook_point
from analoglab.interventions.positions import Positions
from analoglab.interventions.selection import Selection
from analoglab.interventions.verification import layout_of


@contextmanager
def patch(
    model: nn.Module,
    sources: Mapping[str, Tensor] | Mapping[HookPoint, Tensor] | Mapping[PointLike, Tensor],
    *,
    positions: Positions | None = None,
    heads: Sequence[int] | None = None,
) -> Iterator[None]:
    """Replace the activation at each hook point of ``sources`` by the stored tensor.

    Without ``positions`` a source has the activation's shape ``[batch, pos, ...]``; with
    them, ``[batch, len(positions), ...]`` (as :func:`capture` stores it with the same
    positions). A batch of 1 is used for every row. ``heads`` (``attn.hook_z`` points only)
    patches only those heads.

    Example, patching the clean last-token residual stream into a corrupted prompt::

        with capture(model, "blocks.1.hook_resid_post", positions=[-1]) as clean:
            model(**clean_batch)
        with patch(model, clean, positions=[-1]):
            logits = model(**corrupted_batch).logits
    """
    layout = layout_of(model)
    edits: dict[PointLike, Edit] = {}
    selections: list[Selection] = []
    for point, source in sources.items():
        parsed = hook_point(point, layout.n_layers)
        if not isinstance(source, Tensor):
            raise InterventionError(f"the source for {parsed.name} is not a tensor: {source!r}")
        selection = Selection.build(parsed, layout.n_heads, positions=positions, heads=heads)
        trailing = layout.activation_shape(parsed.site)
        if source.dim() != 2 + len(trailing) or tuple(source.shape[2:]) != trailing:
            raise InterventionError(
                f"the source for {parsed.name} has shape {tuple(source.shape)}; it needs "
                f"[batch, {'pos' if positions is None else 'len(positions)'}, "
                f"{', '.join(map(str, trailing))}]"
            )
        edits[parsed] = _patch_with(parsed, selection, source.detach())
        selections.append(selection)

    track = any(s.positions is not None for s in selections)
    with hooks_installed(model, edits, track_mask=track):
        yield


def _patch_with(point: HookPoint, selection: Selection, source: Tensor) -> Edit:
    def edit(x: Tensor, forward: Forward) -> Tensor:
        batch = x.shape[0]
        steps = x.shape[1] if selection.positions is None else len(selection.positions)
        if source.shape[0] not in (1, batch) or source.shape[1] != steps:
            raise InterventionError(
                f"the source for {point.name} has shape {tuple(source.shape)}, which does not "
                f"fit this run's batch of {batch} with {steps} "
                f"{'positions' if selection.positions is None else 'chosen positions'}"
            )
        return selection.replace(x, forward, source)

    return edit
