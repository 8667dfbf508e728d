"""Layouts found, not listed: where each hook site sits in a loaded model, and what it means.

:func:`infer_plan` reads the module tree and the config (the list of blocks, each block's
attention and its output projection, its MLP or mixture of experts, its norms, the final
norm), then runs **one probing forward pass** on a few random tokens with a recorder on every
module of every block, and reads the data flow off it:

- which module's output is what a block adds to its residual stream: the attention (or a
  norm applied to its output, where the norm sits after the sublayer: gemma2/3, olmo2), the
  same for the MLP; parallel blocks (gpt-j, falcon, gpt-neox) add both to the block's input;
- the scale the block multiplies them by (granite's ``residual_multiplier``), fitted and
  accepted only where a config attribute names it;
- modules that carry ``[batch·pos, features]`` (OPT's ``fc2``, MoE routers): hooked there
  and seen by edits as ``[batch, pos, features]``;
- activations the model changes *in place* after a hook has seen them (falcon adds attention
  into the MLP's output): hooked with a copy, so a captured value stays what it was;
- mixers that are not attention (Mamba, linear attention, recurrences): their blocks refuse
  ``attn.hook_z`` and ``hook_attn_out``, with the reason, and keep the other sites.

The result is a :class:`LayoutPlan` of dotted paths (cacheable, model-independent);
:func:`resolve` binds it to one model as a :class:`ModelLayout`. Entries of
:data:`~.architectures.ARCHITECTURES` override what is inferred.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from analoglab.interventions.architectures import Architecture
from analoglab.interventions.errors import InterventionError
from analoglab.interventions.names import (
    ALL_SITES,
    MOE_SITES,
    SITES,
    Site,
    block_at_depth,
    check_block,
    hook_name,
)

_HOW_TO_OVERRIDE = (
    "name the module with analoglab.interventions.register_architecture(Architecture(...)); "
    "see docs/interventions.md, 'Architectures'"
)
_NORM = re.compile(r"norm", re.IGNORECASE)
_ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
_MLP = re.compile(r"mlp|moe|feedforward|feed_forward|ffn|ffw|expert", re.IGNORECASE)
_ROUTER = re.compile(r"gate|router", re.IGNORECASE)
# Relative error under which two float32 computations of one value count as equal.
_SAME = 1e-4


@dataclass(frozen=True)
class SitePlan:
    """Where one site of one block is hooked, and how an edit sees it."""

    path: str
    """The module, relative to the block ("" is the block itself)."""
    kind: Literal["input", "output"]
    """Its first input (``hook_resid_pre``, ``attn.hook_z``) or its output."""
    scale: float = 1.0
    """The site is ``scale`` × the module's output (what the block adds to the stream)."""
    flat: bool = False
    """The module carries ``[batch·pos, features]``; edits see ``[batch, pos, features]``."""
    copy: bool = False
    """The model changes this tensor in place later: edits (and captures) get a copy."""
    pick: int = 0
    """Which element of a tuple output is the site."""
    top_k: int = 0
    """``mlp.hook_experts`` from router logits only: the ``top_k`` largest logits' indices."""
    read_only: bool = False
    """Capture only (router sites): an edit that returns a tensor is refused."""


@dataclass(frozen=True)
class BlockPlan:
    """Every site of one block: where it is hooked, or why this block has none."""

    sites: Mapping[Site, SitePlan]
    refused: Mapping[Site, str] = field(default_factory=dict)
    mixer: str | None = None
    """A token mixer that is not attention (a Mamba, a linear attention), relative to the
    block: its output is added to the stream (times ``mixer_scale``) in place of attention's."""
    mixer_scale: float = 1.0
    meaning: str = ""
    """How the block adds to its stream, in words (for reports and the docs)."""


@dataclass(frozen=True)
class LayoutPlan:
    """A model's layout as paths: what :func:`infer_plan` finds, before any model is bound."""

    model_type: str
    blocks: str
    final_norm: str | None
    n_heads: int
    d_head: int
    d_model: int
    block_plans: tuple[BlockPlan, ...]
    notes: tuple[str, ...] = ()

    def refuse(self, refusals: Mapping[tuple[int, Site], str]) -> LayoutPlan:
        """This plan with the sites of ``refusals`` (block, site) → reason taken away."""
        plans = list(self.block_plans)
        for (block, site), reason in refusals.items():
            old = plans[block]
            plans[block] = BlockPlan(
                {s: p for s, p in old.sites.items() if s != site},
                {**old.refused, site: reason},
                old.mixer,
                old.mixer_scale,
                old.meaning,
            )
        return LayoutPlan(
            self.model_type,
            self.blocks,
            self.final_norm,
            self.n_heads,
            self.d_head,
            self.d_model,
            tuple(plans),
            self.notes,
        )


