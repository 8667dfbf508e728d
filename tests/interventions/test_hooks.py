"""The hook plumbing (:mod:`analoglab.interventions.hooks`): hooks come and go cleanly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import cast

import pytest
import torch
from torch import Tensor, nn

from analoglab.interventions import (
    SITES,
    Forward,
    HookPoint,
    InterventionError,
    ablate,
    add_vector,
    all_hook_names,
    capture,
    hooks,
    layout_of,
    patch,
)
from analoglab.interventions.hooks import _input_hook, _output_hook

HookState = Callable[[nn.Module], dict[str, tuple[int, ...]]]


class Boom(Exception):
    pass


@contextmanager
def every_operation(model: nn.Module, ids: Tensor) -> Iterator[None]:
    """All four operations at once, at every site of the middle block and more."""
    layout = layout_of(model)
    with torch.no_grad(), capture(model, "blocks.1.hook_resid_pre", positions=[-1]) as clean:
        model(ids)
    with ExitStack() as stack:
        stack.enter_context(capture(model, all_hook_names(layout.n_layers)))
        stack.enter_context(
            add_vector(model, "blocks.1.hook_resid_post", torch.ones(layout.d_model), positions=-1)
        )
        stack.enter_context(ablate(model, "blocks.1.attn.hook_z", heads=[0]))
        stack.enter_context(ablate(model, "blocks.2.hook_mlp_out", positions=[0]))
        stack.enter_context(patch(model, clean, positions=[-1]))
        stack.enter_context(hooks(model, {"blocks.0.hook_attn_out": lambda x, fwd: None}))
        yield


def test_hooks_run_an_edit_and_yield_the_layout(model: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        with hooks(model, {"blocks.2.hook_resid_post": lambda x, fwd: x + 1}) as layout:
            doubled = model(ids).logits
    assert layout.n_layers == 3
    assert not torch.allclose(clean, doubled)


def test_a_fresh_model_has_no_hooks_left_after_every_operation_and_an_error(
    arch: str, build_model: Callable[[str], nn.Module], ids: Tensor
) -> None:
    model = build_model(arch)
    with torch.no_grad():
        clean = model(ids).logits
        with every_operation(model, ids):
            model(ids)
        with pytest.raises(Boom), every_operation(model, ids):
            model(ids)
            raise Boom
        torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._forward_hooks_with_kwargs
        assert not module._forward_pre_hooks_with_kwargs
        assert not module._forward_hooks_always_called


def test_hooks_are_gone_after_an_exception_in_the_block(
    model: nn.Module, ids: Tensor, hook_state: HookState
) -> None:
    with torch.no_grad():
        clean = model(ids).logits
        before = hook_state(model)
        with pytest.raises(Boom), every_operation(model, ids):
            model(ids)
            raise Boom
        assert hook_state(model) == before
        torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)


def test_hooks_are_gone_after_an_exception_inside_the_forward(
    model: nn.Module, ids: Tensor, hook_state: HookState
) -> None:
    def explode(x: Tensor, forward: Forward) -> None:
        raise Boom

    with torch.no_grad():
        clean = model(ids).logits
        before = hook_state(model)
        with (
            pytest.raises(Boom),
            every_operation(model, ids),
            hooks(model, {"blocks.1.hook_mlp_out": explode}),
        ):
            model(ids)
        assert hook_state(model) == before
        torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)


def test_a_bad_point_registers_nothing(model: nn.Module, hook_state: HookState) -> None:
    before = hook_state(model)
    edit = lambda x, fwd: None  # noqa: E731
    bad: list[dict[str | HookPoint, Callable[[Tensor, Forward], None]]] = [
        {"blocks.0.hook_resid_post": edit, "blocks.9.hook_resid_post": edit},
        {"blocks.0.hook_mlp_out": edit, HookPoint(0, "hook_mlp_out"): edit},
        {"blocks.0.hook_mlp_out": 3},  # type: ignore[dict-item]
    ]
    for edits, message in zip(bad, ["out of range", "given twice", "not callable"], strict=True):
        with pytest.raises(InterventionError, match=message), hooks(model, edits):
            pass
    assert hook_state(model) == before


def test_edits_see_every_site_in_its_canonical_shape(model: nn.Module, ids: Tensor) -> None:
    layout = layout_of(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[[Tensor, Forward], None]:
        return lambda x, fwd: shapes.__setitem__(name, tuple(x.shape))

    with torch.no_grad(), hooks(model, {f"blocks.1.{s}": record(s) for s in SITES}):
        model(ids)
    for site in SITES:
        assert shapes[site] == (2, 7, *layout.activation_shape(site))


def test_the_attention_mask_is_read_from_the_call(model: nn.Module, ids: Tensor) -> None:
    seen: list[Tensor | None] = []
    edit = lambda x, fwd: seen.append(fwd.attention_mask)  # noqa: E731
    mask = torch.ones_like(ids)
    with torch.no_grad(), hooks(model, {"blocks.0.hook_resid_post": edit}):
        model(ids, attention_mask=mask)
        model(input_ids=ids)
        cast(nn.Module, model.base_model)(ids)  # a submodule call: the mask is not known
    assert seen[0] is mask
    assert seen[1] is None and seen[2] is None


def test_the_attention_mask_given_by_position(arch: str, model: nn.Module, ids: Tensor) -> None:
    seen: list[Tensor | None] = []
    mask = torch.ones_like(ids)
    with (
        torch.no_grad(),
        hooks(model, {"blocks.0.hook_resid_post": lambda x, f: seen.append(f.attention_mask)}),
    ):
        if arch == "gpt2":  # GPT2LMHeadModel takes the cache second, then the mask
            model(ids, None, mask)
        else:
            model(ids, mask)
    assert seen == [mask]


def test_edits_at_one_point_run_in_the_order_entered(model: nn.Module, ids: Tensor) -> None:
    layout = layout_of(model)
    point = "blocks.1.hook_resid_post"
    vector = torch.ones(layout.d_model)
    with torch.no_grad():
        with capture(model, point) as before, add_vector(model, point, vector):
            model(ids)
        with add_vector(model, point, vector), capture(model, point) as after:
            model(ids)
    torch.testing.assert_close(after[point], before[point] + vector)


def test_a_hooked_module_must_carry_a_sequence() -> None:
    forward = Forward()
    hook = _output_hook(lambda x, f: None, forward, name="blocks.0.hook_mlp_out")
    with pytest.raises(InterventionError, match=r"carries \(12, 32\), not \[batch, pos"):
        hook(nn.Identity(), (), torch.zeros(12, 32))
    pre = _input_hook(lambda x, f: None, forward, name="blocks.0.hook_resid_pre")
    with pytest.raises(InterventionError, match="not \\[batch, pos"):
        pre(nn.Identity(), (torch.zeros(3),), {})
    pre_z = _input_hook(lambda x, f: None, forward, heads=(4, 8), name="blocks.0.attn.hook_z")
    with pytest.raises(InterventionError, match="not n_heads × d_head = 4 × 8"):
        pre_z(nn.Identity(), (torch.zeros(1, 2, 30),), {})


def test_input_hooks_handle_hidden_states_by_keyword() -> None:
    forward = Forward()
    pre = _input_hook(lambda x, f: x + 1, forward, name="blocks.0.hook_resid_pre")
    out = pre(nn.Identity(), (), {"hidden_states": torch.zeros(1, 2, 3), "other": 5})
    assert out is not None
    args, kwargs = out
    assert args == () and kwargs["other"] == 5
    torch.testing.assert_close(kwargs["hidden_states"], torch.ones(1, 2, 3))
