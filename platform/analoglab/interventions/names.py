"""Hook point names and relative depth: one naming scheme for every architecture.

A hook point is a block index and a site, written as in TransformerLens::

    blocks.{i}.hook_resid_pre   residual stream entering block i    [batch, pos, d_model]
    blocks.{i}.attn.hook_z      each head's attention output before
                                the output projection               [batch, pos, n_heads, d_head]
    blocks.{i}.hook_attn_out    what attention adds to the stream   [batch, pos, d_model]
    blocks.{i}.hook_mlp_out     what the MLP adds to the stream     [batch, pos, d_model]
    blocks.{i}.hook_resid_post  residual stream leaving block i     [batch, pos, d_model]

Blocks whose MLP is a mixture of experts also have two read-only sites (:data:`MOE_SITES`)::

    blocks.{i}.mlp.hook_router_logits   the router's logits          [batch, pos, n_experts]
    blocks.{i}.mlp.hook_experts         the experts each token chose  [batch, pos, top_k]

Blocks can also be addressed by **relative depth**: 0.0 is the first block, 1.0 the last,
and depth ``d`` on a model of ``L`` blocks is block ``floor(d * (L - 1) + 0.5)`` (the nearest
block, halves rounded up), so the same spec runs on a 2-block analog and a 48-block frontier.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast, get_args

from analoglab.depth import nearest_block
from analoglab.interventions.errors import InterventionError

Site: TypeAlias = Literal[
    "hook_resid_pre",
    "attn.hook_z",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_resid_post",
    "mlp.hook_router_logits",
    "mlp.hook_experts",
]
ALL_SITES: tuple[Site, ...] = get_args(Site)
"""Every site a name may carry: :data:`SITES`, then :data:`MOE_SITES`."""
SITES: tuple[Site, ...] = ALL_SITES[:5]
"""The sites of every block, in the order a forward pass reaches them within a block."""
MOE_SITES: tuple[Site, ...] = ALL_SITES[5:]
"""Read-only sites of a mixture-of-experts MLP: the router's logits and the chosen experts."""

_NAME = re.compile(r"blocks\.(0|[1-9][0-9]*)\.(" + "|".join(re.escape(s) for s in ALL_SITES) + r")")


@dataclass(frozen=True, order=True)
class HookPoint:
    """One place in a model: block ``block``'s ``site``; ``str()`` gives its name."""

    block: int
    site: Site

    @property
    def name(self) -> str:
        return f"blocks.{self.block}.{self.site}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        """The hook point a name such as ``"blocks.3.attn.hook_z"`` denotes.

        Checks only the spelling; :func:`hook_point` also checks the block exists in a model.
        """
        if not isinstance(name, str):
            raise InterventionError(f"a hook point name must be a string, not {type(name)!r}")
        match = _NAME.fullmatch(name)
        if match is None:
            raise InterventionError(
                f"{name!r} is not a hook point name; expected 'blocks.<index>.<site>' with a "
                f"site among {', '.join(ALL_SITES)} (for example 'blocks.0.hook_resid_post')"
            )
        # The pattern admits only the sites of ALL_SITES.
        return cls(int(match.group(1)), cast(Site, match.group(2)))


def hook_point(point: str | HookPoint, n_layers: int) -> HookPoint:
    """``point`` as a :class:`HookPoint`, checked against a model of ``n_layers`` blocks."""
    parsed = point if isinstance(point, HookPoint) else HookPoint.parse(point)
    if parsed.site not in ALL_SITES:
        raise InterventionError(
            f"unknown site {parsed.site!r}; the sites are {', '.join(ALL_SITES)}"
        )
    check_block(parsed.block, n_layers)
    return parsed


def check_block(block: int, n_layers: int) -> int:
    """``block`` if it indexes one of ``n_layers`` blocks, else an :class:`InterventionError`."""
    if isinstance(block, bool) or not isinstance(block, int):
        raise InterventionError(f"a block index must be an int, not {block!r}")
    if not 0 <= block < n_layers:
        raise InterventionError(
            f"block {block} is out of range: this model has {n_layers} blocks (0 to "
            f"{n_layers - 1}); address blocks by relative depth to run on any size"
        )
    return block


def block_at_depth(depth: float, n_layers: int) -> int:
    """The block at relative depth ``depth`` (0.0 first, 1.0 last) of ``n_layers`` blocks.

    ``floor(depth * (n_layers - 1) + 0.5)``: the nearest block, halves rounded up, e.g.
    depth 0.5 is block 1 of 2, block 1 of 3 and block 24 of 48.
    """
    if isinstance(depth, bool) or not isinstance(depth, int | float):
        raise InterventionError(f"a relative depth must be a number, not {depth!r}")
    if not (math.isfinite(depth) and 0.0 <= depth <= 1.0):
        raise InterventionError(
            f"relative depth {depth!r} is outside [0, 1]: 0.0 is the first block, 1.0 the last"
        )
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise InterventionError(f"a model needs at least one block, not {n_layers!r}")
    return nearest_block(depth, n_layers)


def hook_name(
    site: Site, *, n_layers: int, block: int | None = None, depth: float | None = None
) -> str:
    """The name of ``site`` at ``block`` (an index) or at ``depth`` (relative), not both.

    ``hook_name("hook_resid_post", depth=1.0, n_layers=48)`` is
    ``"blocks.47.hook_resid_post"``.
    """
    if site not in ALL_SITES:
        raise InterventionError(f"unknown site {site!r}; the sites are {', '.join(ALL_SITES)}")
    if (block is None) == (depth is None):
        raise InterventionError("give a hook point either a block index or a relative depth")
    if depth is not None:
        return HookPoint(block_at_depth(depth, n_layers), site).name
    return HookPoint(check_block(cast(int, block), n_layers), site).name


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook point name of a model with ``n_layers`` blocks, in forward order."""
    return [HookPoint(block, site).name for block in range(n_layers) for site in SITES]
