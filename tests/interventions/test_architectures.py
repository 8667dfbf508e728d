"""Layouts found and overridden (:mod:`analoglab.interventions.layout`,
:mod:`analoglab.interventions.architectures`) on the seven architectures of the old table."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
import transformers
from torch import nn

from analoglab.interventions import (
    ARCHITECTURES,
    SITES,
    Architecture,
    InterventionError,
    capture,
    layout_of,
    register_architecture,
    verify_layout,
)

EXPECTED_D_HEAD = {"gemma2": 16}  # its config sets head_dim apart from width / heads

# What the hand-written table said before layouts were inferred: inference must find the same.
OLD_TABLE = {
    "llama": ("layers", "self_attn.o_proj", "self_attn", "mlp", "norm"),
    "mistral": ("layers", "self_attn.o_proj", "self_attn", "mlp", "norm"),
    "qwen2": ("layers", "self_attn.o_proj", "self_attn", "mlp", "norm"),
    "gemma2": (
        "layers",
        "self_attn.o_proj",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "norm",
    ),
    "phi3": ("layers", "self_attn.o_proj", "self_attn", "mlp", "norm"),
    "gpt2": ("h", "attn.c_proj", "attn", "mlp", "ln_f"),
    "gpt_neox": ("layers", "attention.dense", "attention", "mlp", "final_layer_norm"),
}


def test_no_architecture_is_listed_by_hand(archs: tuple[str, ...]) -> None:
    assert ARCHITECTURES == {}
    assert set(archs) == set(OLD_TABLE)


def test_inference_finds_what_the_old_table_said(arch: str, model: nn.Module) -> None:
    layout = layout_of(model)
    blocks, proj, attn_out, mlp_out, final_norm = OLD_TABLE[arch]
    assert layout.plan.blocks == blocks
    assert layout.plan.final_norm == final_norm
    for block in range(layout.n_layers):
        sites = layout.plan.block_plans[block].sites
        assert sites["attn.hook_z"].path == proj
        assert sites["hook_attn_out"].path == attn_out
        assert sites["hook_mlp_out"].path == mlp_out
        assert sites["hook_attn_out"].scale == sites["hook_mlp_out"].scale == 1.0
    assert verify_layout(model).verified


def test_layout_resolves_blocks_and_dimensions(arch: str, model: nn.Module) -> None:
    layout = layout_of(model)
    assert layout.model_type == arch
    assert layout.n_layers == 3
    assert (layout.n_heads, layout.d_head, layout.d_model) == (4, EXPECTED_D_HEAD.get(arch, 8), 32)
    assert layout.activation_shape("attn.hook_z") == (4, layout.d_head)
    assert layout.activation_shape("hook_resid_post") == (32,)
    assert layout.hook_name("hook_resid_post", depth=1.0) == "blocks.2.hook_resid_post"
    assert layout.block_at_depth(0.5) == 1
    for site in SITES:
        assert isinstance(layout.module(2, site), nn.Module)
        assert layout.supports(site)
    assert layout.module(1, "hook_resid_pre") is layout.blocks[1]
    assert layout_of(model) is layout  # bound once per model


def test_layout_works_on_the_base_model_too(model: nn.Module) -> None:
    base = cast(nn.Module, model.base_model)
    assert base is not model
    layout = layout_of(base)
    assert layout.blocks == layout_of(model).blocks


def test_dense_models_refuse_the_router_sites_with_a_reason(model: nn.Module) -> None:
    sites = verify_layout(model).sites
    assert not sites["mlp.hook_router_logits"].blocks
    assert "not a mixture of experts" in sites["mlp.hook_router_logits"].reason
    with pytest.raises(InterventionError, match="does not support blocks.0.mlp.hook_experts"):
        layout_of(model).module(0, "mlp.hook_experts")


def test_something_that_is_not_a_transformers_model() -> None:
    with pytest.raises(InterventionError, match="no config.model_type"):
        layout_of(nn.Linear(2, 2))


def test_an_override_that_does_not_fit_names_the_missing_module(
    model: nn.Module, arch: str, table: dict[str, Architecture]
) -> None:
    register_architecture(Architecture(model_type=arch, final_norm="no_norm_here"))
    with pytest.raises(InterventionError, match=r"no submodule 'no_norm_here' \(the final norm"):
        layout_of(model)
    register_architecture(Architecture(model_type=arch, blocks="elsewhere"), replace=True)
    with pytest.raises(InterventionError, match=r"no submodule 'elsewhere'"):
        layout_of(model)


def test_an_override_with_a_wrong_site_refuses_that_site_only(
    model: nn.Module, arch: str, table: dict[str, Architecture]
) -> None:
    register_architecture(Architecture(model_type=arch, mlp_out="feed_forward"))
    layout = layout_of(model)
    with pytest.raises(InterventionError, match=r"'feed_forward' is not a submodule of block 1"):
        layout.module(1, "hook_mlp_out")
    with (
        pytest.raises(InterventionError, match="feed_forward"),
        capture(model, "blocks.1.hook_mlp_out"),
    ):
        pass
    assert layout.supports("hook_resid_post") and layout.supports("attn.hook_z")


def test_an_override_can_refuse_a_site(
    model: nn.Module, arch: str, table: dict[str, Architecture]
) -> None:
    register_architecture(
        Architecture(model_type=arch, refuse={"attn.hook_z": "the lab keeps heads private"})
    )
    assert not verify_layout(model).supports("attn.hook_z")
    with (
        pytest.raises(InterventionError, match="the lab keeps heads private"),
        capture(model, "blocks.0.attn.hook_z"),
    ):
        pass


def test_a_wrong_head_count_refuses_hook_z(
    model: nn.Module,
    arch: str,
    table: dict[str, Architecture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_architecture(Architecture(model_type=arch, n_heads_key="n_nothing"))
    with pytest.raises(InterventionError, match="lacks a head count 'n_nothing'"):
        layout_of(model)
    monkeypatch.setattr(model.config, "n_wrong", 3, raising=False)
    register_architecture(Architecture(model_type=arch, n_heads_key="n_wrong"), replace=True)
    layout = layout_of(model)
    assert not layout.supports("attn.hook_z")
    assert layout.supports("hook_resid_post")


def test_registering_twice_needs_replace(table: dict[str, Architecture]) -> None:
    register_architecture(Architecture(model_type="llama", notes="one"))
    with pytest.raises(InterventionError, match="already in the table"):
        register_architecture(Architecture(model_type="llama"))
    register_architecture(Architecture(model_type="llama", notes="new"), replace=True)
    assert table["llama"].notes == "new"


def test_gpt_neo_is_inferred_with_no_entry() -> None:
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]],
        window_size=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    layout = layout_of(model)
    assert (layout.n_layers, layout.n_heads, layout.d_head) == (2, 4, 8)
    assert layout.plan.block_plans[0].sites["attn.hook_z"].path == "attn.attention.out_proj"
    ids = torch.randint(3, 100, (2, 6))
    names = [f"blocks.{i}.{s}" for i in range(2) for s in SITES]
    with torch.no_grad(), capture(model, names) as cache:
        hidden = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], hidden[0])
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hidden[1])
    for i in range(2):
        torch.testing.assert_close(
            cache[f"blocks.{i}.hook_resid_post"],
            cache[f"blocks.{i}.hook_resid_pre"]
            + cache[f"blocks.{i}.hook_attn_out"]
            + cache[f"blocks.{i}.hook_mlp_out"],
        )


def test_the_report_is_what_a_lab_site_can_publish(model: nn.Module, arch: str) -> None:
    import json

    from analoglab.interventions import supported_sites

    report = verify_layout(model)
    assert verify_layout(model) is report  # cached: verified once per model type and config
    published = json.loads(json.dumps(report.to_dict()))
    assert published["model_type"] == arch and published["verified"] is True
    assert published["sites"]["attn.hook_z"]["blocks"] == [0, 1, 2]
    assert "not a mixture of experts" in published["sites"]["mlp.hook_experts"]["reason"]
    assert report.summary() == f"{arch} layout (3 blocks) verified; every site at every block"
    assert supported_sites(model)["hook_mlp_out"].everywhere


def test_an_entry_is_verified_only_on_a_model_of_its_type(
    table: dict[str, Architecture], build_model: Any
) -> None:
    gpt2 = build_model("gpt2")
    with pytest.raises(InterventionError, match="for 'llama' but the model .* is 'gpt2'"):
        register_architecture(Architecture(model_type="llama", notes="x"), model=gpt2)
    assert "llama" not in table  # nothing kept


def test_running_out_of_memory_while_verifying_is_not_a_verdict(
    build_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-test that fails for want of memory raises; it is not cached as a refusal, so
    the next load verifies the layout."""
    from analoglab.interventions import verification

    forget = verification.forget_layouts
    forget()
    model = build_model("llama")

    def no_memory(self: Any) -> str:
        raise torch.OutOfMemoryError("out of memory (test)")

    monkeypatch.setattr(verification._SelfTest, "run", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        verify_layout(model)
    monkeypatch.undo()
    assert not verify_layout(model).refused
