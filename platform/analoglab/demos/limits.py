"""What a visitor may ask of the public demo, enforced on the server.

The widgets show the same bounds, but a request can skip the widgets (the demo's API is open
to anyone who can reach the page), so every handler passes its inputs through the checks
here first. A check that fails raises :class:`DemoInputError`, whose message the visitor sees
as it is: it names the input and its bounds, never a path or a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from analoglab.errors import AnalogLabError


class DemoInputError(AnalogLabError):
    """A visitor's input is outside what the demo allows; the message says what is."""


@dataclass(frozen=True)
class Limits:
    """The demo's bounds. Defaults suit the demo analogs on two CPU cores; an operator can
    pass others to :func:`analoglab.demos.build_app`."""

    max_prompt_chars: int = 400
    max_new_tokens: int = 48
    default_new_tokens: int = 24
    temperature: tuple[float, float] = (0.0, 2.0)
    top_p: tuple[float, float] = (0.05, 1.0)
    top_k: tuple[int, int] = (0, 200)
    strength: tuple[float, float] = (-16.0, 16.0)
    max_seed: int = 2**31 - 1
    lens_positions: int = 24
    """The logit lens shows at most this many (the last) positions of a prompt."""
    concurrency: int = 2
    """Requests worked on at once (Gradio's queue); the rest wait in line."""
    queue_size: int = 32
    """Requests waiting at most; beyond it a visitor is told the demo is busy."""


def check_prompt(value: Any, limits: Limits) -> str:
    """The prompt, stripped of surrounding space; refused when empty or too long."""
    if not isinstance(value, str):
        raise DemoInputError("the prompt must be text")
    text = value.strip()
    if not text:
        raise DemoInputError("write a prompt first")
    if len(text) > limits.max_prompt_chars:
        raise DemoInputError(
            f"the prompt is {len(text)} characters long; the demo takes at most "
            f"{limits.max_prompt_chars}"
        )
    return text


def check_number(name: str, value: Any, bounds: tuple[float, float]) -> float:
    """``value`` as a float within ``bounds`` (inclusive); refused otherwise."""
    low, high = bounds
    number = _as_number(name, value)
    if not low <= number <= high:
        raise DemoInputError(f"{name} must be between {_fmt(low)} and {_fmt(high)}, not {value}")
    return number


def check_int(name: str, value: Any, bounds: tuple[int, int]) -> int:
    """``value`` as a whole number within ``bounds`` (inclusive); refused otherwise."""
    number = check_number(name, value, (float(bounds[0]), float(bounds[1])))
    if number != int(number):
        raise DemoInputError(f"{name} must be a whole number, not {value}")
    return int(number)


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DemoInputError(f"{name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise DemoInputError(f"{name} must be a number, not {str(value)[:20]!r}") from None
    if not math.isfinite(number):
        raise DemoInputError(f"{name} must be a finite number")
    return number


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"