@dataclass(frozen=True)
class ModelLayout:
    """A :class:`LayoutPlan` bound to one model: its blocks, final norm and dimensions."""

    plan: LayoutPlan
    blocks: tuple[nn.Module, ...]
    final_norm: nn.Module
    n_heads: int
    d_head: int
    d_model: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def model_type(self) -> str:
        return self.plan.model_type

    def block_at_depth(self, depth: float) -> int:
        """The block index at relative depth ``depth`` on this model."""
        return block_at_depth(depth, self.n_layers)

    def hook_name(self, site: Site, *, block: int | None = None, depth: float | None = None) -> str:
        """The name of ``site`` at ``block`` or at relative ``depth`` on this model."""
        return hook_name(site, n_layers=self.n_layers, block=block, depth=depth)

    def activation_shape(self, site: Site) -> tuple[int, ...]:
        """The trailing shape (after batch and position) of an activation at ``site``."""
        if site in MOE_SITES:
            raise InterventionError(f"{site} is read-only: capture it, do not write to it")
        return (self.n_heads, self.d_head) if site == "attn.hook_z" else (self.d_model,)

    def site(self, block: int, site: Site) -> SitePlan:
        """How ``site`` of ``block`` is hooked; an :class:`InterventionError` with the reason
        where this model does not offer it."""
        check_block(block, self.n_layers)
        plan = self.plan.block_plans[block]
        found = plan.sites.get(site)
        if found is None:
            reason = plan.refused.get(site, "this layout has no such site")
            raise InterventionError(
                f"{self.model_type} does not support blocks.{block}.{site}: {reason}"
            )
        return found

    def module(self, block: int, site: Site) -> nn.Module:
        """The module whose hook carries ``site`` of ``block``."""
        where = self.site(block, site)
        return _submodule(
            self.blocks[block], where.path, f"block {block}", f"for {site}", self.model_type
        )

    def supports(self, site: Site, block: int | None = None) -> bool:
        """Whether ``site`` is offered at ``block`` (at every block where ``None``)."""
        chosen = range(self.n_layers) if block is None else [check_block(block, self.n_layers)]
        return all(site in self.plan.block_plans[b].sites for b in chosen)


def resolve(plan: LayoutPlan, model: nn.Module) -> ModelLayout:
    """Bind ``plan`` to ``model`` (a ``...ForCausalLM`` or its base model)."""
    base = base_of(model)
    where = f"{type(model).__name__}'s base model"
    blocks = _submodule(base, plan.blocks, where, "the list of blocks", plan.model_type)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise InterventionError(
            f"{plan.model_type}: {plan.blocks!r} in {where} is not a non-empty nn.ModuleList "
            f"of blocks; {_HOW_TO_OVERRIDE}"
        )
    if plan.final_norm is None:
        final: nn.Module = nn.Identity()
    else:
        final = _submodule(base, plan.final_norm, where, "the final norm", plan.model_type)
    return ModelLayout(plan, tuple(blocks), final, plan.n_heads, plan.d_head, plan.d_model)


