"""The architecture table: where each Hugging Face causal LM keeps what a hook point names.

One :class:`Architecture` per ``config.model_type`` says where the blocks are and which
module of a block carries each site; :func:`layout_of` resolves it on a loaded model into a
:class:`ModelLayout` (the blocks themselves, heads, head size, width). Adding an architecture
is one table entry, see :func:`register_architecture` and ``docs/interventions.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.names import Site, block_at_depth, check_block, hook_name

_HOW_TO_ADD = (
    "add a table entry with analoglab.interventions.register_architecture(Architecture(...)); "
    "see docs/interventions.md, 'Adding an architecture'"
)


@dataclass(frozen=True)
class Architecture:
    """Where one architecture keeps each hook site. Paths are dotted submodule names.

    Example (Llama)::

        Architecture(
            model_type="llama",
            blocks="layers",               # in model.base_model: the nn.ModuleList of blocks
            attn_out_proj="self_attn.o_proj",  # in a block: its *input* is attn.hook_z
            attn_out="self_attn",          # in a block: its output (first element) is hook_attn_out
            mlp_out="mlp",                 # in a block: its output is hook_mlp_out
            final_norm="norm",             # in model.base_model: the norm before the unembedding
        )
    """

    model_type: str
    """``config.model_type`` of the models this entry describes."""
    blocks: str
    """The ``nn.ModuleList`` of blocks, relative to ``model.base_model``. hook_resid_pre is a
    block's input (first argument, or ``hidden_states=``), hook_resid_post its output."""
    attn_out_proj: str
    """In a block, the attention output projection; its input, split into heads, is
    attn.hook_z. It must take ``[batch, pos, n_heads * d_head]`` with heads outermost."""
    attn_out: str
    """In a block, the module whose output (the first element if a tuple) is what attention
    adds to the residual stream: the attention itself, or a norm applied after it."""
    mlp_out: str
    """In a block, the module whose output is what the MLP adds to the residual stream: the
    MLP itself, or a norm applied after it."""
    final_norm: str
    """The norm between the last block and the unembedding, relative to ``model.base_model``."""
    n_heads_key: str = "num_attention_heads"
    """The config attribute holding the number of attention (query) heads."""
    d_head_key: str = "head_dim"
    """The config attribute holding the head size; where unset, ``hidden_size // n_heads``."""
    notes: str = field(default="", compare=False)
    """What differs from the usual pre-norm block, for the docs."""


ARCHITECTURES: dict[str, Architecture] = {}
"""The table, keyed by ``config.model_type``; extend it with :func:`register_architecture`."""


def register_architecture(architecture: Architecture, *, replace: bool = False) -> None:
    """Add ``architecture`` to the table (``replace=True`` to overwrite an entry)."""
    if architecture.model_type in ARCHITECTURES and not replace:
        raise InterventionError(
            f"architecture {architecture.model_type!r} is already in the table; "
            "pass replace=True to overwrite it"
        )
    ARCHITECTURES[architecture.model_type] = architecture


def _pre_norm(model_type: str, **where: str) -> Architecture:
    """A Llama-style entry (``model.layers``, ``self_attn.o_proj``, ``mlp``, ``model.norm``)."""
    paths = {
        "blocks": "layers",
        "attn_out_proj": "self_attn.o_proj",
        "attn_out": "self_attn",
        "mlp_out": "mlp",
        "final_norm": "norm",
    }
    notes = where.pop("notes", "")
    return Architecture(model_type=model_type, **(paths | where), notes=notes)


for _entry in (
    _pre_norm("llama"),
    _pre_norm("mistral"),
    _pre_norm("qwen2"),
    _pre_norm(
        "gemma2",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        notes="attention and MLP outputs are normed before the residual add; the embeddings "
        "are scaled by sqrt(d_model) before block 0",
    ),
    _pre_norm("phi3", notes="residual dropout after attention and MLP (identity in eval mode)"),
    Architecture(
        model_type="gpt2",
        blocks="h",
        attn_out_proj="attn.c_proj",
        attn_out="attn",
        mlp_out="mlp",
        final_norm="ln_f",
        notes="Conv1D projections; learned absolute positions: pass position_ids when left padding",
    ),
    Architecture(
        model_type="gpt_neox",
        blocks="layers",
        attn_out_proj="attention.dense",
        attn_out="attention",
        mlp_out="mlp",
        final_norm="final_layer_norm",
        notes="parallel residual by default: attention and MLP both read the block input",
    ),
):
    register_architecture(_entry)


