"""Steering (:mod:`analoglab.interventions.steering`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from analoglab.interventions import (
    SITES,
    InterventionError,
    Site,
    add_vector,
    capture,
    layout_of,
)

if TYPE_CHECKING:  # the fixture's type; conftest is not imported at run time
    from conftest import LeftPadded


def random_vector(model: nn.Module, site: Site, seed: int = 3) -> Tensor:
    shape = layout_of(model).activation_shape(site)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("site", SITES)
def test_adding_zero_leaves_the_logits_unchanged(model: nn.Module, ids: Tensor, site: Site) -> None:
    name = layout_of(model).hook_name(site, depth=0.5)
    zero = torch.zeros(layout_of(model).activation_shape(site))
    with torch.no_grad():
        clean = model(ids).logits
        with add_vector(model, name, zero):
            steered = model(ids).logits
        with add_vector(model, name, zero, positions=[-1, 0]):
            steered_at = model(ids).logits
    torch.testing.assert_close(steered, clean)
    torch.testing.assert_close(steered_at, clean)


@pytest.mark.parametrize("site", SITES)
def test_adding_a_vector_changes_the_logits(model: nn.Module, ids: Tensor, site: Site) -> None:
    name = layout_of(model).hook_name(site, depth=0.0)
    with torch.no_grad():
        clean = model(ids).logits
        with add_vector(model, name, random_vector(model, site), scale=3.0):
            steered = model(ids).logits
    assert not torch.allclose(steered, clean)


def test_the_steered_activation_is_the_clean_one_plus_the_vector(
    model: nn.Module, ids: Tensor
) -> None:
    vector = random_vector(model, "attn.hook_z")
    name = "blocks.1.attn.hook_z"
    with torch.no_grad():
        with capture(model, name) as clean:
            model(ids)
        with add_vector(model, name, vector, scale=0.5), capture(model, name) as steered:
            model(ids)
    torch.testing.assert_close(steered[name], clean[name] + 0.5 * vector)


def test_scale_multiplies_the_vector(model: nn.Module, ids: Tensor) -> None:
    vector = random_vector(model, "hook_resid_post")
    with torch.no_grad():
        with add_vector(model, "blocks.1.hook_resid_post", vector, scale=-2.0):
            scaled = model(ids).logits
        with add_vector(model, "blocks.1.hook_resid_post", -2.0 * vector):
            doubled = model(ids).logits
    torch.testing.assert_close(scaled, doubled)


def test_resid_post_of_a_block_feeds_resid_pre_of_the_next(model: nn.Module, ids: Tensor) -> None:
    vector = random_vector(model, "hook_resid_post")
    with torch.no_grad():
        with add_vector(model, "blocks.0.hook_resid_post", vector):
            after_0 = model(ids).logits
        with add_vector(model, "blocks.1.hook_resid_pre", vector):
            before_1 = model(ids).logits
    torch.testing.assert_close(after_0, before_1)


def test_at_the_last_position_only_the_last_logits_change(model: nn.Module, ids: Tensor) -> None:
    vector = random_vector(model, "hook_resid_post")
    with torch.no_grad():
        clean = model(ids).logits
        with add_vector(model, "blocks.0.hook_resid_post", vector, scale=4.0, positions=[-1]):
            steered = model(ids).logits
    torch.testing.assert_close(steered[:, :-1], clean[:, :-1])
    assert not torch.allclose(steered[:, -1], clean[:, -1])


def test_positions_named_twice_add_once(model: nn.Module, ids: Tensor) -> None:
    vector = random_vector(model, "hook_mlp_out")
    name = "blocks.0.hook_mlp_out"
    with torch.no_grad():
        with add_vector(model, name, vector, positions=[-1, 6]), capture(model, name) as twice:
            model(ids)
        with add_vector(model, name, vector, positions=[-1]), capture(model, name) as once:
            model(ids)
    torch.testing.assert_close(twice[name], once[name])


def test_left_padded_steering_matches_each_prompt_alone(
    model: nn.Module, left_padded: LeftPadded
) -> None:
    vector = random_vector(model, "hook_resid_post")
    name = layout_of(model).hook_name("hook_resid_post", depth=0.5)
    with torch.no_grad(), add_vector(model, name, vector, scale=3.0, positions=[-1, 0]):
        batched = model(**left_padded.batch).logits[:, -1]
        alone = [model(prompt).logits[:, -1] for prompt in left_padded.prompts]
    torch.testing.assert_close(batched, torch.cat(alone))


def test_a_vector_of_the_wrong_shape_is_refused(model: nn.Module) -> None:
    cases: list[tuple[str, object, str]] = [
        ("blocks.0.hook_resid_post", torch.zeros(4, 8), r"shape \(4, 8\); it needs \(32,\)"),
        ("blocks.0.attn.hook_z", torch.zeros(32), r"shape \(32,\); it needs \(4, "),
        ("blocks.0.hook_mlp_out", [0.0] * 32, r"shape list; it needs \(32,\)"),
    ]
    for name, vector, message in cases:
        with pytest.raises(InterventionError, match=message), add_vector(model, name, vector):  # type: ignore[arg-type]
            pass
