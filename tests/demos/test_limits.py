"""The demo's server-side checks, as data: every value a request may carry."""

from __future__ import annotations

import math
from typing import Any

import pytest

from analoglab.demos.limits import DemoInputError, Limits, check_int, check_number, check_prompt

LIMITS = Limits()


def test_a_prompt_is_stripped_and_bounded() -> None:
    assert check_prompt("  the cake was \n", LIMITS) == "the cake was"
    assert check_prompt("x" * LIMITS.max_prompt_chars, LIMITS)
    with pytest.raises(DemoInputError, match="at most 400"):
        check_prompt("x" * (LIMITS.max_prompt_chars + 1), LIMITS)
    with pytest.raises(DemoInputError, match="write a prompt"):
        check_prompt("   ", LIMITS)
    with pytest.raises(DemoInputError, match="must be text"):
        check_prompt(["a list"], LIMITS)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, "nan", "abc", None, True, [1], {"a": 1}]
)
def test_numbers_refuse_what_is_not_a_finite_number(value: Any) -> None:
    with pytest.raises(DemoInputError) as caught:
        check_number("strength", value, LIMITS.strength)
    assert str(caught.value).startswith("strength must be")


def test_numbers_are_kept_within_their_bounds() -> None:
    assert check_number("strength", "2.5", LIMITS.strength) == 2.5
    assert check_number("strength", -16, LIMITS.strength) == -16.0
    with pytest.raises(DemoInputError, match="between -16 and 16, not 16.5"):
        check_number("strength", 16.5, LIMITS.strength)
    assert check_int("seed", 7.0, (0, LIMITS.max_seed)) == 7
    with pytest.raises(DemoInputError, match="whole number"):
        check_int("top-k", 3.5, LIMITS.top_k)
    with pytest.raises(DemoInputError, match="between 1 and 48"):
        check_int("max new tokens", 10_000, (1, LIMITS.max_new_tokens))
