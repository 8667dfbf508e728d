"""The exception hierarchy of Analog Lab.

Every error a user can cause is an :class:`AnalogLabError` whose message says what was
looked for and what to do next; the CLI prints it as one line and exits non-zero.
"""

from __future__ import annotations


class AnalogLabError(Exception):
    """Base class of every error Analog Lab raises on purpose."""


class ConfigError(AnalogLabError):
    """The settings or the data folder are unusable (bad value, unwritable folder)."""


class ModelNotFoundError(AnalogLabError):
    """No model of that name or path exists where it was looked for."""


class CorruptModelError(AnalogLabError):
    """A model folder exists but cannot be loaded (missing or damaged files, bad card)."""


class BundleError(AnalogLabError):
    """A release bundle cannot be packed or installed (bad checksum, bad layout)."""


class FoundryError(AnalogLabError):
    """The demo foundry cannot build what was asked (unknown preset, bad state on disk)."""
