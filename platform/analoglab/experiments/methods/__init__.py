"""The experiment methods, one module each; :func:`run_method` runs a spec's method.

Each module opens with its formula and outputs (also in ``docs/methods/``):
:mod:`.activation_stats`, :mod:`.steering`, :mod:`.probe`, :mod:`.ablation`,
:mod:`.patching`, :mod:`.evaluation`, :mod:`.fidelity`; :mod:`.common` holds what they share.
"""

from __future__ import annotations

from analoglab.experiments.methods import (
    ablation,
    activation_stats,
    evaluation,
    fidelity,
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
    PatchingSpec,
    ProbeSpec,
    SteeringSpec,
)

__all__ = ["Context", "ExperimentError", "Outcome", "run_method"]


def run_method(spec: AnySpec, ctx: Context) -> Outcome:
    """Run ``spec``'s method in ``ctx`` (task sets resolved, gradients off)."""
    if isinstance(spec, ActivationStatsSpec):
        return activation_stats.run(spec, ctx)
    if isinstance(spec, SteeringSpec):
        return steering.run(spec, ctx)
    if isinstance(spec, ProbeSpec):
        return probe.run(spec, ctx)
    if isinstance(spec, AblationSpec):
        return ablation.run(spec, ctx)
    if isinstance(spec, PatchingSpec):
        return patching.run(spec, ctx)
    if isinstance(spec, EvaluationSpec):
        return evaluation.run(spec, ctx)
    if isinstance(spec, FidelitySpec):
        return fidelity.run(spec, ctx)
    raise ExperimentError(f"no method runs specs of type {type(spec).__name__}")
