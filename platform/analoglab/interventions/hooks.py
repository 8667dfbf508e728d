"""The hook plumbing every operation stands on: :func:`hooks` runs edit functions at hook points.

An *edit* is ``fn(activation, forward) -> Tensor | None``. It gets the activation in its
canonical shape (``[batch, pos, d_model]``, or ``[batch, pos, n_heads, d_head]`` for
``attn.hook_z``) and returns a replacement, or ``None`` to leave it as it is. ``forward`` is
the :class:`Forward` pass it runs in: its attention mask and the columns of positions
counted over real tokens. Edits must not change the activation in place: return a new
tensor.

Hooks are PyTorch forward hooks and forward pre-hooks on the modules the model's verified
layout (:mod:`.layout`, :mod:`.verification`) names, registered when the ``with`` block is
entered and removed when it is left, also when the forward pass raises. Where the layout says
so, a hook shows edits the activation as the residual stream sees it: scaled by the block's
residual multiplier, unflattened from ``[batch·pos, features]``, or copied where the model
changes it in place later. Edits at one hook point run in the order their contexts were
entered; edits at different hook points in forward order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.layout import ModelLayout, SitePlan
from analoglab.interventions.names import HookPoint, hook_point
from analoglab.interventions.positions import token_indices


class Forward:
    """What an edit knows about the forward pass it runs in.

    The attention mask is read from the ``attention_mask`` argument of the call to the model
    the hooks were installed on; calling a submodule directly leaves it unset (every token
    real).
    """

    __slots__ = ("_indices", "attention_mask")

    def __init__(self) -> None:
        self.attention_mask: Tensor | None = None
        self._indices: dict[tuple[tuple[int, ...], int, int, torch.device], Tensor] = {}

    def begin(self, attention_mask: Tensor | None) -> None:
        self.attention_mask = attention_mask
        self._indices.clear()

    def end(self) -> None:
        self.begin(None)

    def token_indices(self, positions: tuple[int, ...], activation: Tensor) -> Tensor:
        """Columns ``[batch, len(positions)]`` of ``positions`` (see :mod:`.positions`).

        Computed once per forward pass and reused by every hook point.
        """
        batch, seq_len = activation.shape[0], activation.shape[1]
        key = (positions, batch, seq_len, activation.device)
        found = self._indices.get(key)
        if found is None:
            found = token_indices(
                self.attention_mask,
                positions,
                batch=batch,
                seq_len=seq_len,
                device=activation.device,
            )
            self._indices[key] = found
        return found


Edit: TypeAlias = Callable[[Tensor, Forward], Tensor | None]
"""``fn(activation, forward)``: a replacement activation, or ``None`` to keep it."""

PointLike: TypeAlias = str | HookPoint
"""A hook point, by name (``"blocks.0.hook_resid_post"``) or as a :class:`HookPoint`."""

Edits: TypeAlias = Mapping[str, Edit] | Mapping[HookPoint, Edit] | Mapping[PointLike, Edit]
"""Edits by hook point (a ``Mapping`` is invariant in its keys: this admits all three)."""


@contextmanager
def hooks(model: nn.Module, edits: Edits) -> Iterator[ModelLayout]:
    """Run ``edits`` at their hook points during every forward pass inside the block.

    Yields the model's :class:`ModelLayout`. Example, doubling the residual stream::

        with hooks(model, {"blocks.1.hook_resid_post": lambda x, fwd: 2 * x}):
            logits = model(**batch).logits
    """
    with hooks_installed(model, edits, track_mask=True) as layout:
        yield layout


@contextmanager
def hooks_installed(
    model: nn.Module, edits: Edits, *, track_mask: bool, layout: ModelLayout | None = None
) -> Iterator[ModelLayout]:
    """:func:`hooks`; ``track_mask=False`` saves the root hooks for edits that use no positions.

    ``layout`` is the model's verified layout unless given (the self-test gives the layout
    it is verifying).
    """
    if layout is None:
        # verification runs its self-test through this module: imported here, not at the top
        from analoglab.interventions.verification import layout_of

        layout = layout_of(model)
    resolved: dict[HookPoint, Edit] = {}
    for point, edit in edits.items():
        parsed = hook_point(point, layout.n_layers)
        if parsed in resolved:
            raise InterventionError(f"hook point {parsed.name} is given twice")
        if not callable(edit):
            raise InterventionError(f"the edit at {parsed.name} is not callable: {edit!r}")
        resolved[parsed] = edit
    modules = {point: layout.module(point.block, point.site) for point in resolved}
    plans = {point: layout.site(point.block, point.site) for point in resolved}

    forward = Forward()
    handles: list[RemovableHandle] = []
    shapes: dict[int, tuple[int, int]] = {}
    try:
        if track_mask:
            handles.extend(_track_attention_mask(model, forward))
        for block in sorted({p.block for p in resolved if plans[p].flat}):
            handles.append(_track_block_shape(layout.blocks[block], block, shapes))
        for point, edit in resolved.items():
            handles.append(
                _register(modules[point], point, edit, forward, layout, plans[point], shapes)
            )
        yield layout
    finally:
        for handle in handles:
            handle.remove()
        forward.end()


def _track_attention_mask(model: nn.Module, forward: Forward) -> list[RemovableHandle]:
    signature: list[inspect.Signature] = []

    def begin(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            if not signature:
                signature.append(inspect.signature(module.forward))
            try:
                mask = signature[0].bind_partial(*args, **kwargs).arguments.get("attention_mask")
            except TypeError:  # the forward itself will say what is wrong with the call
                mask = None
        forward.begin(mask if isinstance(mask, Tensor) else None)

    def end(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        forward.end()

    return [
        model.register_forward_pre_hook(begin, with_kwargs=True),
        model.register_forward_hook(end, always_call=True),
    ]


def _track_block_shape(
    block: nn.Module, index: int, shapes: dict[int, tuple[int, int]]
) -> RemovableHandle:
    """Keep ``[batch, pos]`` of the block's input, to unflatten ``[batch·pos, ...]`` sites."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, Tensor) and x.dim() == 3:
            shapes[index] = (x.shape[0], x.shape[1])

    return block.register_forward_pre_hook(hook, with_kwargs=True)


