"""Selections of positions and heads (:mod:`analoglab.interventions.selection`)."""

from __future__ import annotations

import pytest
import torch

from analoglab.interventions import Forward, HookPoint, InterventionError
from analoglab.interventions.selection import Selection

Z = HookPoint(0, "attn.hook_z")
RESID = HookPoint(0, "hook_resid_post")


def padded_forward() -> Forward:
    forward = Forward()
    forward.begin(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    return forward


def test_replace_everything_returns_a_new_tensor() -> None:
    x = torch.randn(2, 4, 3)
    out = Selection().replace(x, Forward(), torch.zeros(()))
    assert out.abs().sum() == 0 and out.data_ptr() != x.data_ptr()
    assert x.abs().sum() > 0


def test_replace_heads_at_positions_under_left_padding() -> None:
    x = torch.randn(2, 4, 3, 5)
    selection = Selection.build(Z, 3, positions=[0, -1], heads=[1])
    out = selection.replace(x, padded_forward(), torch.full((3, 5), 7.0))
    expected = x.clone()
    expected[0, [2, 3], 1] = 7.0  # row 0's real tokens are columns 2 and 3
    expected[1, [0, 3], 1] = 7.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_add_at_positions() -> None:
    x = torch.zeros(2, 4, 3)
    out = Selection.build(RESID, 3, positions=[-2], heads=None).add(
        x, padded_forward(), torch.ones(3)
    )
    assert out[:, 2].eq(1).all() and out.sum() == 2 * 3


def test_add_to_heads() -> None:
    x = torch.zeros(1, 2, 3, 4)
    out = Selection.build(Z, 3, positions=None, heads=[2]).add(x, Forward(), torch.ones(3, 4))
    assert out[:, :, 2].eq(1).all() and out.sum() == 2 * 4


def test_empty_selections_change_nothing() -> None:
    x = torch.randn(2, 4, 3, 5)
    for selection in (Selection.build(Z, 3, positions=[], heads=None), Selection(heads=())):
        out = selection.replace(x, Forward(), torch.zeros(()))
        torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_heads_are_checked() -> None:
    with pytest.raises(InterventionError, match="only at attn.hook_z"):
        Selection.build(RESID, 3, positions=None, heads=[0])
    with pytest.raises(InterventionError, match="head 3 is out of range"):
        Selection.build(Z, 3, positions=None, heads=[3])
    with pytest.raises(InterventionError, match="head -1 is out of range"):
        Selection.build(Z, 3, positions=None, heads=[-1])
