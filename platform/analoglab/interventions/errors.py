"""The error every intervention raises on purpose: :class:`InterventionError`.

A bad hook name, a depth outside [0, 1], a block or head out of range, a tensor of the wrong
shape, or a model whose architecture has no table entry: each is an ``InterventionError``
whose message says what was asked, what the model has, and what to do next.
"""

from __future__ import annotations

from analoglab.errors import AnalogLabError


class InterventionError(AnalogLabError):
    """An intervention cannot be applied as asked (bad hook point, shape or architecture)."""
