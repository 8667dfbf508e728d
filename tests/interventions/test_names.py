"""Hook point names and relative depth (:mod:`analoglab.interventions.names`)."""

from __future__ import annotations

import math

import pytest

from analoglab.errors import AnalogLabError
from analoglab.interventions import (
    ALL_SITES,
    SITES,
    HookPoint,
    InterventionError,
    all_hook_names,
    block_at_depth,
    hook_name,
    hook_point,
)


@pytest.mark.parametrize("site", ALL_SITES)
def test_every_site_parses_and_prints_back(site: str) -> None:
    point = HookPoint.parse(f"blocks.12.{site}")
    assert point == HookPoint(12, site)  # type: ignore[arg-type]
    assert str(point) == point.name == f"blocks.12.{site}"


@pytest.mark.parametrize(
    "name",
    [
        "blocks.0.hook_z",  # hook_z lives under attn.
        "blocks.x.hook_resid_post",
        "blocks.-1.hook_resid_post",
        "blocks.01.hook_resid_post",
        "block.0.hook_resid_post",
        "blocks.0.hook_resid_post.extra",
        "blocks.0.hook_resid_mid",
        "",
    ],
)
def test_a_bad_name_is_an_intervention_error(name: str) -> None:
    with pytest.raises(InterventionError, match="not a hook point name"):
        HookPoint.parse(name)


def test_intervention_error_is_an_analog_lab_error() -> None:
    assert issubclass(InterventionError, AnalogLabError)


def test_a_name_must_be_a_string() -> None:
    with pytest.raises(InterventionError, match="must be a string"):
        HookPoint.parse(3)  # type: ignore[arg-type]


def test_hook_point_checks_the_block_exists() -> None:
    assert hook_point("blocks.2.hook_mlp_out", 3) == HookPoint(2, "hook_mlp_out")
    assert hook_point(HookPoint(0, "attn.hook_z"), 3) == HookPoint(0, "attn.hook_z")
    with pytest.raises(InterventionError, match=r"block 3 is out of range: this model has 3"):
        hook_point("blocks.3.hook_mlp_out", 3)
    with pytest.raises(InterventionError, match="out of range"):
        hook_point(HookPoint(-1, "hook_mlp_out"), 3)


@pytest.mark.parametrize(
    ("depth", "n_layers", "block"),
    [
        (0.0, 2, 0),
        (1.0, 2, 1),
        (0.5, 2, 1),  # 0.5 → halves round up
        (0.49, 2, 0),
        (0.5, 3, 1),
        (0.25, 3, 1),  # 0.5 → up
        (0.24, 3, 0),
        (0.5, 48, 24),  # 23.5 → up
        (1.0, 48, 47),
        (1 / 3, 48, 16),  # 15.67
        (0.35, 11, 4),  # 3.5 in decimal, 3.4999... in binary: still up
        (0.0, 1, 0),
        (1.0, 1, 0),
        (1, 4, 3),  # an int depth is a depth
    ],
)
def test_relative_depth_is_the_nearest_block_halves_up(
    depth: float, n_layers: int, block: int
) -> None:
    assert block_at_depth(depth, n_layers) == block


@pytest.mark.parametrize("depth", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_a_depth_outside_0_1_is_an_intervention_error(depth: float) -> None:
    with pytest.raises(InterventionError, match=r"outside \[0, 1\]"):
        block_at_depth(depth, 4)


@pytest.mark.parametrize("depth", [True, "0.5", None])
def test_a_depth_must_be_a_number(depth: object) -> None:
    with pytest.raises(InterventionError, match="must be a number"):
        block_at_depth(depth, 4)  # type: ignore[arg-type]


def test_a_model_needs_a_block() -> None:
    with pytest.raises(InterventionError, match="at least one block"):
        block_at_depth(0.5, 0)


def test_hook_name_by_index_or_by_depth() -> None:
    assert hook_name("hook_resid_post", block=1, n_layers=2) == "blocks.1.hook_resid_post"
    assert hook_name("attn.hook_z", depth=1.0, n_layers=48) == "blocks.47.attn.hook_z"
    assert hook_name("hook_mlp_out", depth=0.5, n_layers=2) == "blocks.1.hook_mlp_out"
    with pytest.raises(InterventionError, match="either a block index or a relative depth"):
        hook_name("hook_mlp_out", block=1, depth=0.5, n_layers=2)
    with pytest.raises(InterventionError, match="either a block index or a relative depth"):
        hook_name("hook_mlp_out", n_layers=2)
    with pytest.raises(InterventionError, match="out of range"):
        hook_name("hook_mlp_out", block=2, n_layers=2)
    with pytest.raises(InterventionError, match="unknown site"):
        hook_name("hook_nothing", block=0, n_layers=2)  # type: ignore[arg-type]


def test_all_hook_names_in_forward_order() -> None:
    names = all_hook_names(2)
    assert len(names) == 2 * len(SITES)
    assert names[0] == "blocks.0.hook_resid_pre"
    assert names[-1] == "blocks.1.hook_resid_post"
    assert names.index("blocks.0.attn.hook_z") < names.index("blocks.0.hook_mlp_out")
