"""Saving analysis results as artifacts: arrays in ``.npz``, everything else in ``.json``.

``save_artifact(result, "out/sentiment-direction")`` writes ``sentiment-direction.npz`` (the
arrays) and ``sentiment-direction.json``: what the result is (its summary), the arrays'
shapes and dtypes, the npz file's sha256, the provenance (the dataset's model and weights
hash, hooks, positions and source hash) and library versions: files to log to MLflow with
``mlflow.log_artifact`` (nothing in :mod:`analoglab.tracking` logs them yet), and what a reader
needs to trust the numbers. Both files are written atomically.

A result is anything with ``arrays() -> dict[str, ndarray]`` and ``summary() -> dict``
(every result class of this package), or a plain mapping of arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.files import atomic_write


@runtime_checkable
class Result(Protocol):
    def arrays(self) -> dict[str, np.ndarray]: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Artifact:
    """The two files of a saved artifact."""

    npz: Path
    json: Path


def save_artifact(
    result: Result | Mapping[str, np.ndarray],
    path: str | Path,
    *,
    dataset: Any = None,
    info: Mapping[str, Any] | None = None,
) -> Artifact:
    """Write ``<path>.npz`` and ``<path>.json`` (see the module docstring)."""
    from analoglab import __version__

    base = Path(path).expanduser()
    if base.suffix in (".npz", ".json"):
        base = base.with_suffix("")
    if isinstance(result, Result):
        arrays, summary = result.arrays(), result.summary()
    elif isinstance(result, Mapping):
        arrays, summary = dict(result), {"kind": "arrays"}
    else:
        raise ActivationError(
            f"cannot save a {type(result).__name__}: give a result of analoglab.activations "
            "or a dict of arrays"
        )
    clean = {str(k): np.asarray(v) for k, v in arrays.items()}
    for name, value in clean.items():
        if value.dtype == object:
            raise ActivationError(f"array {name!r} holds Python objects; save numbers only")
    buffer = io.BytesIO()
    np.savez(buffer, **clean)  # type: ignore[arg-type]
    payload = buffer.getvalue()
    record: dict[str, Any] = {
        "summary": summary,
        "info": dict(info or {}),
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in clean.items()},
        "npz": base.with_suffix(".npz").name,
        "npz_sha256": hashlib.sha256(payload).hexdigest(),
        "analoglab": __version__,
        "numpy": np.__version__,
    }
    if dataset is not None:
        record["dataset"] = provenance(dataset)
    try:
        text = json.dumps(record, indent=2, default=_jsonable) + "\n"
    except TypeError as exc:
        raise ActivationError(f"the artifact's info is not JSON: {exc}") from None
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(base.with_suffix(".npz"), payload)
        atomic_write(base.with_suffix(".json"), text.encode("utf-8"))
    except OSError as exc:
        raise ActivationError(f"cannot write the artifact {base}: {exc.strerror or exc}") from None
    return Artifact(base.with_suffix(".npz"), base.with_suffix(".json"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= 64:
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def provenance(dataset: Any) -> dict[str, Any]:
    """Where a result's rows came from: the store and what made it."""
    meta = dataset.meta
    ident = meta.identity
    return {
        "store": str(dataset.path),
        "model": ident.model.name,
        "weights_sha256": ident.model.weights_sha256,
        "hooks": ident.hooks,
        "positions": ident.positions,
        "dtype": ident.dtype,
        "source": ident.source.description,
        "source_sha256": ident.source.sha256,
        "rows": meta.layout.rows,
    }


def load_artifact(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the JSON record of a saved artifact, checked against its hash."""
    base = Path(path).expanduser()
    if base.suffix in (".npz", ".json"):
        base = base.with_suffix("")
    try:
        record = json.loads(base.with_suffix(".json").read_text())
        payload = base.with_suffix(".npz").read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise ActivationError(f"cannot read the artifact {base}: {exc}") from None
    if hashlib.sha256(payload).hexdigest() != record.get("npz_sha256"):
        raise ActivationError(f"{base}.npz does not match the checksum in its JSON record")
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, record
