"""Ablation (:mod:`analoglab.interventions.ablation`), checked against weight surgery."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest
import torch
from torch import Tensor, nn

from analoglab.interventions import InterventionError, ablate, capture, layout_of, patch

# The last layer of each architecture's MLP: zeroing it (weight and bias) removes the MLP.
MLP_LAST_LAYER = {
    "llama": "mlp.down_proj",
    "mistral": "mlp.down_proj",
    "qwen2": "mlp.down_proj",
    "gemma2": "mlp.down_proj",  # then post_feedforward_layernorm, which maps 0 to 0
    "phi3": "mlp.down_proj",
    "gpt2": "mlp.c_proj",
    "gpt_neox": "mlp.dense_4h_to_h",
}


def test_ablating_nothing_leaves_the_logits_unchanged(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        with ablate(model, "blocks.1.attn.hook_z", heads=[]):
            no_heads = model(ids).logits
        with ablate(model, "blocks.1.hook_mlp_out", positions=[]):
            no_positions = model(ids).logits
    torch.testing.assert_close(no_heads, clean)
    torch.testing.assert_close(no_positions, clean)


def test_zero_ablating_a_head_changes_the_logits(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        for block in range(3):
            with ablate(model, f"blocks.{block}.attn.hook_z", heads=[1]):
                ablated = model(ids).logits
            assert not torch.allclose(ablated, clean)


def test_a_zeroed_head_is_its_output_projection_columns_zeroed(
    arch: str, model: nn.Module, ids: Tensor, build_model: Callable[[str], nn.Module]
) -> None:
    layout = layout_of(model)
    head, d_head = 2, layout.d_head
    surgery = build_model(arch)
    projection = layout_of(surgery).module(1, "attn.hook_z")
    with torch.no_grad():
        weight = cast(Tensor, projection.weight)
        if isinstance(projection, nn.Linear):  # [out, in]
            weight[:, head * d_head : (head + 1) * d_head] = 0
        else:  # gpt2's Conv1D is [in, out]
            weight[head * d_head : (head + 1) * d_head, :] = 0
        expected = surgery(ids).logits
        with ablate(model, "blocks.1.attn.hook_z", heads=[head]):
            ablated = model(ids).logits
    torch.testing.assert_close(ablated, expected)


def test_a_zeroed_mlp_is_its_last_layer_zeroed(
    arch: str, model: nn.Module, ids: Tensor, build_model: Callable[[str], nn.Module]
) -> None:
    surgery = build_model(arch)
    last = layout_of(surgery).blocks[2].get_submodule(MLP_LAST_LAYER[arch])
    with torch.no_grad():
        for parameter in last.parameters():
            parameter.zero_()
        expected = surgery(ids).logits
        with ablate(model, "blocks.2.hook_mlp_out"):
            ablated = model(ids).logits
    torch.testing.assert_close(ablated, expected)


def test_ablation_writes_only_the_chosen_heads_and_positions(model: nn.Module, ids: Tensor) -> None:
    layout = layout_of(model)
    name = "blocks.0.attn.hook_z"
    mean = torch.randn(layout.n_heads, layout.d_head)
    with torch.no_grad():
        with capture(model, name) as clean:
            model(ids)
        with (
            ablate(model, name, mode="mean", mean=mean, heads=[0, 3], positions=[-1, 1]),
            capture(model, name) as ablated,
        ):
            model(ids)
    expected = clean[name].clone()
    for pos in (6, 1):
        for head in (0, 3):
            expected[:, pos, head] = mean[head]
    torch.testing.assert_close(ablated[name], expected, rtol=0, atol=0)


def test_mean_ablation_of_zeros_is_zero_ablation(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        with ablate(model, "blocks.1.hook_mlp_out"):
            zeroed = model(ids).logits
        with ablate(model, "blocks.1.hook_mlp_out", mode="mean", mean=torch.zeros(32)):
            mean_zero = model(ids).logits
    torch.testing.assert_close(mean_zero, zeroed, rtol=0, atol=0)


def test_mean_ablation_is_patching_in_the_mean(model: nn.Module, ids: Tensor) -> None:
    layout = layout_of(model)
    mean = torch.randn(layout.n_heads, layout.d_head)
    name = "blocks.2.attn.hook_z"
    with torch.no_grad():
        with ablate(model, name, mode="mean", mean=mean, heads=[1]):
            ablated = model(ids).logits
        source = mean.expand(1, 7, *mean.shape)
        with patch(model, {name: source}, heads=[1]):
            patched = model(ids).logits
    torch.testing.assert_close(ablated, patched)


def test_mean_ablation_at_the_last_position_keeps_earlier_logits(
    model: nn.Module, ids: Tensor
) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        with ablate(model, "blocks.0.hook_mlp_out", mode="mean", mean=torch.ones(32), positions=-1):
            ablated = model(ids).logits
    torch.testing.assert_close(ablated[:, :-1], clean[:, :-1])
    assert not torch.allclose(ablated[:, -1], clean[:, -1])


def test_bad_ablations_are_refused(model: nn.Module) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"point": "blocks.0.hook_mlp_out", "heads": [0]}, "only at attn.hook_z"),
        ({"point": "blocks.0.attn.hook_z", "heads": [4]}, "head 4 is out of range"),
        ({"point": "blocks.0.attn.hook_z", "heads": ["0"]}, "must be an int"),
        ({"point": "blocks.0.hook_mlp_out", "mode": "mean"}, "needs a mean tensor"),
        ({"point": "blocks.0.hook_mlp_out", "mean": torch.zeros(32)}, "pass mode='mean'"),
        (
            {"point": "blocks.0.hook_mlp_out", "mode": "mean", "mean": torch.zeros(1, 32)},
            r"shape \(1, 32\); it needs \(32,\)",
        ),
        ({"point": "blocks.0.hook_mlp_out", "mode": "resample"}, "unknown ablation mode"),
        ({"point": "blocks.5.hook_mlp_out"}, "out of range"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InterventionError, match=message), ablate(model, **kwargs):  # type: ignore[arg-type]
            pass
