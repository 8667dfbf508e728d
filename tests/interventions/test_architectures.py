"""The architecture table (:mod:`analoglab.interventions.architectures`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import pytest
import torch
import transformers
from torch import nn

from analoglab.interventions import (
    ARCHITECTURES,
    SITES,
    Architecture,
    InterventionError,
    architecture_of,
    capture,
    layout_of,
    register_architecture,
)

EXPECTED_D_HEAD = {"gemma2": 16}  # its config sets head_dim apart from width / heads

GPT_NEO = Architecture(
    model_type="gpt_neo",
    blocks="h",
    attn_out_proj="attn.attention.out_proj",
    attn_out="attn",
    mlp_out="mlp",
    final_norm="ln_f",
)


def opt_config() -> transformers.OPTConfig:
    return transformers.OPTConfig(
        vocab_size=100,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def test_the_table_holds_exactly_the_tested_architectures(archs: tuple[str, ...]) -> None:
    assert set(ARCHITECTURES) == set(archs)
    assert set(archs) == {"llama", "gpt2", "gpt_neox", "qwen2", "gemma2", "mistral", "phi3"}


def test_layout_resolves_blocks_and_dimensions(arch: str, model: nn.Module) -> None:
    layout = layout_of(model)
    assert architecture_of(model).model_type == arch
    assert layout.n_layers == 3
    assert (layout.n_heads, layout.d_head, layout.d_model) == (4, EXPECTED_D_HEAD.get(arch, 8), 32)
    assert layout.activation_shape("attn.hook_z") == (4, layout.d_head)
    assert layout.activation_shape("hook_resid_post") == (32,)
    assert layout.hook_name("hook_resid_post", depth=1.0) == "blocks.2.hook_resid_post"
    assert layout.block_at_depth(0.5) == 1
    for site in SITES:
        assert isinstance(layout.module(2, site), nn.Module)
    assert layout.module(1, "hook_resid_pre") is layout.blocks[1]


def test_layout_works_on_the_base_model_too(model: nn.Module) -> None:
    base = cast(nn.Module, model.base_model)
    assert base is not model
    layout = layout_of(base)
    assert layout.blocks == layout_of(model).blocks


def test_an_unsupported_architecture_names_what_is_missing() -> None:
    model = transformers.AutoModelForCausalLM.from_config(opt_config())
    with pytest.raises(InterventionError) as raised:
        layout_of(model)
    message = str(raised.value)
    assert "'opt'" in message and "no interventions table entry" in message
    assert "attention output projection" in message and "register_architecture" in message
    assert "llama" in message  # lists what is supported


def test_something_that_is_not_a_transformers_model() -> None:
    with pytest.raises(InterventionError, match="no config.model_type"):
        layout_of(nn.Linear(2, 2))


@pytest.fixture
def table() -> Iterator[dict[str, Architecture]]:
    """The architecture table, restored after the test."""
    saved = dict(ARCHITECTURES)
    yield ARCHITECTURES
    ARCHITECTURES.clear()
    ARCHITECTURES.update(saved)


def test_an_entry_that_does_not_fit_names_the_missing_module(
    model: nn.Module, arch: str, table: dict[str, Architecture]
) -> None:
    table[arch] = replace(table[arch], final_norm="no_norm_here")
    with pytest.raises(InterventionError, match=r"no submodule 'no_norm_here' \(the final norm"):
        layout_of(model)
    table[arch] = replace(table[arch], blocks="blocks_are_elsewhere")
    with pytest.raises(InterventionError, match=r"no submodule 'blocks_are_elsewhere'"):
        layout_of(model)


def test_an_entry_with_a_wrong_site_fails_when_the_site_is_used(
    model: nn.Module, arch: str, table: dict[str, Architecture]
) -> None:
    table[arch] = replace(table[arch], mlp_out="feed_forward")
    layout = layout_of(model)
    with pytest.raises(InterventionError, match=r"block 1 has no submodule 'feed_forward'"):
        layout.module(1, "hook_mlp_out")
    with (
        pytest.raises(InterventionError, match="feed_forward"),
        capture(model, "blocks.1.hook_mlp_out"),
    ):
        pass


def test_a_wrong_head_count_is_caught(
    model: nn.Module,
    arch: str,
    table: dict[str, Architecture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table[arch] = replace(table[arch], n_heads_key="n_nothing")
    with pytest.raises(InterventionError, match="lacks a head count 'n_nothing'"):
        layout_of(model)
    if arch == "gpt2":
        return  # its Conv1D projection has no in_features to check against
    monkeypatch.setattr(model.config, "n_wrong", 3, raising=False)
    table[arch] = replace(table[arch], n_heads_key="n_wrong")
    with pytest.raises(InterventionError, match="not n_heads × d_head"):
        layout_of(model)


def test_registering_twice_needs_replace(table: dict[str, Architecture]) -> None:
    with pytest.raises(InterventionError, match="already in the table"):
        register_architecture(table["llama"])
    register_architecture(replace(table["llama"], notes="new"), replace=True)
    assert table["llama"].notes == "new"


def test_adding_an_architecture_is_one_table_entry(table: dict[str, Architecture]) -> None:
    register_architecture(GPT_NEO)
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
