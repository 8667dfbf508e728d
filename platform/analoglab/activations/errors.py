"""The errors activation datasets raise on purpose: :class:`ActivationError` and its kinds.

Each is an :class:`~analoglab.errors.AnalogLabError` whose message says what was asked, what
was found and what to do next; the CLI prints it as one line and exits with status 1.
"""

from __future__ import annotations

from analoglab.errors import AnalogLabError


class ActivationError(AnalogLabError):
    """An activation dataset cannot be built, opened or analysed as asked."""


class StoreMismatchError(ActivationError):
    """A store exists at the path but was made by another model, hooks, data or settings."""


class IncompleteStoreError(ActivationError):
    """A store whose extraction has not finished (rerun the extraction to complete it)."""
