"""Fidelity measures: linear CKA of representations and behaviour agreement on task sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analoglab.foundry.fidelity import (
    behaviour_agreement,
    copied_positions,
    linear_cka,
    next_token_agreement,
)


def _points(n: int = 400, d: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = _points()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)


def test_cka_ignores_rotations_isotropic_scaling_and_shifts() -> None:
    x = _points()
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x, 3.5 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-9)
    # A wider space holding the same points rotated in is the same representation too.
    wide = torch.cat([x, torch.zeros(400, 4)], 1) @ torch.linalg.qr(torch.randn(16, 16))[0]
    assert linear_cka(x, wide) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_low_for_unrelated_and_between_for_related_representations() -> None:
    x, noise = _points(seed=0), _points(seed=2)
    unrelated = linear_cka(x, noise)
    related = linear_cka(x, x + noise)
    assert unrelated < 0.1
    assert unrelated < related < 1.0
    # Per-feature scaling is not a similarity transform: CKA drops below 1.
    assert linear_cka(x, x * torch.linspace(0.1, 10, 12)) < 0.99


def test_behaviour_agreement_counts_same_choices_right_or_wrong() -> None:
    frontier = [True, True, False, False]
    assert behaviour_agreement(frontier, frontier) == 1.0
    assert behaviour_agreement([True, False, False, True], frontier) == 0.5
    # Both wrong on the same item is agreement; accuracy alone would not show it.
    assert behaviour_agreement([False, False, False, False], frontier) == 0.5
    with pytest.raises(ValueError):
        behaviour_agreement([True], frontier)


def test_copied_positions_are_names_seen_earlier_in_their_document() -> None:
    bos, a, b, x, y, a_spaced = 1, 10, 11, 20, 21, 12
    names = {a: "A", a_spaced: "A", b: "B"}
    row = [bos, a, b, x, a_spaced, y, b, bos, b, a]
    got = copied_positions(torch.tensor([row]), names, bos)[0].tolist()
    # next: " A" at 3 (A was named at 1, unspaced: the same name) and B at 5 were seen
    # before in the document; after the second bos nothing is (b at 7 starts a document;
    # a at 8 was in the first document only)
    assert [t for t, v in enumerate(got) if v] == [3, 5]
    # without a bos the whole window is one document: the b at 7 was seen (at 2)
    got = copied_positions(torch.tensor([row]), names, None)[0].tolist()
    assert [t for t, v in enumerate(got) if v] == [3, 5, 7, 8]


def test_the_kl_split_adds_up_to_the_whole() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    def model(seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        return LlamaForCausalLM(cfg).eval()

    tokens = np.random.default_rng(0).integers(2, 32, size=16 * 24).astype(np.uint16)
    out = next_token_agreement(
        model(0), model(1), tokens, 24, copyable={i: str(i) for i in range(2, 8)}, bos=1
    )
    share = out["copied_share"]
    assert 0 < share < 1
    whole = share * out["kl_copied"] + (1 - share) * out["kl_other"]
    assert abs(whole - out["kl"]) < 1e-5 * max(1.0, out["kl"])
    assert out["kl_copied"] > 0 and out["kl_other"] > 0
