"""Layouts inferred where the stream is not a plain sum of module outputs, checked against
transformers' ``hidden_states`` and weight surgery, never against the code under test.

The oracles: with a sublayer's last weights zeroed (weight surgery) it adds nothing, so its
site must read zero and the other sublayer's site must be the whole step of the residual
stream, ``hidden_states[i + 1] - hidden_states[i]``; steering a site by ``v`` must move the
stream by exactly ``v``. Named cases from issue 12: falcon (adds attention into its MLP's
output in place), granite (residual multiplier), olmo2 and gemma3_text (norms after the
sublayers), opt (no MLP module; ``fc2`` carries ``[batch·pos, d]``), a mixture of experts
with a shared expert (qwen2_moe) and a hybrid with Mamba blocks (jamba).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from torch import Tensor, nn

from analoglab.interventions import (
    SITES,
    Architecture,
    InterventionError,
    ablate,
    add_vector,
    all_hook_names,
    capture,
    hooks,
    layout_of,
    register_architecture,
    verify_layout,
)

_COMMON: dict[str, Any] = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "falcon": {"num_kv_heads": 4, "parallel_attn": True, "new_decoder_architecture": False},
    "granite": {"num_key_value_heads": 2, "residual_multiplier": 0.22},
    "olmo2": {"num_key_value_heads": 2},
    "gemma3_text": {"num_key_value_heads": 2, "head_dim": 8},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "qwen2_moe": {
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
    },
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 4,
        "num_key_value_heads": 2,
        "mamba_d_state": 8,
        "mamba_dt_rank": 4,
        "use_mamba_kernels": False,
    },
}
# The module each block's attention and MLP end in: zeroing it silences the sublayer.
ATTN_LAST = {"falcon": "self_attention.dense", "opt": "self_attn.out_proj"}
MLP_LAST = {
    "falcon": "mlp.dense_4h_to_h",
    "opt": "fc2",
    "jamba": "feed_forward",
    "qwen2_moe": "mlp",
}


def build(model_type: str, seed: int = 0) -> nn.Module:
    config = transformers.AutoConfig.for_model(model_type, **_COMMON, **CONFIGS[model_type])
    torch.manual_seed(seed)
    model: nn.Module = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def zero(module: nn.Module) -> None:
    """Weight surgery: every parameter of ``module`` set to zero."""
    with torch.no_grad():
        for param in module.parameters():
            param.zero_()


def steps(model: nn.Module, ids: Tensor) -> list[Tensor]:
    """What each block but the last adds to the stream, from transformers' hidden_states."""
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    return [hidden[i + 1] - hidden[i] for i in range(len(hidden) - 2)]


def captured(model: nn.Module, ids: Tensor, sites: tuple[str, ...]) -> dict[str, Tensor]:
    n = layout_of(model).n_layers
    names = [f"blocks.{i}.{s}" for i in range(n) for s in sites]
    with torch.no_grad(), capture(model, names) as cache:
        model(ids)
    return {k: v.clone() for k, v in cache.items()}


@pytest.fixture
def ids() -> Tensor:
    return torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(5))


def surgery_checks(model_type: str, ids: Tensor) -> None:
    """Silence the MLPs: hook_mlp_out reads 0 and hook_attn_out is the stream's step; then
    silence attention instead: hook_attn_out reads 0 and hook_mlp_out is the step."""
    silenced = build(model_type)
    blocks = layout_of(silenced).blocks
    for block in blocks:
        zero(block.get_submodule(MLP_LAST.get(model_type, "mlp.down_proj")))
    cache = captured(silenced, ids, ("hook_attn_out", "hook_mlp_out"))
    for i, step in enumerate(steps(silenced, ids)):
        assert float(cache[f"blocks.{i}.hook_mlp_out"].abs().max()) == 0.0
        torch.testing.assert_close(cache[f"blocks.{i}.hook_attn_out"], step)
    silenced = build(model_type)
    for block in layout_of(silenced).blocks:
        zero(block.get_submodule(ATTN_LAST.get(model_type, "self_attn.o_proj")))
    cache = captured(silenced, ids, ("hook_attn_out", "hook_mlp_out"))
    for i, step in enumerate(steps(silenced, ids)):
        assert float(cache[f"blocks.{i}.hook_attn_out"].abs().max()) == 0.0
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mlp_out"], step)


@pytest.mark.parametrize("model_type", ["falcon", "granite", "olmo2", "gemma3_text", "opt"])
def test_sites_match_weight_surgery(model_type: str, ids: Tensor) -> None:
    assert verify_layout(build(model_type)).verified
    surgery_checks(model_type, ids)


@pytest.mark.parametrize("model_type", ["falcon", "granite", "olmo2", "gemma3_text", "opt"])
def test_steering_a_sublayer_moves_the_stream_by_the_vector(model_type: str, ids: Tensor) -> None:
    # The MLP reads what attention added: silenced, it cannot pass a change on.
    silenced = build(model_type)
    zero(layout_of(silenced).blocks[0].get_submodule(MLP_LAST.get(model_type, "mlp.down_proj")))
    vector = torch.randn(32, generator=torch.Generator().manual_seed(3))
    for model, site in ((build(model_type), "hook_mlp_out"), (silenced, "hook_attn_out")):
        before = steps(model, ids)
        with add_vector(model, f"blocks.0.{site}", vector):
            after = steps(model, ids)
        torch.testing.assert_close(after[0] - before[0], vector.expand_as(before[0]))


