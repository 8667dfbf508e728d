"""Analog artifacts in MLflow: a steering vector (or probe direction) found on an analog,
logged on its run and named again by reference.

A finding worth carrying to the frontier is an :class:`~analoglab.experiments.spec.Artifact`:
a vector of the analog's width found at a relative depth. It is logged as a JSON artifact of
an MLflow run (:func:`log_artifact`, by default the run's ``steering_vector.json``; a steering
result logged with its model also gets its vector, :func:`steering_vector`), and named by
reference, ``<path>`` being the file's path among the run's artifacts::

    mlflow:runs/<run_id>/artifacts/<path>

:func:`resolve_artifact` turns such a reference back into an inline ``Artifact`` (its
``source`` set to the reference), bounded in size, with a clear error for a run or path that
does not exist or a file that is not an artifact. A mapped spec
(``mapped_steering`` / ``mapped_probe``) may name its artifact by reference —
``artifact: "mlflow:runs/…/artifacts/steering_vector.json"`` — and
:func:`analoglab.transfer_check` inlines it before anything runs (:func:`inline_artifact`),
so the queue, the lab and both results see the vector itself.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analoglab.config import Settings
from analoglab.tracking.errors import TrackingError, mlflow_errors
from analoglab.tracking.store import TrackingStore, quiet

#: The file of each kind in its run (the reference's ``<path>``) unless told otherwise.
DEFAULT_FILES = {
    "steering_vector": "steering_vector.json",
    "probe_direction": "probe_direction.json",
}
#: The largest artifact file read back (JSON of up to 16,384 numbers is well under 1 MiB).
MAX_ARTIFACT_BYTES = 2 * 2**20
#: ``mlflow:runs/<run id>/artifacts/<path>``
REFERENCE = re.compile(r"^mlflow:runs/(?P<run>[A-Za-z0-9_-]{1,64})/artifacts/(?P<path>[^\s]+)$")


def is_reference(value: Any) -> bool:
    """Whether ``value`` is an artifact reference string (``mlflow:runs/…``)."""
    return isinstance(value, str) and value.startswith("mlflow:")


def reference(run_id: str, path: str) -> str:
    """The reference of artifact ``path`` of run ``run_id``."""
    return f"mlflow:runs/{run_id}/artifacts/{path}"


def parse_reference(ref: str) -> tuple[str, str]:
    """``(run_id, path)`` of a reference; a :class:`TrackingError` saying the form if not one."""
    match = REFERENCE.match(ref.strip()) if isinstance(ref, str) else None
    path = match.group("path") if match else ""
    if match is None or path.startswith("/") or ".." in path.split("/"):
        raise TrackingError(
            f"{str(ref)[:120]!r} is not an artifact reference: write "
            "mlflow:runs/<run id>/artifacts/<path>, e.g. "
            "mlflow:runs/4c1f…/artifacts/steering_vector.json"
        )
    return match.group("run"), path


def _artifact_model() -> Any:
    from analoglab.experiments.spec import Artifact

    return Artifact


def _with_source(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with its provenance, where the Artifact model records one."""
    if "source" in _artifact_model().model_fields:
        return {**data, "source": source}
    return data


def steering_vector(loaded: Any, spec: Any, depth: float) -> Any:
    """The steering vector ``spec`` (a steering spec) finds on ``loaded`` at relative
    ``depth``: the mean ``hook_resid_post`` at the last token of the positive contrast texts
    minus that of the negative ones, as the steering method computes it — an ``Artifact`` of
    the model's width (with the sha256 of its weights), ready to be logged and carried to the
    frontier."""
    import torch

    from analoglab.experiments.methods.common import chunked, encode, forward, pairs_of
    from analoglab.experiments.spec import SteeringSpec, parse_spec, resolve_task_sets
    from analoglab.interventions import block_at_depth, capture, layout_of

    parsed = parse_spec(spec) if isinstance(spec, dict) else spec
    if not isinstance(parsed, SteeringSpec):
        raise TrackingError(f"a steering vector comes from a steering spec, not {parsed.method}")
    steering = resolve_task_sets(parsed)
    assert isinstance(steering, SteeringSpec)
    pairs = pairs_of(steering.contrast, "contrast", "steering")
    layout = layout_of(loaded.model)
    name = layout.hook_name("hook_resid_post", block=block_at_depth(depth, layout.n_layers))
    means = []
    with torch.no_grad():
        for texts in ([p.positive for p in pairs], [p.negative for p in pairs]):
            total = torch.zeros(layout.d_model, dtype=torch.float64)
            for chunk in chunked(texts, steering.batch_size):
                enc = encode(loaded.tokenizer, chunk, steering.max_tokens_per_prompt, loaded.device)
                with capture(loaded.model, [name], positions=[-1]) as cache:
                    forward(loaded.model, enc)
                total += cache[name][:, 0].double().sum(0).cpu()
            means.append(total / len(texts))
    values = (means[0] - means[1]).tolist()
    data: dict[str, Any] = {
        "kind": "steering_vector",
        "analog": loaded.name,
        "depth": float(depth),
        "width": len(values),
        "values": values,
    }
    if "analog_sha256" in _artifact_model().model_fields and loaded.weights_sha256:
        data["analog_sha256"] = loaded.weights_sha256  # a map of other weights is refused
    return _artifact_model().model_validate(data)


