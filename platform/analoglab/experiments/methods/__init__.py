"""The experiment methods, one module each; :func:`run_method` runs a spec's method.

Each module opens with its formula and outputs (also in ``docs/methods/``):
:mod:`.activation_stats`, :mod:`.steering`, :mod:`.probe`, :mod:`.ablation`,
:mod:`.patching`, :mod:`.evaluation`, :mod:`.fidelity`, :mod:`.mapped` (mapped steering and
mapped probe); :mod:`.common` holds what they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from analoglab.experiments.methods import (
    ablation,
    activation_stats,
    evaluation,
    fidelity,
    mapped,
    patching,
    probe,
    steering,
)
from analoglab.experiments.methods.common import Context, ExperimentError, Outcome
from analoglab.experiments.spec import (
    AblationSpec,
    ActivationStatsSpec,
    AnySpec,
    EvaluationSpec,
    FidelitySpec,
    MappedProbeSpec,
    MappedSteeringSpec,
    PatchingSpec,
    ProbeSpec,
    SteeringSpec,
)

__all__ = ["Context", "ExperimentError", "Outcome", "run_method"]


_RUNNERS: dict[type, Callable[[Any, Context], Outcome]] = {
    ActivationStatsSpec: activation_stats.run,
    SteeringSpec: steering.run,
    ProbeSpec: probe.run,
    AblationSpec: ablation.run,
    PatchingSpec: patching.run,
    EvaluationSpec: evaluation.run,
    FidelitySpec: fidelity.run,
    MappedSteeringSpec: mapped.run_steering,
    MappedProbeSpec: mapped.run_probe,
}


def run_method(spec: AnySpec, ctx: Context) -> Outcome:
    """Run ``spec``'s method in ``ctx`` (task sets resolved, gradients off)."""
    runner = _RUNNERS.get(type(spec))
    if runner is None:
        raise ExperimentError(f"no method runs specs of type {type(spec).__name__}")
    return runner(spec, ctx)
