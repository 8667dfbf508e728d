"""Fidelity measures: linear CKA of representations and behaviour agreement on task sets."""

from __future__ import annotations

import pytest
import torch

from analoglab.foundry.fidelity import behaviour_agreement, linear_cka


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
