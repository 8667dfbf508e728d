"""The hook plumbing every operation stands on: :func:`hooks` runs edit functions at hook points.

An *edit* is ``fn(activation, forward) -> Tensor | None``. It gets the activation in its
canonical shape (``[batch, pos, d_model]``, or ``[batch, pos, n_heads, d_head]`` for
``attn.hook_z``) and returns a replacement, or ``None`` to leave it as it is. ``forward`` is
the :class:`Forward` pass it runs in: its attention mask and the columns of positions
counted over real tokens. Edits must not change the activation in place: return a new
tensor.

Hooks are PyTorch forward hooks and forward pre-hooks on the modules the architecture table
names, registered when the ``with`` block is entered and removed when it is left, also when
the forward pass raises. Edits at one hook point run in the order their contexts were
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

from analoglab.interventions.architectures import ModelLayout, layout_of
from analoglab.interventions.errors import InterventionError
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
def hooks_installed(model: nn.Module, edits: Edits, *, track_mask: bool) -> Iterator[ModelLayout]:
    """:func:`hooks`; ``track_mask=False`` saves the root hooks for edits that use no positions."""
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

    forward = Forward()
    handles: list[RemovableHandle] = []
    try:
        if track_mask:
            handles.extend(_track_attention_mask(model, forward))
        for point, edit in resolved.items():
            handles.append(_register(modules[point], point, edit, forward, layout))
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


def _register(
    module: nn.Module, point: HookPoint, edit: Edit, forward: Forward, layout: ModelLayout
) -> RemovableHandle:
    if point.site == "hook_resid_pre":
        return module.register_forward_pre_hook(
            _input_hook(edit, forward, name=point.name), with_kwargs=True
        )
    if point.site == "attn.hook_z":
        return module.register_forward_pre_hook(
            _input_hook(edit, forward, heads=(layout.n_heads, layout.d_head), name=point.name),
            with_kwargs=True,
        )
    return module.register_forward_hook(_output_hook(edit, forward, name=point.name))


PreHook: TypeAlias = Callable[
    [nn.Module, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None
]


def _input_hook(
    edit: Edit, forward: Forward, *, heads: tuple[int, int] | None = None, name: str = ""
) -> PreHook:
    """A pre-hook editing a module's first input (positional, or ``hidden_states=``)."""

    def hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        x = args[0] if args else kwargs["hidden_states"]
        _check_sequence(x, name)
        if heads is not None:
            if x.shape[-1] != heads[0] * heads[1]:
                raise InterventionError(
                    f"{name}: the attention output has {x.shape[-1]} features, not n_heads × "
                    f"d_head = {heads[0]} × {heads[1]}; the architecture table entry is wrong"
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
        x = output[0] if isinstance(output, tuple) else output
        _check_sequence(x, name)
        new = edit(x, forward)
        if new is None or new is x:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _check_sequence(x: Any, name: str) -> None:
    # A cheap guard against a table entry naming a module that does not carry
    # [batch, pos, features] (OPT's MLP, for one, flattens batch and positions).
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InterventionError(
            f"{name}: the hooked module carries {shape}, not [batch, pos, features]; the "
            "architecture table entry names the wrong module"
        )