def base_of(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def text_config(model: nn.Module) -> Any:
    config: Any = model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


# -- inference: the module tree ---------------------------------------------------------------


def infer_plan(model: nn.Module, overrides: Architecture) -> LayoutPlan:
    """The layout of ``model``: the module tree read, then one probing forward pass."""
    kind = overrides.model_type
    config = text_config(model)
    base = base_of(model)
    blocks_path = overrides.blocks or _find_blocks(base, config, kind)
    blocks = _submodule(base, blocks_path, "the base model", "the list of blocks", kind)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise InterventionError(
            f"{kind}: {blocks_path!r} is not a non-empty nn.ModuleList of blocks; "
            f"{_HOW_TO_OVERRIDE}"
        )
    final_norm = overrides.final_norm or _find_final_norm(base, blocks_path)
    if overrides.final_norm is not None:
        _submodule(base, overrides.final_norm, "the base model", "the final norm", kind)
    n_heads = getattr(config, overrides.n_heads_key, None)
    d_model = getattr(config, "hidden_size", None)
    if not isinstance(n_heads, int) or n_heads < 1 or not isinstance(d_model, int):
        raise InterventionError(
            f"{kind}: the config lacks a head count {overrides.n_heads_key!r} or hidden_size "
            f"(found {n_heads!r}, {d_model!r}); set n_heads_key in an Architecture override"
        )
    d_head_set = getattr(config, overrides.d_head_key, None)
    records = _probe(model, blocks, config)
    d_head = _d_head(blocks, records, overrides, n_heads, d_model, d_head_set)
    plans = tuple(
        _block_plan(i, block, records, overrides, config, n_heads, d_head, d_model)
        for i, block in enumerate(blocks)
    )
    return LayoutPlan(kind, blocks_path, final_norm, n_heads, d_head, d_model, plans)


def _find_blocks(base: nn.Module, config: Any, kind: str) -> str:
    wanted = getattr(config, "num_hidden_layers", None)
    lists = [
        (name, m)
        for name, m in base.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and name
    ]
    fits = [(n, m) for n, m in lists if len(m) == wanted] or lists
    if not fits:
        raise InterventionError(
            f"{kind}: no nn.ModuleList of blocks in {type(base).__name__}; {_HOW_TO_OVERRIDE}"
        )
    name: str = min(fits, key=lambda nm: (nm[0].count("."), -len(nm[1])))[0]
    return name


def _find_final_norm(base: nn.Module, blocks_path: str) -> str | None:
    """A norm registered after the blocks: in the module holding them (OPT's decoder), else
    in the base model."""
    parts = blocks_path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth])
        holder = base.get_submodule(prefix) if prefix else base
        before: list[str] = []
        after: list[str] = []
        seen = False
        for name, child in holder.named_children():
            if name == parts[depth]:
                seen = True
            elif _NORM.search(type(child).__name__):
                (after if seen else before).append(name)
        # After the blocks where there is one (bloom norms its embeddings before them);
        # else the one before (OPT registers its final norm first).
        chosen = after or before[-1:]
        if chosen:
            return f"{prefix}.{chosen[-1]}" if prefix else chosen[-1]
    return None


def _linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer: ``nn.Linear`` or transformers' ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, Tensor) and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])
    return None


# -- inference: the probing forward pass ------------------------------------------------------


