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

:func:`run_batch` runs several specs on one model at once: those whose methods can share
forward passes (:mod:`.batching`) run together, their prompts packed into shared passes
(:mod:`.packed`), each with its own seed; the others run alone. Each spec's result is the one
:func:`run` gives it (up to float rounding); ``timings["batched_with"]`` says how many jobs
shared its passes.
"""

from __future__ import annotations

import functools
import math
import platform
import random
import time
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
import transformers

from analoglab import __version__
from analoglab.experiments.batching import DEFAULT_BATCH_TOKENS, why_alone
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

__all__ = ["ExperimentError", "model_identity", "run", "run_batch", "versions"]


#: Parameters of each model seen, counted once (a warm worker's every job reads its model's).
_PARAMETERS: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


def model_identity(loaded: LoadedModel) -> ModelIdentity:
    """Who the model is: name, weights hash, architecture and size."""
    layout = layout_of(loaded.model)
    parameters = _PARAMETERS.get(loaded.model)
    if parameters is None:
        parameters = _PARAMETERS[loaded.model] = sum(p.numel() for p in loaded.model.parameters())
    return ModelIdentity(
        name=loaded.name,
        weights_sha256=loaded.weights_sha256,
        model_type=str(loaded.model.config.model_type),
        layers=layout.n_layers,
        hidden_size=layout.d_model,
        parameters=parameters,
    )


def versions() -> dict[str, str]:
    return {
        "analoglab": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


@functools.cache
def _accelerated() -> bool:
    """Whether torch sees a device besides the CPU (whose generators a seed must reach)."""
    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (xpu is not None and xpu.is_available())
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if _accelerated():
        torch.manual_seed(seed)
    else:
        # What torch.manual_seed comes to on the CPU alone, without queueing a lazy seeding
        # of CUDA (which records a stack trace on each call: ~0.4 ms a job in a warm worker).
        torch.default_generator.manual_seed(seed)


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
    prepared = _prepare(spec, model, reference, residual_map, progress)
    seed_everything(prepared.resolved.seed)
    with torch.no_grad():
        outcome = run_method(prepared.resolved, prepared.ctx)
    return prepared.finish(outcome)


class _Prepared:
    """One spec made ready to run on one model: resolved, hashed, its context built."""

    def __init__(
        self,
        spec: AnySpec,
        model: LoadedModel,
        reference: LoadedModel | None,
        residual_map: ResidualMap | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.start = time.perf_counter()
        self.model = model
        self.given_hash = spec_hash(spec)
        self.resolved = resolve_task_sets(spec)
        if isinstance(self.resolved, FidelitySpec) and reference is None:
            raise ExperimentError(
                "fidelity compares a model with its reference (the frontier); pass reference= "
                "to run (on the command line: --reference)"
            )
        self.timings: dict[str, float] = {"resolve_seconds": time.perf_counter() - self.start}
        self.ctx = Context(
            loaded=model,
            layout=layout_of(model.model),
            batch_size=self.resolved.batch_size,
            max_tokens=self.resolved.max_tokens_per_prompt,
            seed=self.resolved.seed,
            resamples=self.resolved.bootstrap.resamples,
            bootstrap_seed=self.resolved.bootstrap.seed,
            progress=Progress(progress),
            timings=self.timings,
            reference=reference,
            residual_map=residual_map,
        )

    def finish(self, outcome: Outcome) -> ExperimentResult:
        _check_finite(outcome, self.resolved.method)
        self.timings["total_seconds"] = time.perf_counter() - self.start
        result = ExperimentResult(
            method=self.resolved.method,
            spec_hash=self.given_hash,
            spec=spec_to_dict(self.resolved),
            model=model_identity(self.model),
            device=str(self.model.device),
            versions=versions(),
            timings={k: round(v, 4) for k, v in self.timings.items()},
            metrics=outcome.metrics,
            profiles=outcome.profiles,
            tables=outcome.tables,
            samples=outcome.samples,
            bootstrap=outcome.bootstrap,
        )
        return result.with_size()


def _prepare(
    spec: AnySpec,
    model: LoadedModel,
    reference: LoadedModel | None = None,
    residual_map: ResidualMap | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> _Prepared:
    return _Prepared(spec, model, reference, residual_map, progress)


def run_batch(
    specs: Sequence[AnySpec],
    model: LoadedModel,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    pass_tokens: int | None = None,
) -> list[ExperimentResult | Exception]:
    """Each spec's result on ``model`` (or the exception that stopped it: an
    :class:`ExperimentError` for a spec that cannot run), in order. Specs whose methods can
    share passes run together, packed at most ``batch_tokens`` tokens a pass (0: each
    alone) and cut where a pass's fixed cost of ``pass_tokens`` tokens makes them cheapest
    (:func:`~analoglab.experiments.batching.pack_passes`; default: the fewest passes); the
    others run alone, one after another, as :func:`run` runs them."""
    from analoglab.experiments.methods import run_method
    from analoglab.experiments.packed import Turns, run_together

    out: list[ExperimentResult | Exception | None] = [None] * len(specs)
    shared: list[tuple[int, _Prepared]] = []
    for i, spec in enumerate(specs):
        alone = batch_tokens <= 0 or why_alone({"method": spec.method}) is not None
        try:
            if alone:
                out[i] = run(spec, model)
            else:
                shared.append((i, _prepare(spec, model)))
        except Exception as exc:
            out[i] = exc
    if len(shared) == 1:
        i, prepared = shared[0]
        out[i] = _run_prepared(prepared)
    elif shared:

        def body(prepared: _Prepared) -> Callable[[Turns], Outcome]:
            def go(turns: Turns) -> Outcome:
                prepared.ctx.shared = turns.passes
                prepared.ctx.shared_fits = turns.fits
                prepared.ctx.window_tokens = batch_tokens
                seed_everything(prepared.resolved.seed)
                with torch.no_grad():
                    return run_method(prepared.resolved, prepared.ctx)

            return go

        pad = model.tokenizer.pad_token_id
        outcomes = run_together(
            [body(p) for _, p in shared],
            model.model,
            batch_tokens=batch_tokens,
            pad=pad if pad is not None else 0,
            pass_tokens=pass_tokens,
        )
        for (i, prepared), outcome in zip(shared, outcomes, strict=True):
            if isinstance(outcome, Exception):
                out[i] = outcome
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            try:
                prepared.timings["batched_with"] = float(len(shared))
                out[i] = prepared.finish(outcome)
            except Exception as exc:
                out[i] = exc
    return [r for r in out if r is not None]


def _run_prepared(prepared: _Prepared) -> ExperimentResult | Exception:
    try:
        seed_everything(prepared.resolved.seed)
        with torch.no_grad():
            return prepared.finish(run_method(prepared.resolved, prepared.ctx))
    except Exception as exc:
        return exc


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