@dataclass(frozen=True)
class ModelLayout:
    """An :class:`Architecture` resolved on one model: its blocks and dimensions."""

    architecture: Architecture
    blocks: tuple[nn.Module, ...]
    final_norm: nn.Module
    n_heads: int
    d_head: int
    d_model: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def block_at_depth(self, depth: float) -> int:
        """The block index at relative depth ``depth`` on this model."""
        return block_at_depth(depth, self.n_layers)

    def hook_name(self, site: Site, *, block: int | None = None, depth: float | None = None) -> str:
        """The name of ``site`` at ``block`` or at relative ``depth`` on this model."""
        return hook_name(site, n_layers=self.n_layers, block=block, depth=depth)

    def activation_shape(self, site: Site) -> tuple[int, ...]:
        """The trailing shape (after batch and position) of an activation at ``site``."""
        return (self.n_heads, self.d_head) if site == "attn.hook_z" else (self.d_model,)

    def module(self, block: int, site: Site) -> nn.Module:
        """The module whose hook carries ``site`` of ``block``."""
        check_block(block, self.n_layers)
        if site in ("hook_resid_pre", "hook_resid_post"):
            return self.blocks[block]
        arch = self.architecture
        path, what = {
            "attn.hook_z": (arch.attn_out_proj, "the attention output projection, for hook_z"),
            "hook_attn_out": (arch.attn_out, "attention's output to the residual stream"),
            "hook_mlp_out": (arch.mlp_out, "the MLP's output to the residual stream"),
        }[site]
        return _submodule(self.blocks[block], path, f"block {block}", what, arch.model_type)


def architecture_of(model: nn.Module) -> Architecture:
    """The table entry for ``model``'s ``config.model_type``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise InterventionError(
            f"{type(model).__name__} has no config.model_type: interventions work on "
            "Hugging Face transformers models"
        )
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise InterventionError(
            f"architecture {model_type!r} ({type(model).__name__}) has no interventions "
            f"table entry (supported: {', '.join(sorted(ARCHITECTURES))}). It needs: the "
            "list of blocks, the attention output projection (for hook_z), the attention and "
            f"MLP output modules and the final norm; {_HOW_TO_ADD}"
        ) from None


def layout_of(model: nn.Module) -> ModelLayout:
    """Resolve ``model``'s architecture entry on it; a clear error names what is missing."""
    arch = architecture_of(model)
    config: Any = model.config
    base: nn.Module = getattr(model, "base_model", model)
    where = f"{type(model).__name__}'s base model"
    blocks = _submodule(base, arch.blocks, where, "the list of blocks", arch.model_type)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise InterventionError(
            f"{arch.model_type}: {arch.blocks!r} in {where} is not a non-empty "
            f"nn.ModuleList of blocks; {_HOW_TO_ADD}"
        )
    final_norm = _submodule(base, arch.final_norm, where, "the final norm", arch.model_type)
    n_heads = getattr(config, arch.n_heads_key, None)
    d_model = getattr(config, "hidden_size", None)
    if not isinstance(n_heads, int) or n_heads < 1 or not isinstance(d_model, int):
        raise InterventionError(
            f"{arch.model_type}: the config lacks a head count {arch.n_heads_key!r} or "
            f"hidden_size (found {n_heads!r}, {d_model!r}); set n_heads_key in the table entry"
        )
    d_head = getattr(config, arch.d_head_key, None) or d_model // n_heads
    proj = _submodule(
        blocks[0], arch.attn_out_proj, "block 0", "the attention output projection", arch.model_type
    )
    if isinstance(proj, nn.Linear) and proj.in_features != n_heads * d_head:
        raise InterventionError(
            f"{arch.model_type}: {arch.attn_out_proj!r} takes {proj.in_features} features, "
            f"not n_heads × d_head = {n_heads} × {d_head}; check n_heads_key and d_head_key"
        )
    return ModelLayout(arch, tuple(blocks), final_norm, n_heads, int(d_head), d_model)


def _submodule(root: nn.Module, path: str, where: str, what: str, model_type: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise InterventionError(
            f"{model_type}: {where} has no submodule {path!r} ({what}); the architecture table "
            f"entry does not fit this model: {_HOW_TO_ADD}"
        ) from None