def log_artifact(
    artifact: Any,
    run_id: str,
    *,
    path: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Log ``artifact`` (an Artifact, or its dict) as JSON among the artifacts of MLflow run
    ``run_id``, at ``path`` (default: ``steering_vector.json`` / ``probe_direction.json``);
    the reference to name it by, ``mlflow:runs/<run_id>/artifacts/<path>``."""
    Artifact = _artifact_model()
    try:
        art = artifact if isinstance(artifact, Artifact) else Artifact.model_validate(artifact)
    except ValidationError as exc:
        raise TrackingError(f"not an analog artifact: {exc.errors()[0]['msg']}") from None
    name = path or DEFAULT_FILES[art.kind]
    parse_reference(reference(run_id, name))  # a path a reference can name
    store = TrackingStore.open(settings)
    data = art.model_dump(mode="json", exclude_none=True)
    data.pop("source", None)  # where it is now is the reference itself
    with mlflow_errors(store.uri), tempfile.TemporaryDirectory(prefix="analoglab-art-") as tmp:
        local = Path(tmp) / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(json.dumps(data) + "\n")
        store.upload(run_id, Path(tmp))
    return reference(run_id, name)


def resolve_artifact(ref: str, *, settings: Settings | None = None) -> Any:
    """The inline ``Artifact`` a reference names, with ``source`` set to the reference.

    Raises :class:`TrackingError` when the reference is malformed, the run or the path does
    not exist, the file is over :data:`MAX_ARTIFACT_BYTES`, or it is not an artifact (its
    kind, width and values checked as a spec's inline artifact is)."""
    run_id, path = parse_reference(ref)
    store = TrackingStore.open(settings)
    from mlflow.exceptions import MlflowException

    with mlflow_errors(store.uri):
        try:
            store.client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"{ref}: there is no MLflow run {run_id} at {store.uri}") from None
        folder = str(Path(path).parent) if "/" in path else None
        listed = {f.path: f for f in store.client.list_artifacts(run_id, folder)}
        entry = listed.get(path)
        if entry is None or entry.is_dir:
            have = ", ".join(sorted(p for p, f in listed.items() if not f.is_dir)[:8]) or "none"
            raise TrackingError(f"{ref}: run {run_id} has no artifact {path} (files there: {have})")
        if entry.file_size is not None and entry.file_size > MAX_ARTIFACT_BYTES:
            raise TrackingError(
                f"{ref}: {entry.file_size:,} bytes, over the {MAX_ARTIFACT_BYTES:,} an artifact "
                "may hold"
            )
        with tempfile.TemporaryDirectory(prefix="analoglab-art-") as tmp, quiet():
            local = Path(store.client.download_artifacts(run_id, path, dst_path=tmp))
            if local.stat().st_size > MAX_ARTIFACT_BYTES:
                raise TrackingError(
                    f"{ref}: over the {MAX_ARTIFACT_BYTES:,} bytes an artifact may hold"
                )
            text = local.read_text()
    try:
        data = json.loads(text)
    except ValueError:
        raise TrackingError(f"{ref}: not JSON, so not an analog artifact") from None
    if not isinstance(data, dict):
        raise TrackingError(
            f"{ref}: not an analog artifact (a JSON object with kind, analog, "
            "depth, width and values)"
        )
    data.pop("source", None)
    try:
        return _artifact_model().model_validate(_with_source(data, ref))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "artifact"
        raise TrackingError(f"{ref}: not an analog artifact ({where}: {first['msg']})") from None


def inline_artifact(spec: dict[str, Any], *, settings: Settings | None = None) -> dict[str, Any]:
    """``spec`` (a spec's dict) with an artifact given by reference replaced by the artifact
    itself. The reference may be the ``artifact`` value (a string) or its ``ref`` field
    (``artifact: {ref: "mlflow:…"}``); any other spec is returned as it is."""
    art = spec.get("artifact")
    ref = art if is_reference(art) else art.get("ref") if isinstance(art, dict) else None
    if ref is None:
        return spec
    if isinstance(art, dict) and set(art) - {"ref"}:
        raise TrackingError(
            "an artifact given by reference holds only ref (its kind, depth and values come "
            "from the run)"
        )
    resolved = resolve_artifact(str(ref), settings=settings)
    return {**spec, "artifact": resolved.model_dump(mode="json", exclude_none=True)}


def log_steering_vector(
    spec: Any,
    result: Any,
    loaded: Any,
    run_id: str,
    *,
    settings: Settings | None = None,
) -> str | None:
    """Log the vector a steering ``result`` found on ``loaded`` (at its ``best_depth``) on
    run ``run_id`` as ``steering_vector.json``; its reference, or None for a result
    that is not a steering one or is a random-vector control (its vectors are noise)."""
    if getattr(result, "method", None) != "steering" or "best_depth" not in result.metrics:
        return None
    if getattr(spec, "control", "none") != "none":
        return None
    vector = steering_vector(loaded, spec, float(result.metrics["best_depth"]))
    return log_artifact(vector, run_id, settings=settings)