def _register(
    module: nn.Module,
    point: HookPoint,
    edit: Edit,
    forward: Forward,
    layout: ModelLayout,
    plan: SitePlan,
    shapes: dict[int, tuple[int, int]],
) -> RemovableHandle:
    if plan.kind == "input":
        heads = (layout.n_heads, layout.d_head) if point.site == "attn.hook_z" else None
        return module.register_forward_pre_hook(
            _input_hook(edit, forward, heads=heads, name=point.name, copy=plan.copy),
            with_kwargs=True,
        )
    if plan == SitePlan("", "output") or plan == SitePlan(plan.path, "output"):
        return module.register_forward_hook(_output_hook(edit, forward, name=point.name))
    return module.register_forward_hook(
        _site_output_hook(edit, forward, point, plan, lambda: shapes.get(point.block))
    )


PreHook: TypeAlias = Callable[
    [nn.Module, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None
]


def _input_hook(
    edit: Edit,
    forward: Forward,
    *,
    heads: tuple[int, int] | None = None,
    name: str = "",
    copy: bool = False,
) -> PreHook:
    """A pre-hook editing a module's first input (positional, or ``hidden_states=``)."""

    def hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        x = args[0] if args else kwargs["hidden_states"]
        _check_sequence(x, name)
        if copy:
            x = x.clone()
        if heads is not None:
            if x.shape[-1] != heads[0] * heads[1]:
                raise InterventionError(
                    f"{name}: the attention output has {x.shape[-1]} features, not n_heads × "
                    f"d_head = {heads[0]} × {heads[1]}; the layout is wrong (override it with "
                    "register_architecture)"
                )
            new = edit(x.unflatten(-1, heads), forward)
            if new is not None:
                new = new.flatten(-2)
        else:
            new = edit(x, forward)
        if new is None or new is x:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return hook


def _output_hook(
    edit: Edit, forward: Forward, *, name: str = ""
) -> Callable[[nn.Module, Any, Any], Any]:
    """A forward hook editing a module's output (the first element where it is a tuple)."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        x = output[0] if isinstance(output, tuple | list) else output
        _check_sequence(x, name)
        new = edit(x, forward)
        if new is None or new is x:
            return None
        if isinstance(output, list):  # openai-gpt's blocks return a list
            return [new, *output[1:]]
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _site_output_hook(
    edit: Edit,
    forward: Forward,
    point: HookPoint,
    plan: SitePlan,
    batch_pos: Callable[[], tuple[int, int] | None],
) -> Callable[[nn.Module, Any, Any], Any]:
    """A forward hook showing edits the site as the stream sees it (see :class:`SitePlan`)."""
    name = point.name

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        raw = output[plan.pick] if isinstance(output, tuple | list) else output
        x = raw
        if plan.flat:
            shape = batch_pos()
            if not isinstance(raw, Tensor) or shape is None or raw.shape[0] != shape[0] * shape[1]:
                _check_sequence(raw, name)
            else:
                x = raw.view(shape[0], shape[1], *raw.shape[1:])
        _check_sequence(x, name)
        if plan.top_k:
            seen = x.topk(plan.top_k, dim=-1).indices
        elif plan.scale != 1.0:
            seen = x * plan.scale
        elif plan.copy:
            seen = x.clone()
        else:
            seen = x
        new = edit(seen, forward)
        if new is None or new is seen:
            return None
        if plan.read_only:
            raise InterventionError(
                f"{name} is read-only: capture it; change what the router sees at "
                "hook_resid_pre or hook_resid_post instead"
            )
        if plan.scale != 1.0:
            new = new / plan.scale
        if plan.flat:
            new = new.reshape(raw.shape)
        if isinstance(output, tuple | list):
            return type(output)((*output[: plan.pick], new, *output[plan.pick + 1 :]))
        return new

    return hook


def _check_sequence(x: Any, name: str) -> None:
    # A cheap guard against a table entry naming a module that does not carry
    # [batch, pos, features] (OPT's MLP, for one, flattens batch and positions).
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InterventionError(
            f"{name}: the hooked module carries {shape}, not [batch, pos, features]; the "
            "layout names the wrong module (override it with register_architecture)"
        )
