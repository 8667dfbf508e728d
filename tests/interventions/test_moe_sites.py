"""The read-only sites of a mixture-of-experts MLP hold what the model itself computed: the
router's logits as transformers returns them (``output_router_logits=True``) and, per token,
the experts its top-k picks from them. Checked on a MoE with a shared expert (qwen2_moe) and
on a hybrid whose only MoE block sits between Mamba blocks (jamba)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from analoglab.interventions import InterventionError, capture, layout_of

from .test_inference import build


@pytest.fixture
def ids() -> Tensor:
    return torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(
    ("model_type", "moe_blocks", "top_k"), [("qwen2_moe", [0, 1, 2], 2), ("jamba", [1], 2)]
)
def test_router_sites_hold_the_models_own_router_logits_and_choices(
    model_type: str, moe_blocks: list[int], top_k: int, ids: Tensor
) -> None:
    model = build(model_type)
    layout = layout_of(model)
    offered = [b for b in range(layout.n_layers) if layout.supports("mlp.hook_router_logits", b)]
    assert offered == moe_blocks
    names = [f"blocks.{b}.mlp.{s}" for b in offered for s in ("hook_router_logits", "hook_experts")]
    with torch.no_grad():
        expected = model(ids, output_router_logits=True).router_logits
        with capture(model, names) as cache:
            model(ids)
    assert len(expected) == len(offered)  # transformers returns one per MoE block
    batch, pos = ids.shape
    for k, block in enumerate(offered):
        logits = cache[f"blocks.{block}.mlp.hook_router_logits"]
        torch.testing.assert_close(logits, expected[k].reshape(batch, pos, -1))
        chosen = cache[f"blocks.{block}.mlp.hook_experts"]
        assert chosen.shape == (batch, pos, top_k) and not chosen.is_floating_point()
        top = expected[k].reshape(batch, pos, -1).topk(top_k, dim=-1).indices
        assert torch.equal(chosen.sort(dim=-1).values, top.sort(dim=-1).values)


def test_router_sites_are_refused_where_the_block_has_no_router() -> None:
    model = build("jamba")
    with (
        pytest.raises(InterventionError, match="block 0"),
        capture(model, "blocks.0.mlp.hook_router_logits"),
    ):
        pass
