"""Hook plumbing on Hugging Face causal LMs: hook point names, capture, steering, ablation
and activation patching, the same on every supported architecture.

Hook points are named as in TransformerLens (``blocks.{i}.hook_resid_post``,
``blocks.{i}.attn.hook_z``, ...) and blocks can be addressed by relative depth, so one
experiment runs on a 2-block analog and a 48-block frontier. Every operation is a context
manager; its hooks are gone when the ``with`` block ends, also on an exception::

    from analoglab.interventions import add_vector, capture, layout_of

    name = layout_of(model).hook_name("hook_resid_post", depth=0.5)
    with add_vector(model, name, direction, scale=4.0), capture(model, [name]) as cache:
        logits = model(**batch).logits

Layouts are found, not listed: :func:`layout_of` infers where each site sits in any causal
LM and verifies it on a few random tokens before it is used (once per model type and config);
:func:`verify_layout` gives the report, :func:`supported_sites` what each site is on a model.

Modules: :mod:`.names` (hook points, relative depth), :mod:`.layout` (inference),
:mod:`.verification` (the self-test), :mod:`.architectures` (overrides),
:mod:`.positions` (the padding rule), :mod:`.hooks` (the plumbing), :mod:`.selection`,
:mod:`.capture`, :mod:`.steering`, :mod:`.ablation`, :mod:`.patching`; see
``docs/interventions.md``.
"""

from __future__ import annotations

from analoglab.interventions.ablation import ablate
from analoglab.interventions.architectures import (
    ARCHITECTURES,
    Architecture,
    architecture_of,
    register_architecture,
)
from analoglab.interventions.capture import capture
from analoglab.interventions.errors import InterventionError
from analoglab.interventions.hooks import Edit, Forward, PointLike, hooks
from analoglab.interventions.layout import ModelLayout
from analoglab.interventions.names import (
    ALL_SITES,
    MOE_SITES,
    SITES,
    HookPoint,
    Site,
    all_hook_names,
    block_at_depth,
    hook_name,
    hook_point,
)
from analoglab.interventions.patching import patch
from analoglab.interventions.positions import Positions, position_ids_from_mask, token_indices
from analoglab.interventions.steering import add_vector
from analoglab.interventions.verification import (
    LayoutReport,
    SiteSupport,
    layout_of,
    supported_sites,
    verify_layout,
)

__all__ = [
    "ALL_SITES",
    "ARCHITECTURES",
    "MOE_SITES",
    "SITES",
    "Architecture",
    "Edit",
    "Forward",
    "HookPoint",
    "InterventionError",
    "LayoutReport",
    "ModelLayout",
    "PointLike",
    "Positions",
    "Site",
    "SiteSupport",
    "ablate",
    "add_vector",
    "all_hook_names",
    "architecture_of",
    "block_at_depth",
    "capture",
    "hook_name",
    "hook_point",
    "hooks",
    "layout_of",
    "patch",
    "position_ids_from_mask",
    "register_architecture",
    "supported_sites",
    "token_indices",
    "verify_layout",
]
