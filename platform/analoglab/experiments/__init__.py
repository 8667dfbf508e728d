"""Experiments: one declarative spec that runs on any model, and transfer between models.

- :mod:`.spec` — ``ExperimentSpec`` (pydantic, torch-free: the queue validates with it);
- :mod:`.runner` — ``run(spec, model) -> ExperimentResult`` (imports torch);
- :mod:`.methods` — one module per method;
- :mod:`.result` — ``ExperimentResult``, small by design;
- :mod:`.transfer` — ``compare(analog_result, frontier_result) -> TransferReport``.

Only the torch-free names are imported here; import the runner from its module.
"""

from __future__ import annotations

from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity
from analoglab.experiments.spec import (
    ExperimentSpec,
    SpecError,
    json_schema,
    load_spec,
    parse_spec,
    resolve_task_sets,
    spec_hash,
)
from analoglab.experiments.transfer import TransferReport, compare

__all__ = [
    "ExperimentResult",
    "ExperimentSpec",
    "LayerProfile",
    "ModelIdentity",
    "SpecError",
    "TransferReport",
    "compare",
    "json_schema",
    "load_spec",
    "parse_spec",
    "resolve_task_sets",
    "spec_hash",
]
