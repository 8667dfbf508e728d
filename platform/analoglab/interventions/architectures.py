"""Overrides: what a model's layout cannot be inferred from, written down per ``model_type``.

Layouts are found, not listed (:mod:`.layout` infers them from the module tree, the config
and one probing forward pass; :mod:`.verification` checks them before use). An
:class:`Architecture` entry in :data:`ARCHITECTURES` only *overrides* what inference finds:
every field left ``None`` is inferred. :func:`register_architecture` adds one, and with
``model=`` verifies it on that model at once, refusing an entry that gives wrong numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from analoglab.interventions.errors import InterventionError
from analoglab.interventions.names import ALL_SITES, Site

if TYPE_CHECKING:
    from analoglab.interventions.verification import LayoutReport


@dataclass(frozen=True)
class Architecture:
    """Overrides for the layout of one ``model_type``. Paths are dotted submodule names.

    Every field but ``model_type`` is optional: ``None`` means "infer it". Example (what
    inference finds on Llama, written out)::

        Architecture(
            model_type="llama",
            blocks="layers",               # in model.base_model: the nn.ModuleList of blocks
            attn_out_proj="self_attn.o_proj",  # in a block: its *input* is attn.hook_z
            attn_out="self_attn",          # in a block: its output is (what makes) hook_attn_out
            mlp_out="mlp",                 # in a block: its output is (what makes) hook_mlp_out
            final_norm="norm",             # in model.base_model: the norm before the unembedding
        )
    """

    model_type: str
    """``config.model_type`` of the models this entry describes."""
    blocks: str | None = None
    """The ``nn.ModuleList`` of blocks, relative to ``model.base_model``. hook_resid_pre is a
    block's input (first argument, or ``hidden_states=``), hook_resid_post its output."""
    attn_out_proj: str | None = None
    """In a block, the attention output projection; its input, split into heads, is
    attn.hook_z. It must take ``[batch, pos, n_heads * d_head]`` with heads outermost."""
    attn_out: str | None = None
    """In a block, the module whose output (the first element if a tuple) is what attention
    adds to the residual stream (times ``residual_scale``): attention, or a norm after it."""
    mlp_out: str | None = None
    """In a block, the module whose output is what the MLP adds to the residual stream (times
    ``residual_scale``): the MLP itself, or a norm applied after it."""
    final_norm: str | None = None
    """The norm between the last block and the unembedding, relative to ``model.base_model``."""
    n_heads_key: str = "num_attention_heads"
    """The config attribute holding the number of attention (query) heads."""
    d_head_key: str = "head_dim"
    """The config attribute holding the head size; where unset, the output projection's input
    features / heads."""
    residual_scale: str | float | None = None
    """What the block multiplies attention's and the MLP's outputs by before adding them: a
    number, or a config attribute (granite: ``"residual_multiplier"``)."""
    refuse: Mapping[Site, str] = field(default_factory=dict, compare=False)
    """Sites this architecture must not offer, each with the reason users will read."""
    notes: str = field(default="", compare=False)
    """What differs from the usual pre-norm block, for the docs."""

    def __post_init__(self) -> None:
        for site in self.refuse:
            if site not in ALL_SITES:
                raise InterventionError(
                    f"{self.model_type}: cannot refuse unknown site {site!r}; the sites are "
                    f"{', '.join(ALL_SITES)}"
                )


ARCHITECTURES: dict[str, Architecture] = {}
"""Overrides by ``config.model_type``; empty by default: every layout is inferred."""


def register_architecture(
    architecture: Architecture, *, replace: bool = False, model: nn.Module | None = None
) -> LayoutReport | None:
    """Add ``architecture`` to the overrides (``replace=True`` to overwrite an entry).

    With ``model`` (of that ``model_type``), the entry is verified on it at once: a layout
    that fails an invariant is refused with an :class:`InterventionError` naming it, and the
    table is left as it was. Returns the verification's report, or ``None`` without a model.
    """
    from analoglab.interventions.verification import forget_layouts, verify_layout

    kind = architecture.model_type
    given = getattr(getattr(model, "config", None), "model_type", None)
    if model is not None and given != kind:
        raise InterventionError(
            f"the entry is for {kind!r} but the model to verify it on is {given!r}"
        )
    if kind in ARCHITECTURES and not replace:
        raise InterventionError(
            f"architecture {kind!r} is already in the table; pass replace=True to overwrite it"
        )
    before = ARCHITECTURES.get(kind)
    ARCHITECTURES[kind] = architecture
    forget_layouts()
    if model is None:
        return None
    try:
        report = verify_layout(model)
        report.raise_if_refused()
    except InterventionError:
        if before is None:
            del ARCHITECTURES[kind]
        else:
            ARCHITECTURES[kind] = before
        forget_layouts()
        raise
    return report


def overrides_for(model: nn.Module) -> Architecture:
    """The overrides for ``model``'s ``config.model_type`` (an empty entry where none)."""
    kind = model_type_of(model)
    return ARCHITECTURES.get(kind) or Architecture(model_type=kind)


def model_type_of(model: nn.Module) -> str:
    config: Any = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if not isinstance(kind, str):
        raise InterventionError(
            f"{type(model).__name__} has no config.model_type: interventions work on "
            "Hugging Face transformers models"
        )
    return kind


architecture_of = overrides_for
"""The name this had when the table listed every architecture; the overrides for a model."""
