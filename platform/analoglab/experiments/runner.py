"""The runner: one spec on one model, the same in a notebook, on a lab site and in a test.

:func:`run` resolves the spec's task sets (so the recorded spec is self-contained), seeds
``random``, numpy and torch with ``spec.seed``, runs the method without gradients (a probe
turns them on for its fit only) in batches of ``spec.batch_size``, and returns an
:class:`ExperimentResult` recording the spec, the hash of the spec *as given* (the same spec
file gives the same hash on every model), the model's identity, library versions, device and
timings. Example::

    from analoglab.experiments.runner import run
    from analoglab.experiments.spec import load_spec
    from analoglab.models.loading import load_model

    result = run(load_spec("steer.yaml"), load_model("models/demo-analog-s"))
    result.metrics["effect"], result.profiles["effect"].depths
"""

from __future__ import annotations

import math
import platform
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import transformers

from analoglab import __version__
from analoglab.experiments.mapping import ResidualMap
from analoglab.experiments.methods import run_method
from analoglab.experiments.methods.common import Context, ExperimentError, Outcome, Progress
from analoglab.experiments.result import ExperimentResult, ModelIdentity
from analoglab.experiments.spec import (
    AnySpec,
    FidelitySpec,
    resolve_task_sets,
    spec_hash,
    spec_to_dict,
)
from analoglab.interventions import layout_of
from analoglab.models.loading import LoadedModel

__all__ = ["ExperimentError", "model_identity", "run", "versions"]


def model_identity(loaded: LoadedModel) -> ModelIdentity:
    """Who the model is: name, weights hash, architecture and size."""
    layout = layout_of(loaded.model)
    return ModelIdentity(
        name=loaded.name,
        weights_sha256=loaded.weights_sha256,
        model_type=str(loaded.model.config.model_type),
        layers=layout.n_layers,
        hidden_size=layout.d_model,
        parameters=sum(p.numel() for p in loaded.model.parameters()),
    )


def versions() -> dict[str, str]:
    return {
        "analoglab": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(
    spec: AnySpec,
    model: LoadedModel,
    *,
    reference: LoadedModel | None = None,
    residual_map: ResidualMap | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExperimentResult:
    """Run ``spec`` on ``model`` (and, for fidelity, against ``reference``, the frontier; for
    the mapped methods, through ``residual_map``, the lab's map from the artifact's analog).

    ``progress`` is called with ``(done, total)`` units of work (forward batches, probe fits).
    Raises :class:`ExperimentError` for a spec that cannot run on this model (a layer index
    out of range, data of the wrong kind, a missing reference, ...).
    """
    start = time.perf_counter()
    given_hash = spec_hash(spec)
    resolved = resolve_task_sets(spec)
    if isinstance(resolved, FidelitySpec) and reference is None:
        raise ExperimentError(
            "fidelity compares a model with its reference (the frontier); pass reference= to "
            "run (on the command line: --reference)"
        )
    timings: dict[str, float] = {"resolve_seconds": time.perf_counter() - start}
    ctx = Context(
        loaded=model,
        layout=layout_of(model.model),
        batch_size=resolved.batch_size,
        max_tokens=resolved.max_tokens_per_prompt,
        seed=resolved.seed,
        resamples=resolved.bootstrap.resamples,
        bootstrap_seed=resolved.bootstrap.seed,
        progress=Progress(progress),
        timings=timings,
        reference=reference,
        residual_map=residual_map,
    )
    seed_everything(resolved.seed)
    with torch.no_grad():
        outcome = run_method(resolved, ctx)
    _check_finite(outcome, resolved.method)
    timings["total_seconds"] = time.perf_counter() - start
    result = ExperimentResult(
        method=resolved.method,
        spec_hash=given_hash,
        spec=spec_to_dict(resolved),
        model=model_identity(model),
        device=str(model.device),
        versions=versions(),
        timings={k: round(v, 4) for k, v in timings.items()},
        metrics=outcome.metrics,
        profiles=outcome.profiles,
        tables=outcome.tables,
        samples=outcome.samples,
        bootstrap=outcome.bootstrap,
    )
    return result.with_size()


def _check_finite(outcome: Outcome, method: str) -> None:
    """Every number a result holds is finite (JSON has no NaN); a bug or a diverged model else."""
    found: list[tuple[str, list[float]]] = [
        (f"metric {k}", [v]) for k, v in outcome.metrics.items()
    ]
    found += [(f"profile {k}", p.values) for k, p in outcome.profiles.items()]
    found += [(f"table {k}", [v for row in t for v in row]) for k, t in outcome.tables.items()]
    if outcome.bootstrap is not None:
        found += [(f"replicate of {k}", v) for k, v in outcome.bootstrap.metrics.items()]
        found += [
            (f"replicate of profile {k}", [v for row in rows for v in row])
            for k, rows in outcome.bootstrap.profiles.items()
        ]
    for what, values in found:
        if not all(math.isfinite(v) for v in values):
            raise ExperimentError(
                f"{method} produced a non-finite {what}; the model's activations or logits "
                "overflow (try float32) or the data is degenerate"
            )