def test_falcon_captures_the_mlp_before_attention_is_added_into_it(ids: Tensor) -> None:
    # falcon's block runs `mlp_output += attention_output` after the MLP returns.
    model = build("falcon")
    assert layout_of(model).plan.block_plans[0].sites["hook_mlp_out"].copy
    seen: list[Tensor] = []
    mlp = layout_of(model).blocks[1].get_submodule("mlp")
    handle = mlp.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        cache = captured(model, ids, ("hook_mlp_out",))
    finally:
        handle.remove()
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], seen[0], rtol=0, atol=0)


def test_granite_sites_are_what_is_added_not_what_the_modules_return(ids: Tensor) -> None:
    model = build("granite")
    plan = layout_of(model).plan.block_plans[0]
    assert plan.sites["hook_attn_out"].scale == pytest.approx(0.22)
    assert "residual_multiplier" in plan.meaning
    raw: list[Tensor] = []
    mlp = layout_of(model).blocks[0].get_submodule("mlp")
    handle = mlp.register_forward_hook(lambda m, a, out: raw.append(out.clone()))
    try:
        cache = captured(model, ids, ("hook_mlp_out",))
    finally:
        handle.remove()
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], 0.22 * raw[0])


@pytest.mark.parametrize("model_type", ["olmo2", "gemma3_text"])
def test_llamas_entry_on_a_post_norm_model_is_refused_with_the_invariant(
    model_type: str, table: dict[str, Architecture]
) -> None:
    model = build(model_type)
    llama = Architecture(model_type=model_type, attn_out="self_attn", mlp_out="mlp")
    with pytest.raises(InterventionError, match=r"residual_sum at blocks\.0: FAILED \(off by"):
        register_architecture(llama, model=model)
    assert model_type not in table
    # registered without a model, the entry is still checked before use: those sites refused
    register_architecture(llama)
    report = verify_layout(model)
    assert not report.verified and not report.supports("hook_attn_out")
    assert report.supports("hook_resid_post") and report.supports("attn.hook_z")
    with (
        pytest.raises(InterventionError, match="residual_sum"),
        capture(model, "blocks.0.hook_mlp_out"),
    ):
        pass


def test_opt_mlp_out_is_fc2_seen_as_a_sequence(ids: Tensor) -> None:
    model = build("opt")
    assert layout_of(model).plan.block_plans[0].sites["hook_mlp_out"].flat
    cache = captured(model, ids, ("hook_mlp_out",))
    assert cache["blocks.1.hook_mlp_out"].shape == (2, 7, 32)
    with torch.no_grad(), ablate(model, "blocks.1.hook_mlp_out"):
        ablated = model(ids).logits
    zero(layout_of(model).blocks[1].get_submodule("fc2"))
    with torch.no_grad():
        torch.testing.assert_close(ablated, model(ids).logits)


def test_moe_router_logits_and_experts_are_transformers_own(ids: Tensor) -> None:
    model = build("qwen2_moe")
    report = verify_layout(model)
    assert report.verified and report.supports("mlp.hook_router_logits")
    cache = captured(model, ids, ("mlp.hook_router_logits", "mlp.hook_experts"))
    with torch.no_grad():
        own = model(ids, output_router_logits=True).router_logits
    for i, logits in enumerate(own):
        torch.testing.assert_close(
            cache[f"blocks.{i}.mlp.hook_router_logits"], logits.view(2, 7, 4)
        )
        chosen = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).indices.view(2, 7, 2)
        torch.testing.assert_close(cache[f"blocks.{i}.mlp.hook_experts"], chosen)
    with (
        pytest.raises(InterventionError, match="read-only"),
        torch.no_grad(),
        hooks(model, {"blocks.0.mlp.hook_router_logits": lambda x, f: x * 0}),
    ):
        model(ids)


def test_moe_with_a_shared_expert_adds_what_hook_mlp_out_says(ids: Tensor) -> None:
    # The shared expert is inside the MoE block: silencing the whole block silences both.
    surgery_checks("qwen2_moe", ids)


def test_a_hybrid_refuses_attention_sites_at_mamba_blocks_and_keeps_the_rest(
    ids: Tensor,
) -> None:
    model = build("jamba")
    report = verify_layout(model)
    assert report.verified
    assert report.sites["attn.hook_z"].blocks == (1,)
    assert report.sites["hook_attn_out"].blocks == (1,)
    assert "not attention" in report.sites["hook_attn_out"].reason
    for site in ("hook_resid_pre", "hook_mlp_out", "hook_resid_post"):
        assert report.supports(site)  # type: ignore[arg-type]
    with (
        pytest.raises(InterventionError, match="block 0's token mixer 'mamba'"),
        capture(model, "blocks.0.hook_attn_out"),
    ):
        pass
    # The MLP comes after the mixer: silencing it takes exactly hook_mlp_out off the step.
    full = steps(model, ids)
    cache = captured(model, ids, ("hook_mlp_out",))
    for i in (0, 1):  # a Mamba block, then an attention block with a mixture of experts
        silenced = build("jamba")
        zero(layout_of(silenced).blocks[i].get_submodule("feed_forward"))
        step = steps(silenced, ids)[i]
        torch.testing.assert_close(cache[f"blocks.{i}.hook_mlp_out"], full[i] - step)


def test_every_named_case_captures_every_offered_site(ids: Tensor) -> None:
    for model_type in CONFIGS:
        model = build(model_type)
        layout = layout_of(model)
        names = [
            name
            for name in all_hook_names(layout.n_layers)
            if layout.supports(name.split(".", 2)[2], int(name.split(".")[1]))  # type: ignore[arg-type]
        ]
        with torch.no_grad(), capture(model, names) as cache:
            model(ids)
        assert set(cache) == set(names)
        assert {n.split(".", 2)[2] for n in names} >= {"hook_resid_pre", "hook_resid_post"}
        assert all(s in SITES for s in (n.split(".", 2)[2] for n in names))