@dataclass
class _Record:
    """One module's call in the probe: its first input and output, copied when seen, and the
    live output (to see whether the model changed it in place afterwards)."""

    order: int
    input: Tensor | None
    output: Tensor | None
    live: Tensor | None
    outputs: tuple[Any, ...] = ()


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def probe_inputs(model: nn.Module, config: Any) -> dict[str, Tensor]:
    """A few random tokens (a seeded generator of their own: the caller's RNG is untouched)."""
    vocab = int(getattr(config, "vocab_size", 0) or 0) or 100
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(min(3, vocab - 1), vocab, (2, 6), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _probe(model: nn.Module, blocks: nn.ModuleList, config: Any) -> dict[nn.Module, _Record]:
    records: dict[nn.Module, _Record] = {}
    counter = [0]

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        counter[0] += 1
        if module not in records:
            records[module] = _Record(
                counter[0], x.detach().clone() if isinstance(x, Tensor) else None, None, None
            )

    def post(module: nn.Module, args: Any, output: Any) -> None:
        found = records.get(module)
        if found is None or found.output is not None:
            return
        y = _first_tensor(output)
        if y is not None:
            found.output = y.detach().clone()
            found.live = y.detach()
        if isinstance(output, tuple):
            found.outputs = tuple(
                o.detach().clone() if isinstance(o, Tensor) else None for o in output
            )

    handles = []
    try:
        for block in blocks:
            for module in block.modules():
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(module.register_forward_hook(post))
        with _eval(model), torch.no_grad():
            model(**probe_inputs(model, config))
    except InterventionError:
        raise
    except Exception as exc:  # a model that cannot run random tokens cannot be verified
        raise InterventionError(
            f"{type(model).__name__} fails a forward pass on random tokens, so its layout "
            f"cannot be found: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return records


class _eval:
    """Eval mode for the length of a ``with`` block, each module's mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, mode in self.modes:
            module.training = mode


def _d_head(
    blocks: nn.ModuleList,
    records: Mapping[nn.Module, _Record],
    overrides: Architecture,
    n_heads: int,
    d_model: int,
    d_head_set: Any,
) -> int:
    """The head size: the output projection's input features / heads where there is one
    (multi-head latent attention's value heads differ from its query heads), else the
    config's ``head_dim``, else ``d_model // n_heads``."""
    for block in blocks:
        proj = _projection(block, records, overrides, n_heads, None, d_model)
        if proj is not None:
            dims = _linear_dims(proj[1])
            if dims is not None and dims[0] % n_heads == 0:
                return dims[0] // n_heads
    if isinstance(d_head_set, int) and d_head_set > 0:
        return d_head_set
    return d_model // n_heads


def _called_children(
    block: nn.Module, records: Mapping[nn.Module, _Record]
) -> list[tuple[str, nn.Module]]:
    called = [(n, c) for n, c in block.named_children() if c in records]
    return sorted(called, key=lambda nc: records[nc[1]].order)


def _attention(
    block: nn.Module, records: Mapping[nn.Module, _Record]
) -> tuple[str, nn.Module] | None:
    for name, child in _called_children(block, records):
        if _ATTENTION.search(type(child).__name__) and not _NORM.search(type(child).__name__):
            return name, child
    return None


def _projection(
    block: nn.Module,
    records: Mapping[nn.Module, _Record],
    overrides: Architecture,
    n_heads: int,
    d_head: int | None,
    d_model: int,
) -> tuple[str, nn.Module] | None:
    """The attention output projection: the last linear layer of the attention to be called
    that maps ``n_heads × d_head`` features to ``d_model``."""
    if overrides.attn_out_proj is not None:
        try:
            return overrides.attn_out_proj, block.get_submodule(overrides.attn_out_proj)
        except AttributeError:
            return None
    attention = _attention(block, records)
    if attention is None:
        return None
    found: list[tuple[int, str, nn.Module]] = []
    for name, module in attention[1].named_modules():
        dims = _linear_dims(module)
        record = records.get(module)
        if dims is None or record is None or dims[1] != d_model or dims[0] % n_heads:
            continue
        if d_head is not None and dims[0] != n_heads * d_head:
            continue
        if record.input is None or record.input.dim() != 3:
            continue
        found.append((record.order, f"{attention[0]}.{name}", module))
    if not found:
        return None
    _, path, module = max(found, key=lambda f: f[0])
    return path, module


def _relative_error(a: Tensor, b: Tensor) -> float:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / max(scale, 1e-6) if a.numel() else 0.0


def _as_sequence(x: Tensor, like: Tensor) -> Tensor | None:
    """``x`` as ``[batch, pos, features]`` where ``like`` is ``[batch, pos, d_model]``."""
    if x.dim() == 3 and x.shape[:2] == like.shape[:2]:
        return x
    if x.dim() == 2 and x.shape[0] == like.shape[0] * like.shape[1]:
        return x.view(like.shape[0], like.shape[1], -1)
    return None


def _after_norms(
    block: nn.Module, records: Mapping[nn.Module, _Record], start: str, value: Tensor
) -> tuple[str, Tensor]:
    """Follow norms applied to ``value`` (a sublayer's output): the last one's path and output."""
    path = start
    for _ in range(3):
        for name, child in _called_children(block, records):
            rec = records[child]
            if (
                _NORM.search(type(child).__name__)
                and rec.input is not None
                and rec.output is not None
                and rec.input.shape == value.shape
                and _relative_error(rec.input, value) < _SAME
            ):
                path, value = name, rec.output
                break
        else:
            break
    return path, value


def _mlp(
    block: nn.Module, records: Mapping[nn.Module, _Record], d_model: int, taken: set[str]
) -> tuple[str, nn.Module, bool] | None:
    """The MLP (or MoE block): by name or class; else (OPT) the last-called linear layer of
    the block to output ``d_model`` features. The flag says it carries ``[batch·pos, d]``."""
    called = [(n, c) for n, c in _called_children(block, records) if n not in taken]
    for name, child in called:
        if (_MLP.search(type(child).__name__) or _MLP.search(name)) and not _NORM.search(
            type(child).__name__
        ):
            return name, child, False
    linears = [(n, c) for n, c in called if (_linear_dims(c) or (0, 0))[1] == d_model]
    if linears:
        name, child = linears[-1]
        return name, child, True
    return None


def _mixer(
    block: nn.Module, records: Mapping[nn.Module, _Record], taken: set[str]
) -> tuple[str, nn.Module] | None:
    """A token mixer that is not attention: a called child with parameters that is neither a
    norm, a linear layer nor dropout, and not already taken as attention or MLP."""
    for name, child in _called_children(block, records):
        if name in taken or _NORM.search(type(child).__name__):
            continue
        if _linear_dims(child) is not None or isinstance(child, nn.Dropout):
            continue
        if any(True for _ in child.parameters()):
            return name, child
    return None


def _fit(delta: Tensor, parts: list[Tensor]) -> tuple[list[float], float]:
    """Least-squares coefficients of ``delta`` ≈ Σ cᵢ partsᵢ, and the relative error left."""
    a = torch.stack([p.reshape(-1).double() for p in parts], dim=1)
    b = delta.reshape(-1).double()
    coefficients = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    left = _relative_error((a @ coefficients).float(), b.float())
    return [float(c) for c in coefficients], left


def _named_scale(value: float, config: Any, overrides: Architecture) -> tuple[float, str] | None:
    """``value`` as 1, or as the override, or as a float attribute of the config."""
    if abs(value - 1.0) < 1e-3:
        return 1.0, ""
    given = overrides.residual_scale
    if isinstance(given, int | float):
        candidates = {"residual_scale": float(given)}
    elif isinstance(given, str):
        candidates = {given: float(getattr(config, given, math.nan))}
    else:
        candidates = {
            k: float(v)
            for k, v in vars(config).items()
            if isinstance(v, float) and not isinstance(v, bool) and v != 0
        }
        depth, layers = (
            getattr(config, "scale_depth", None),
            getattr(config, "num_hidden_layers", 0),
        )
        if isinstance(depth, int | float) and isinstance(layers, int) and layers > 0:
            # MiniCPM scales each sublayer by scale_depth / sqrt(num_hidden_layers)
            candidates["scale_depth/√num_hidden_layers"] = float(depth) / math.sqrt(layers)
    for key, candidate in sorted(candidates.items(), key=lambda kv: "resid" not in kv[0]):
        if abs(value - candidate) <= 1e-3 * max(1.0, abs(candidate)):
            return candidate, key
    return None


def _override_scale(overrides: Architecture, config: Any) -> float:
    given = overrides.residual_scale
    if isinstance(given, str):
        return float(getattr(config, given, 1.0))
    return 1.0 if given is None else float(given)


def _block_plan(
    index: int,
    block: nn.Module,
    records: Mapping[nn.Module, _Record],
    overrides: Architecture,
    config: Any,
    n_heads: int,
    d_head: int,
    d_model: int,
) -> BlockPlan:
    kind = overrides.model_type
    sites: dict[Site, SitePlan] = {}
    refused: dict[Site, str] = {}
    own = records.get(block)
    if own is None or own.input is None or own.output is None:
        reason = f"block {index} did not run in the probing forward pass"
        return BlockPlan({}, {s: reason for s in ALL_SITES})
    pre, post = own.input, own.output
    sites["hook_resid_pre"] = SitePlan("", "input")
    sites["hook_resid_post"] = SitePlan("", "output", copy=_changed(own))
    if pre.dim() != 3 or pre.shape[-1] != d_model:
        reason = (
            f"block {index}'s stream is {tuple(pre.shape)}, not [batch, pos, d_model = {d_model}] "
            "(several residual streams, or a stream of another width)"
        )
        return BlockPlan({}, {s: reason for s in ALL_SITES}, meaning="not one residual stream")
    if pre.shape != post.shape:
        reason = (
            f"block {index} changes the stream's shape {tuple(pre.shape)} → {tuple(post.shape)}"
        )
        return BlockPlan({}, {s: reason for s in ALL_SITES}, meaning="not a residual block")

    # attn.hook_z: the input of the attention output projection.
    proj = _projection(block, records, overrides, n_heads, d_head, d_model)
    attention = _attention(block, records)
    if proj is not None and records.get(proj[1]) is not None:
        rec = records[proj[1]]
        if (
            rec.input is not None
            and rec.input.dim() == 3
            and rec.input.shape[-1] == n_heads * d_head
        ):
            sites["attn.hook_z"] = SitePlan(proj[0], "input")
        else:
            shape = None if rec.input is None else tuple(rec.input.shape)
            refused["attn.hook_z"] = (
                f"the output projection {proj[0]!r} takes {shape}, not [batch, pos, "
                f"n_heads × d_head = {n_heads} × {d_head}]"
            )
    elif attention is None:
        refused["attn.hook_z"] = f"block {index} has no attention"
    else:
        refused["attn.hook_z"] = (
            f"no output projection in {attention[0]!r} maps n_heads × d_head = {n_heads} × "
            f"{d_head} features to d_model = {d_model}; {_HOW_TO_OVERRIDE}"
        )

    # What the block adds to its stream: attention (or a mixer) and the MLP.
    parts: list[tuple[str, str, Tensor, bool, bool]] = []  # role, path, value, flat, copy
    taken: set[str] = set()
    attn_path = overrides.attn_out
    if attn_path is None and attention is not None:
        rec = records[attention[1]]
        if rec.output is not None and _as_sequence(rec.output, pre) is not None:
            attn_path, _ = _after_norms(block, records, attention[0], rec.output)
        taken.add(attention[0])
    mixer = None if attention is not None else _mixer(block, records, taken | set())
    mlp_path: str | None = overrides.mlp_out
    mlp_flat = False
    if mlp_path is None:
        if mixer is not None:
            taken.add(mixer[0])
        found = _mlp(block, records, d_model, taken)
        if mixer is not None and found is not None and found[0] == mixer[0]:
            found = None
        if found is not None:
            mlp_path, mlp_flat = found[0], found[2]
            rec = records[found[1]]
            if (
                rec.output is not None
                and _as_sequence(rec.output, pre) is not None
                and not mlp_flat
            ):
                mlp_path, _ = _after_norms(block, records, found[0], rec.output)
    if mixer is not None and mixer[0] == mlp_path:
        mixer = None

    for role, path in (("attn", attn_path), ("mlp", mlp_path)):
        if path is None:
            continue
        module = _get(block, path)
        got = records.get(module) if module is not None else None
        if module is None:
            refused[_SITE[role]] = (
                f"{path!r} is not a submodule of block {index}; {_HOW_TO_OVERRIDE}"
            )
            continue
        if got is None or got.output is None:
            refused[_SITE[role]] = f"{path!r} did not run in block {index}"
            continue
        value = _as_sequence(got.output, pre)
        if value is None or value.shape[-1] != d_model:
            refused[_SITE[role]] = (
                f"{path!r} outputs {tuple(got.output.shape)}, not [batch, pos, d_model]"
            )
            continue
        parts.append((role, path, value, got.output.dim() == 2, _changed(got)))
    if mixer is not None:
        rec = records[mixer[1]]
        value = None if rec.output is None else _as_sequence(rec.output, pre)
        if value is not None and value.shape[-1] == d_model:
            parts.append(
                ("mixer", mixer[0], value, rec.output is not None and rec.output.dim() == 2, False)
            )
        what = f"{mixer[0]!r} ({type(mixer[1]).__name__})"
        refused.setdefault("attn.hook_z", f"block {index}'s token mixer {what} is not attention")
        refused["hook_attn_out"] = (
            f"block {index}'s token mixer {what} is not attention: hook_attn_out names "
            "attention's contribution only"
        )
    elif attn_path is None and "hook_attn_out" not in refused:
        refused["hook_attn_out"] = f"block {index} has no attention"
    if mlp_path is None and "hook_mlp_out" not in refused:
        refused["hook_mlp_out"] = f"block {index} has no MLP"

    meaning = ""
    mixer_path: str | None = None
    mixer_scale = 1.0
    if parts:
        coefficients, left = _fit(post - pre, [p[2] for p in parts])
        given = {"attn": overrides.attn_out is not None, "mlp": overrides.mlp_out is not None}
        if left > _SAME * 10:
            reason = (
                f"block {index}'s output is not resid_pre + "
                + " + ".join(f"c·{p[1]}" for p in parts)
                + f" for any constants (off by {left:.3g} of its size): the stream is not a "
                "sum of these modules' outputs here (a norm after the residual add, or the "
                "sublayers add the residual themselves)"
            )
            used = {p[1].split(".")[0] for p in parts}
            others = [
                n
                for n, c in _called_children(block, records)
                if n not in used
                and _MLP.search(f"{n} {type(c).__name__}")
                and not _NORM.search(type(c).__name__)
            ]
            if others:  # granitemoehybrid adds a shared MLP beside its mixture of experts
                reason += f"; {', '.join(others)} also add to it, and no one module outputs the sum"
            meaning = "not a sum of module outputs"
            for role, path, _, flat, changed in parts:
                if role == "mixer":
                    continue
                if given[role]:  # an override is trusted here, and checked by the self-test
                    scale = _override_scale(overrides, config)
                    sites[_SITE[role]] = SitePlan(path, "output", scale, flat, changed)
                else:
                    refused[_SITE[role]] = reason
        else:
            terms = []
            for (role, path, _, flat, changed), c in zip(parts, coefficients, strict=True):
                named = _named_scale(c, config, overrides)
                if named is None:
                    if role != "mixer":
                        refused[_SITE[role]] = (
                            f"block {index} adds {path!r} times {c:.4g}, which no config "
                            f"attribute names; set residual_scale in an Architecture override"
                        )
                    continue
                scale, key = named
                terms.append(f"{key or format(scale, 'g')}·{path}" if scale != 1.0 else path)
                if role == "mixer":
                    mixer_path, mixer_scale = path, scale
                    continue
                sites[_SITE[role]] = SitePlan(path, "output", scale=scale, flat=flat, copy=changed)
            meaning = "resid_pre + " + " + ".join(terms) if terms else ""

    router = _router(block, records, mlp_path, pre, config)
    if router is not None:
        sites["mlp.hook_router_logits"] = router[0]
        sites["mlp.hook_experts"] = router[1]
    else:
        for site in MOE_SITES:
            refused[site] = f"block {index}'s MLP is not a mixture of experts with a router"
    for site, reason in overrides.refuse.items():
        sites.pop(site, None)
        refused[site] = reason
    for site in SITES:
        if site not in sites and site not in refused:
            refused[site] = f"{kind}: no module found for {site}"
    return BlockPlan(sites, refused, mixer_path, mixer_scale, meaning)


_SITE: dict[str, Site] = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def _changed(record: _Record) -> bool:
    """Whether the model changed this output in place after the hook saw it."""
    if record.live is None or record.output is None:
        return False
    try:
        return not torch.equal(record.live, record.output)
    except RuntimeError:
        return True


def _get(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def _router(
    block: nn.Module,
    records: Mapping[nn.Module, _Record],
    mlp_path: str | None,
    pre: Tensor,
    config: Any,
) -> tuple[SitePlan, SitePlan] | None:
    """The router of a mixture of experts: a ``gate``/``router`` module in the MLP whose
    output is ``[tokens, n_experts]`` logits (with, in a tuple, the chosen experts)."""
    if mlp_path is None:
        return None
    mlp = _get(block, mlp_path.split(".")[0])
    if mlp is None:
        return None
    top_k = getattr(config, "num_experts_per_tok", None) or getattr(config, "moe_topk", None)
    n_experts = {
        getattr(config, key, None)
        for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
    } - {None}
    prefix = mlp_path.split(".")[0]
    for name, module in mlp.named_modules():
        if not name or not _ROUTER.search(name.split(".")[-1]) or module not in records:
            continue
        rec = records[module]
        if rec.output is None or rec.output.dim() not in (2, 3) or rec.output.shape[-1] < 2:
            continue
        if _as_sequence(rec.output, pre) is None or not rec.output.is_floating_point():
            continue
        if rec.output.shape[-1] not in n_experts:
            continue
        flat = rec.output.dim() == 2
        path = f"{prefix}.{name}"
        logits = SitePlan(path, "output", flat=flat, read_only=True)
        index = next(
            (
                i
                for i, o in enumerate(rec.outputs)
                if isinstance(o, Tensor)
                and not o.is_floating_point()
                and o.dim() == rec.output.dim()
            ),
            None,
        )
        if index is not None:
            experts = SitePlan(path, "output", flat=flat, pick=index, read_only=True)
        elif isinstance(top_k, int) and top_k > 0:
            experts = SitePlan(path, "output", flat=flat, top_k=top_k, read_only=True)
        else:
            continue
        return logits, experts
    return None


def _submodule(root: nn.Module, path: str, where: str, what: str, model_type: str) -> nn.Module:
    if path == "":
        return root
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise InterventionError(
            f"{model_type}: {where} has no submodule {path!r} ({what}); {_HOW_TO_OVERRIDE}"
        ) from None
