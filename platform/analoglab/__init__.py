"""Analog Lab: study small open *analog* models and check what transfers to their frontier.

The names a notebook user needs are importable from here; heavy libraries (torch,
transformers) load only when a model is loaded::

    from analoglab import load_analog
    model, tokenizer = load_analog("demo-analog-s")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AnalogLabError",
    "Catalog",
    "LoadedModel",
    "Settings",
    "__version__",
    "get_settings",
    "load_analog",
    "load_model",
]

from analoglab.config import Settings, get_settings
from analoglab.errors import AnalogLabError
from analoglab.models.catalog import Catalog

if TYPE_CHECKING:
    from analoglab.models.loading import LoadedModel, load_analog, load_model


def __getattr__(name: str) -> Any:
    # Loading pulls in torch and transformers: import it only when a model is asked for.
    if name in {"load_analog", "load_model", "LoadedModel"}:
        from analoglab.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'analoglab' has no attribute {name!r}")
