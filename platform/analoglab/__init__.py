"""Analog Lab: study small open *analog* models and check what transfers to their frontier.

The names a notebook user needs are importable from here; heavy libraries (torch,
transformers) load only when a model is loaded::

    from analoglab import load_analog, load_spec, run, compare
    model, tokenizer = load_analog("demo-analog-s")
    result = run(load_spec("steer.yaml"), load_analog("demo-analog-s"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AnalogLabError",
    "Catalog",
    "ExperimentResult",
    "LoadedModel",
    "QueueClient",
    "Settings",
    "TransferReport",
    "__version__",
    "compare",
    "get_settings",
    "load_analog",
    "load_model",
    "load_spec",
    "parse_spec",
    "run",
    "transfer_check",
]

from analoglab.config import Settings, get_settings
from analoglab.errors import AnalogLabError
from analoglab.experiments import (
    ExperimentResult,
    TransferReport,
    compare,
    load_spec,
    parse_spec,
)
from analoglab.models.catalog import Catalog
from analoglab.queue.client import QueueClient

if TYPE_CHECKING:
    from analoglab.experiments.runner import run
    from analoglab.loop import transfer_check
    from analoglab.models.loading import LoadedModel, load_analog, load_model


def __getattr__(name: str) -> Any:
    # Loading and running pull in torch and transformers: import them only when asked for.
    if name in {"load_analog", "load_model", "LoadedModel"}:
        from analoglab.models import loading

        return getattr(loading, name)
    if name == "run":
        from analoglab.experiments.runner import run

        return run
    if name == "transfer_check":
        from analoglab.loop import transfer_check

        return transfer_check
    raise AttributeError(f"module 'analoglab' has no attribute {name!r}")
