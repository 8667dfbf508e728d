"""Activation patching (:mod:`analoglab.interventions.patching`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from analoglab.interventions import (
    InterventionError,
    all_hook_names,
    capture,
    hooks,
    layout_of,
    patch,
)

if TYPE_CHECKING:  # the fixture's type; conftest is not imported at run time
    from conftest import LeftPadded


def other_ids(seed: int, length: int = 7, batch: int = 2) -> Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_patching_a_run_into_itself_changes_nothing(model: nn.Module, ids: Tensor) -> None:
    names = all_hook_names(layout_of(model).n_layers)
    with torch.no_grad():
        with capture(model, names) as cache:
            clean = model(ids).logits
        with patch(model, cache):
            patched = model(ids).logits
        with capture(model, names, positions=[-1, 0]) as at_positions:
            model(ids)
        with patch(model, at_positions, positions=[-1, 0]):
            patched_at = model(ids).logits
    torch.testing.assert_close(patched, clean)
    torch.testing.assert_close(patched_at, clean)


def test_patching_the_first_block_input_gives_the_source_run(model: nn.Module, ids: Tensor) -> None:
    source = other_ids(5)
    with torch.no_grad():
        with capture(model, "blocks.0.hook_resid_pre") as cache:
            expected = model(source).logits
        with patch(model, cache):
            patched = model(ids).logits
    torch.testing.assert_close(patched, expected)


def test_patching_the_last_token_across_lengths_and_padding(
    model: nn.Module, left_padded: LeftPadded
) -> None:
    # Positions count real tokens, so a 4-token clean run patches into padded rows of 3 to 7.
    last = f"blocks.{layout_of(model).n_layers - 1}.hook_resid_post"
    clean = other_ids(6, length=4, batch=1)
    with torch.no_grad():
        with capture(model, last, positions=[-1]) as cache:
            expected = model(clean).logits[:, -1]
        with patch(model, cache, positions=[-1]):
            patched = model(**left_padded.batch).logits[:, -1]
    torch.testing.assert_close(patched, expected.expand_as(patched))


def test_patching_chosen_heads(model: nn.Module, ids: Tensor) -> None:
    name = "blocks.1.attn.hook_z"
    with torch.no_grad():
        with capture(model, name) as source:
            model(other_ids(7))
        with capture(model, name) as target:
            model(ids)
        with patch(model, source, heads=[0, 2]), capture(model, name) as patched:
            model(ids)
    z = patched[name]
    torch.testing.assert_close(z[:, :, [0, 2]], source[name][:, :, [0, 2]])
    torch.testing.assert_close(z[:, :, [1, 3]], target[name][:, :, [1, 3]])


def test_patching_changes_downstream_logits(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        with capture(model, "blocks.1.hook_mlp_out") as cache:
            model(other_ids(8))
        clean = model(ids).logits
        with patch(model, cache):
            patched = model(ids).logits
    assert not torch.allclose(patched, clean)


def test_bad_sources_are_refused_before_the_forward(model: nn.Module) -> None:
    cases: list[tuple[dict[str, object], dict[str, object], str]] = [
        ({"blocks.0.hook_resid_post": torch.zeros(2, 7)}, {}, r"it needs \[batch, pos, 32\]"),
        ({"blocks.0.attn.hook_z": torch.zeros(2, 7, 32)}, {}, "it needs"),
        ({"blocks.0.hook_resid_post": "cached"}, {}, "not a tensor"),
        ({"blocks.0.hook_resid_post": torch.zeros(2, 7, 32)}, {"heads": [0]}, "attn.hook_z"),
        ({"blocks.7.hook_resid_post": torch.zeros(2, 7, 32)}, {}, "out of range"),
    ]
    for sources, kwargs, message in cases:
        with pytest.raises(InterventionError, match=message), patch(model, sources, **kwargs):  # type: ignore[arg-type]
            pass


def test_a_source_that_does_not_fit_the_run_fails_cleanly(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        wrong_batch = {"blocks.0.hook_resid_post": torch.zeros(3, 7, 32)}
        with pytest.raises(InterventionError, match="batch of 2"), patch(model, wrong_batch):
            model(ids)
        wrong_length = {"blocks.0.hook_resid_post": torch.zeros(2, 2, 32)}
        with (
            pytest.raises(InterventionError, match="with 1 chosen positions"),
            patch(model, wrong_length, positions=[-1]),
        ):
            model(ids)
        with hooks(model, {}):
            torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)


def test_a_batch_of_one_patches_every_row(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        with capture(model, "blocks.2.hook_resid_post", positions=-1) as cache:
            expected = model(other_ids(9, batch=1)).logits[:, -1]
        with patch(model, cache, positions=-1):
            patched = model(ids).logits[:, -1]
    torch.testing.assert_close(patched, expected.expand(2, -1))
