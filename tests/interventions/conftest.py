"""Fixtures for the interventions tests: tiny random models of every supported architecture.

- ``ARCHS``: the architectures the table supports, each built here from a tiny config
  (3 blocks, width 32, 4 heads, vocabulary 100, seeded); nothing is downloaded.
- ``one_thread`` (autouse): torch runs on one thread during each test, restored after.
- ``archs``: ``ARCHS`` as a fixture.
- ``arch`` / ``model``: parametrised over ``ARCHS``; ``model`` is built once per session in
  eval mode. Read it, never change it: tests that change weights build their own with
  ``build_model``.
- ``build_model``: a function building a fresh tiny model of an architecture.
- ``ids``: a ``[2, 7]`` batch of token ids, no padding.
- ``left_padded``: prompts of lengths 3, 5 and 7, alone and as one left-padded batch.
- ``table``: the architecture overrides, restored (and cached verdicts dropped) after the test.
- ``hook_state``: a function giving the hooks registered on every module of a model, to
  check that a context left none behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from analoglab.interventions import ARCHITECTURES, Architecture, position_ids_from_mask
from analoglab.interventions.verification import forget_layouts

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers.logging.set_verbosity_error()

ARCHS = ("llama", "gpt2", "gpt_neox", "qwen2", "gemma2", "mistral", "phi3")

_COMMON: dict[str, Any] = {
    "vocab_size": 100,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "max_position_embeddings": 64,
}
_GQA: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 2}


def make_config(arch: str) -> Any:
    """A tiny config of ``arch``; gemma2 gets a head size unlike width / heads, to test it."""
    if arch == "llama":
        return transformers.LlamaConfig(**_COMMON, **_GQA)
    if arch == "mistral":
        return transformers.MistralConfig(**_COMMON, **_GQA)
    if arch == "qwen2":
        return transformers.Qwen2Config(**_COMMON, **_GQA)
    if arch == "gemma2":
        return transformers.Gemma2Config(**_COMMON, **_GQA, head_dim=16)
    if arch == "phi3":
        return transformers.Phi3Config(**_COMMON, **_GQA)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(**_COMMON, hidden_size=32, intermediate_size=64)
    if arch == "gpt2":
        common = {k: v for k, v in _COMMON.items() if k != "max_position_embeddings"}
        return transformers.GPT2Config(**common, n_embd=32, n_positions=64)
    raise ValueError(arch)


def make_model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model: nn.Module = transformers.AutoModelForCausalLM.from_config(make_config(arch))
    return model.eval()


_MODELS: dict[str, nn.Module] = {}


@pytest.fixture
def archs() -> tuple[str, ...]:
    return ARCHS


@pytest.fixture(params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def model(arch: str) -> nn.Module:
    if arch not in _MODELS:
        _MODELS[arch] = make_model(arch)
    return _MODELS[arch]


@pytest.fixture
def build_model() -> Callable[..., nn.Module]:
    return make_model


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))


@dataclass
class LeftPadded:
    """Prompts alone (``[1, length]`` each) and as one left-padded batch with its mask."""

    prompts: list[torch.Tensor]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def batch(self) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for the padded batch (position ids from the mask)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": position_ids_from_mask(self.attention_mask),
        }


@pytest.fixture
def left_padded() -> LeftPadded:
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 100, (1, n), generator=gen) for n in (3, 7, 5)]
    width = max(p.shape[1] for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - p.shape[1] :] = p[0]
        mask[row, width - p.shape[1] :] = 1
    return LeftPadded(prompts, input_ids, mask)


def _hook_state(model: nn.Module) -> dict[str, tuple[int, ...]]:
    state = {}
    for name, module in model.named_modules():
        state[name] = tuple(
            id(hook)
            for hooks in (module._forward_hooks, module._forward_pre_hooks)
            for hook in hooks.values()
        )
    return state


@pytest.fixture
def hook_state() -> Callable[[nn.Module], dict[str, tuple[int, ...]]]:
    return _hook_state


@pytest.fixture
def table() -> Iterator[dict[str, Architecture]]:
    saved = dict(ARCHITECTURES)
    yield ARCHITECTURES
    ARCHITECTURES.clear()
    ARCHITECTURES.update(saved)
    forget_layouts()
