"""Logging one experiment result (one spec on one model) as an MLflow run.

What a run holds (see ``docs/tracking.md``):

- **params**: the spec, flattened (``method``, ``data.kind``, ``layers.depths``, ...), and the
  model's identity (``model.name``, ``model.weights_sha256``, ``model.layers``, ...);
- **metrics**: the result's headline metrics under their own names (``effect``,
  ``accuracy``, ...); each layer profile as a stepped metric ``profile.<name>`` (step = block
  index) with ``profile.<name>.peak_depth``; ``timing.<name>`` and ``result.size_bytes``;
- **artifacts**: ``spec.json`` (the spec as given), ``result.json`` (the whole
  :class:`ExperimentResult`, reloadable with ``ExperimentResult.model_validate_json``) and
  ``plots/<profile>.png``; for a steering result logged with its model (and every analog
  steering result of a transfer check), ``steering_vector.json``: the vector at its
  best depth, which a mapped spec can name by reference (:mod:`.artifacts`);
- **tags**: ``analoglab.model``, ``analoglab.method``, ``analoglab.spec_hash``,
  ``analoglab.kind`` (``analog`` or ``frontier``) and, for a queue job, ``analoglab.job_id``.

A run is FINISHED once everything is logged; a run left RUNNING was interrupted while logging.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.spec import AnySpec, spec_hash, spec_to_dict
from analoglab.models.catalog import Catalog
from analoglab.tracking import tags
from analoglab.tracking.errors import TrackingError, mlflow_errors
from analoglab.tracking.mapping import MetricValue, flatten, log_batch, safe_key
from analoglab.tracking.plots import plot_profile
from analoglab.tracking.store import DEFAULT_EXPERIMENT, TrackingStore

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
PLOTS_FOLDER = "plots"


def check_matches(spec: AnySpec, result: ExperimentResult) -> None:
    """Raise unless ``result`` came from ``spec``: the spec as the runner was given it (same
    hash), or as the runner recorded it (task sets inlined)."""
    if result.spec_hash == spec_hash(spec) or result.spec == spec_to_dict(spec):
        return
    raise TrackingError(
        f"the {result.method} result on {result.model.name} was not produced by this spec "
        f"(result spec hash {result.spec_hash[:12]}, spec hash {spec_hash(spec)[:12]})"
    )


def kind_of(model: str, settings: Settings) -> tags.ResultKind:
    """``frontier`` for a frontier id of the catalog, else ``analog``."""
    frontiers = {f.id for f in Catalog.load(settings).frontiers()}
    return "frontier" if model in frontiers else "analog"


def result_tags(
    result: ExperimentResult, *, model: str, kind: tags.ResultKind, job_id: str | None
) -> dict[str, str]:
    out = {
        tags.MODEL: model,
        tags.METHOD: result.method,
        tags.SPEC_HASH: result.spec_hash,
        tags.KIND: kind,
    }
    if job_id:
        out[tags.JOB_ID] = job_id
    return out


def result_params(spec: AnySpec, result: ExperimentResult) -> dict[str, str]:
    params = flatten(spec_to_dict(spec))
    params.update(flatten(result.model.model_dump(mode="json"), prefix="model."))
    params["device"] = result.device
    params.update(flatten(result.versions, prefix="version."))
    return params


def result_metrics(result: ExperimentResult) -> list[MetricValue]:
    metrics = [MetricValue(k, v) for k, v in result.metrics.items()]
    for name, profile in result.profiles.items():
        metrics += [
            MetricValue(f"profile.{name}", value, step=index)
            for index, value in zip(profile.indices, profile.values, strict=True)
        ]
        if profile.values:
            metrics.append(MetricValue(f"profile.{name}.peak_depth", profile.peak_depth()))
    metrics += [MetricValue(f"timing.{k}", v) for k, v in result.timings.items()]
    metrics.append(MetricValue("result.size_bytes", float(result.size_bytes)))
    return metrics


def write_artifacts(folder: Path, spec: AnySpec, result: ExperimentResult, model: str) -> None:
    """``spec.json``, ``result.json`` and one PNG per layer profile into ``folder``."""
    (folder / SPEC_FILE).write_text(json.dumps(spec_to_dict(spec), indent=2) + "\n")
    (folder / RESULT_FILE).write_text(result.model_dump_json(indent=2) + "\n")
    for name, profile in result.profiles.items():
        if profile.values:
            plot_profile(
                profile,
                name=name,
                title=f"{result.method}: {name} on {model}",
                path=folder / PLOTS_FOLDER / f"{safe_key(name)}.png",
            )


def fill_run(
    store: TrackingStore,
    run_id: str,
    spec: AnySpec,
    result: ExperimentResult,
    *,
    model: str,
    kind: tags.ResultKind,
    job_id: str | None,
) -> None:
    """Log the result into an existing run and mark it FINISHED (FAILED if logging fails)."""
    try:
        log_batch(
            store.client,
            run_id,
            params=result_params(spec, result),
            metrics=result_metrics(result),
            tags=result_tags(result, model=model, kind=kind, job_id=job_id),
        )
        with tempfile.TemporaryDirectory(prefix="analoglab-mlflow-") as tmp:
            write_artifacts(Path(tmp), spec, result, model)
            store.upload(run_id, Path(tmp))
    except BaseException:
        store.finish(run_id, status="FAILED")
        raise
    store.finish(run_id)


def run_name(result: ExperimentResult, model: str) -> str:
    return f"{result.method} · {model}"


def log_result(
    spec: AnySpec,
    result: ExperimentResult,
    *,
    model: str,
    job_id: str | None = None,
    parent_run_id: str | None = None,
    settings: Settings | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    kind: tags.ResultKind | None = None,
    loaded: Any = None,
) -> str:
    """Log ``result`` of ``spec`` on ``model`` as a new MLflow run; return its run id.

    ``model`` is the name the run is tagged with (an analog's name or a frontier id);
    ``kind`` defaults to ``frontier`` for a frontier id of the catalog, else ``analog``;
    ``job_id`` is the queue job that produced a frontier result; ``parent_run_id`` makes the
    run a child (shown nested under that run in the UI). Raises :class:`TrackingError` when
    the result did not come from the spec or MLflow fails. With ``loaded`` (the model it
    ran on), a steering result's vector at its ``best_depth`` is logged too, as
    ``steering_vector.json`` (:mod:`.artifacts`): a mapped spec names it by
    ``mlflow:runs/<run id>/artifacts/steering_vector.json``.
    """
    check_matches(spec, result)
    store = TrackingStore.open(settings)
    kind = kind or kind_of(model, store.settings)
    with mlflow_errors(store.uri):
        exp_id = store.experiment_id(experiment)
        first_tags = result_tags(result, model=model, kind=kind, job_id=job_id)
        if parent_run_id:
            first_tags[tags.PARENT_RUN_ID] = parent_run_id
        run = store.client.create_run(exp_id, tags=first_tags, run_name=run_name(result, model))
        fill_run(store, run.info.run_id, spec, result, model=model, kind=kind, job_id=job_id)
    if loaded is not None:
        from analoglab.tracking.artifacts import log_steering_vector

        log_steering_vector(spec, result, loaded, str(run.info.run_id), settings=settings)
    return str(run.info.run_id)
