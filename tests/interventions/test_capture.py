"""Capture (:mod:`analoglab.interventions.capture`) against transformers' own outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from analoglab.interventions import all_hook_names, capture, layout_of

if TYPE_CHECKING:  # the fixture's type; conftest is not imported at run time
    from conftest import LeftPadded


def test_resid_post_is_transformers_hidden_states(model: nn.Module, ids: Tensor) -> None:
    last = layout_of(model).n_layers - 1
    names = [f"blocks.{i}.hook_resid_post" for i in range(last + 1)]
    with torch.no_grad(), capture(model, names) as cache:
        hidden = model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == last + 2
    for i in range(last):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], hidden[i + 1])


def test_the_last_block_is_hidden_states_before_the_final_norm(
    model: nn.Module, ids: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # transformers returns hidden_states[-1] with the final norm applied
    # (tie_last_hidden_states); hook_resid_post of the last block is the block's own output.
    layout = layout_of(model)
    name = f"blocks.{layout.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        with capture(model, name) as cache:
            normed = model(ids, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(layout.final_norm(cache[name]), normed)
        monkeypatch.setattr(model.config, "tie_last_hidden_states", False, raising=False)
        untied = model(ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(cache[name], untied)
    assert not torch.allclose(cache[name], normed)


def test_resid_pre_is_the_embedding_then_the_previous_block(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad(), capture(model, all_hook_names(3)) as cache:
        hidden = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], hidden[0])
    for i in range(2):
        pre, post = cache[f"blocks.{i + 1}.hook_resid_pre"], cache[f"blocks.{i}.hook_resid_post"]
        assert pre.data_ptr() == post.data_ptr()  # the very same tensor
        torch.testing.assert_close(pre, post, rtol=0, atol=0)


def test_a_block_adds_attention_and_mlp_outputs(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad(), capture(model, all_hook_names(3)) as cache:
        model(ids)
    for i in range(3):
        torch.testing.assert_close(
            cache[f"blocks.{i}.hook_resid_post"],
            cache[f"blocks.{i}.hook_resid_pre"]
            + cache[f"blocks.{i}.hook_attn_out"]
            + cache[f"blocks.{i}.hook_mlp_out"],
        )


def test_hook_z_is_the_heads_before_the_output_projection(model: nn.Module, ids: Tensor) -> None:
    layout = layout_of(model)
    projection = layout.module(1, "attn.hook_z")
    outputs: list[Tensor] = []
    handle = projection.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        with torch.no_grad(), capture(model, "blocks.1.attn.hook_z") as cache:
            model(ids)
    finally:
        handle.remove()
    z = cache["blocks.1.attn.hook_z"]
    assert z.shape == (2, 7, layout.n_heads, layout.d_head)
    with torch.no_grad():
        torch.testing.assert_close(projection(z.flatten(-2)), outputs[0])


def test_capture_leaves_the_logits_alone(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        with capture(model, all_hook_names(3), positions=[-1, 0]):
            hooked = model(ids).logits
    torch.testing.assert_close(hooked, clean, rtol=0, atol=0)


def test_capture_copies_nothing_unless_asked(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad(), capture(model, ["blocks.0.hook_resid_post"]) as cache:
        hidden = model(ids, output_hidden_states=True).hidden_states
    assert cache["blocks.0.hook_resid_post"].data_ptr() == hidden[1].data_ptr()


def test_captures_are_detached(model: nn.Module, ids: Tensor) -> None:
    with capture(model, ["blocks.1.hook_mlp_out", "blocks.1.attn.hook_z"], to_cpu=True) as cache:
        model(ids).logits.sum().backward()
    model.zero_grad(set_to_none=True)
    for value in cache.values():
        assert not value.requires_grad
        assert value.device == torch.device("cpu")


def test_capture_at_positions(model: nn.Module, ids: Tensor) -> None:
    names = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]
    with torch.no_grad():
        with capture(model, names) as full:
            model(ids)
        with capture(model, names, positions=[-1, 0, 2]) as some:
            model(ids)
        with capture(model, names[0], positions=-2) as one:
            model(ids)
    for name in names:
        torch.testing.assert_close(some[name], full[name][:, [6, 0, 2]])
    assert one[names[0]].shape == (2, 1, 32)
    torch.testing.assert_close(one[names[0]][:, 0], full[names[0]][:, 5])


def test_each_forward_overwrites_and_nothing_leaks_after(model: nn.Module, ids: Tensor) -> None:
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        with capture(model, name) as cache:
            model(ids)
            model(ids[:1, :3])
        assert cache[name].shape == (1, 3, 32)
        model(ids)
        assert cache[name].shape == (1, 3, 32)
        with capture(model, name) as other:
            pass
    assert other == {}


def test_left_padding_gives_each_prompts_own_captures(
    model: nn.Module, left_padded: LeftPadded
) -> None:
    names = all_hook_names(3)
    with torch.no_grad():
        with capture(model, names, positions=[-1, -2, 0]) as batched:
            model(**left_padded.batch)
        for row, prompt in enumerate(left_padded.prompts):
            with capture(model, names, positions=[-1, -2, 0]) as alone:
                model(prompt)
            for name in names:
                torch.testing.assert_close(batched[name][row : row + 1], alone[name])


def test_a_value_changed_in_place_after_capture_is_an_error_not_a_wrong_number(
    model: nn.Module, ids: Tensor
) -> None:
    from analoglab.interventions import InterventionError

    # Stand in for a model the layout's probe did not see work in place: block 1 adds to
    # its input (block 0's output, captured without a copy) after the capture stored it.
    def add_in_place(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        args[0].add_(1.0)

    handle = layout_of(model).blocks[1].register_forward_pre_hook(add_in_place)
    try:
        with (
            torch.no_grad(),
            pytest.raises(InterventionError, match="changed in place after it was captured"),
            capture(model, "blocks.0.hook_resid_post") as cache,
        ):
            model(ids)
        with torch.no_grad(), capture(model, "blocks.0.hook_resid_post", copy=True) as copied:
            model(ids)  # a copy is taken at once: the value before the change
    finally:
        handle.remove()
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    assert "blocks.0.hook_resid_post" in cache
    torch.testing.assert_close(copied["blocks.0.hook_resid_post"], hidden[1])
