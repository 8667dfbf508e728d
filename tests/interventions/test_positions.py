"""The padding rule (:mod:`analoglab.interventions.positions`)."""

from __future__ import annotations

import pytest
import torch

from analoglab.interventions import InterventionError, position_ids_from_mask, token_indices
from analoglab.interventions.positions import (
    gather_positions,
    normalize_positions,
    scatter_positions,
)

CPU = torch.device("cpu")


def indices(mask: torch.Tensor | None, positions: list[int], seq_len: int = 5) -> list[list[int]]:
    batch = 2 if mask is None else mask.shape[0]
    found = token_indices(mask, positions, batch=batch, seq_len=seq_len, device=CPU)
    return found.tolist()


def test_without_a_mask_every_token_is_real() -> None:
    assert indices(None, [-1, 0, -5, 4]) == [[4, 0, 0, 4], [4, 0, 0, 4]]


def test_left_padding_counts_from_the_last_real_token() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert indices(mask, [-1, -2, 0, 2]) == [[4, 3, 2, 4], [4, 3, 0, 2]]


def test_right_padding_counts_real_tokens_too() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert indices(mask, [-1, 0, 1]) == [[2, 0, 1], [4, 0, 1]]


def test_a_longer_mask_uses_its_last_columns_as_in_cached_generation() -> None:
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert indices(mask, [-1], seq_len=1) == [[0], [0]]
    assert indices(mask, [-1, 0], seq_len=2) == [[1, 0], [1, 0]]


def test_positions_beyond_a_row_are_an_error() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(InterventionError, match="shortest row has 3 real tokens"):
        indices(mask, [-4])
    with pytest.raises(InterventionError, match="do not all exist"):
        indices(mask, [3])
    with pytest.raises(InterventionError, match="do not all exist"):
        indices(None, [5])


def test_a_row_with_gaps_is_an_error() -> None:
    mask = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(InterventionError, match="padding between real tokens"):
        indices(mask, [-1])


def test_a_mask_of_the_wrong_shape_is_an_error() -> None:
    with pytest.raises(InterventionError, match="batch 3"):
        token_indices(torch.ones(2, 5), [-1], batch=3, seq_len=5, device=CPU)
    with pytest.raises(InterventionError, match="fewer than"):
        token_indices(torch.ones(2, 4), [-1], batch=2, seq_len=5, device=CPU)


def test_no_positions_select_nothing() -> None:
    assert token_indices(None, [], batch=2, seq_len=5, device=CPU).shape == (2, 0)


def test_normalize_positions() -> None:
    assert normalize_positions(-1) == (-1,)
    assert normalize_positions([0, -1]) == (0, -1)
    with pytest.raises(InterventionError, match="must be an int"):
        normalize_positions([True])
    with pytest.raises(InterventionError, match="must be an int"):
        normalize_positions([0.5])  # type: ignore[list-item]


def test_position_ids_count_real_tokens() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_gather_and_scatter_positions() -> None:
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    idx = torch.tensor([[3, 1], [0, 0]])
    picked = gather_positions(x, idx)
    assert picked.shape == (2, 2, 3)
    torch.testing.assert_close(picked[0, 0], x[0, 3])
    torch.testing.assert_close(picked[1, 1], x[1, 0])
    out = scatter_positions(x, idx, torch.zeros(1, 2, 3))
    assert out[0, 3].abs().sum() == 0 and out[0, 1].abs().sum() == 0
    torch.testing.assert_close(out[0, 0], x[0, 0])
    assert x[0, 3].abs().sum() > 0  # the input is left as it was
