"""ExperimentResult: what running a spec on one model produced — small by design.

A result holds aggregates only (scalar metrics, per-layer profiles, small tables, a few
bounded samples), never weights or whole activation tensors, and records what produced it:
the spec and its hash, the model's identity (name and weights hash), library versions,
device and timings, and its own size in bytes. It imports no torch (the queue reads results).

:func:`result_problems` is the one check of a result against the job it answers, the
frontier's policy and (on the lab's side) the lab's own caps: the hub runs it when a result is
posted, the lab agent before a result leaves the lab (``analoglab.lab.release``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RESULT_VERSION: Literal[1] = 1


class ModelIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    weights_sha256: str
    model_type: str
    layers: int
    hidden_size: int
    parameters: int


class LayerProfile(BaseModel):
    """One number per block, with the block's relative depth (what transfer compares)."""

    model_config = ConfigDict(extra="forbid")

    indices: list[int]
    depths: list[float]
    values: list[float]

    def peak_depth(self, absolute: bool = True) -> float:
        vals = [abs(v) for v in self.values] if absolute else self.values
        return self.depths[max(range(len(vals)), key=vals.__getitem__)]


class Replicates(BaseModel):
    """The bootstrap of one result: ``resamples`` replicates of its headline metrics and of
    its main profiles, drawn over the items counted in ``items`` (``{"evaluate": 64}``) with
    ``seed`` (see ``analoglab.experiments.uncertainty``). Replicate ``b`` of two results of
    one spec resampled the same items: transfer pairs them."""

    model_config = ConfigDict(extra="forbid")

    resamples: int
    seed: int
    items: dict[str, int]
    metrics: dict[str, list[float]] = Field(default_factory=dict)
    profiles: dict[str, list[list[float]]] = Field(default_factory=dict)

    def interval(self, metric: str, level: float = 0.95) -> tuple[float, float] | None:
        """The percentile interval of a metric's replicates (None if it has none)."""
        from analoglab.experiments.uncertainty import percentile_interval

        values = self.metrics.get(metric)
        return percentile_interval(values, level) if values else None

    def values(self) -> int:
        """How many numbers it holds (what the release checks bound)."""
        return sum(len(v) for v in self.metrics.values()) + sum(
            len(row) for rows in self.profiles.values() for row in rows
        )


class ExperimentResult(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    result_version: Literal[1] = RESULT_VERSION
    method: str
    spec_hash: str
    spec: dict[str, Any]
    model: ModelIdentity
    device: str
    versions: dict[str, str]
    timings: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    profiles: dict[str, LayerProfile] = Field(default_factory=dict)
    tables: dict[str, list[list[float]]] = Field(default_factory=dict)
    samples: list[str] = Field(default_factory=list)
    bootstrap: Replicates | None = Field(
        None, description="the result's uncertainty; absent in results made before intervals"
    )
    size_bytes: int = 0

    def with_size(self) -> ExperimentResult:
        """A copy whose ``size_bytes`` is the size of its own JSON (a fixed point)."""
        res = self.model_copy(update={"size_bytes": 0})
        # one dump: with size_bytes 0 it is ``base`` bytes; the size replaces that 0 with its
        # own digits, as many as ``base`` has or (just past a power of ten) one more
        base = len(res.model_dump_json().encode())
        size = base - 1 + len(str(base))
        if len(str(size)) > len(str(base)):
            size += 1
        return res.model_copy(update={"size_bytes": size})

    def save(self, path: str | Path) -> Path:
        from analoglab.files import atomic_write

        path = Path(path)
        atomic_write(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExperimentResult:
        return cls.model_validate(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class MethodOutputs:
    """What one method's result may hold: its profiles and tables, and the metrics it must."""

    profiles: frozenset[str]
    tables: frozenset[str]
    metrics: frozenset[str]


def _outputs(profiles: set[str], tables: set[str], metrics: set[str]) -> MethodOutputs:
    return MethodOutputs(frozenset(profiles), frozenset(tables), frozenset(metrics))


#: The outputs of each method that runs on a frontier (see ``docs/methods/``).
METHOD_OUTPUTS: dict[str, MethodOutputs] = {
    "activation_stats": _outputs(
        {"norm", "mean_direction", "pca_top1"}, {"pca_explained_variance"}, set()
    ),
    "steering": _outputs({"effect", "side_effect_kl"}, {"score", "normalised_effect"}, {"effect"}),
    "probe": _outputs({"accuracy", "train_accuracy"}, set(), {"accuracy", "effect"}),
    "ablation": _outputs({"effect", "mlp"}, {"heads"}, {"effect"}),
    "patching": _outputs({"recovery"}, {"recovery_by_position"}, {"effect"}),
    "evaluation": _outputs(set(), set(), {"accuracy", "effect"}),
    "mapped_steering": _outputs(set(), set(), {"effect", "native_effect", "random_effect"}),
    "mapped_probe": _outputs(set(), set(), {"accuracy", "effect", "native_effect"}),
}

#: The longest name or free-form value (a metric name, a library version) a result may hold.
MAX_FIELD_CHARS = 120


def canonical_json(data: Any) -> str:
    """Compact JSON with sorted keys: what sizes and hashes of specs and results are taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def result_problems(
    result: ExperimentResult,
    *,
    spec: dict[str, Any],
    spec_hash: str,
    size: int,
    max_bytes: int,
    allow_samples: bool,
    max_tensor_values: int | None = None,
    max_metrics: int | None = None,
    max_bootstrap: int | None = None,
) -> list[str]:
    """Every reason ``result`` may not be released as the answer to the job of ``spec``;
    empty when it may. Reasons never quote names taken from the result, only counts.

    - **schema**: the spec's method, the job's spec (its hash and the spec the result
      records), only the outputs the method produces (:data:`METHOD_OUTPUTS`), short names and
      free-form values, at most ``max_metrics`` metrics;
    - **size**: ``size`` (bytes of its JSON) at most ``max_bytes``;
    - **tensors**: no profile or table over ``max_tensor_values`` values;
    - **samples**: generated text only where ``allow_samples``;
    - **bootstrap**: the replicates are of the method's own metrics and profiles, as many as
      the spec's ``bootstrap.resamples`` (each profile replicate as long as its profile), and
      ``resamples`` at most the lab's ``max_bootstrap`` (so replicates hold at most
      ``max_bootstrap`` times what the result's own metrics and profiles hold).
    """
    problems: list[str] = []
    method = spec.get("method")
    outputs = METHOD_OUTPUTS.get(result.method)
    if result.method != method:
        shown = repr(result.method) if outputs is not None else "another"
        problems.append(f"schema: the result is of method {shown}, the job's {method!r}")
    if result.spec_hash != spec_hash or canonical_json(result.spec) != canonical_json(spec):
        problems.append("schema: the result is of another spec than the job's")
    if outputs is None:
        problems.append("schema: the result's method does not run on a frontier")
    else:
        extra_p = len(set(result.profiles) - outputs.profiles)
        extra_t = len(set(result.tables) - outputs.tables)
        missing = sorted(outputs.metrics - set(result.metrics))
        if extra_p:
            problems.append(f"schema: {extra_p} profile(s) that {result.method} does not produce")
        if extra_t:
            problems.append(f"schema: {extra_t} table(s) that {result.method} does not produce")
        if missing:
            problems.append(f"schema: metric(s) {missing} missing")
    if max_metrics is not None and len(result.metrics) > max_metrics:
        problems.append(
            f"schema: {len(result.metrics)} metrics, over the lab's cap of {max_metrics}"
        )
    free = [
        *result.metrics,
        *result.profiles,
        *result.tables,
        *result.versions,
        *result.versions.values(),
        *result.timings,
        result.device,
        result.model.name,
        result.model.model_type,
    ]
    long = sum(1 for text in free if len(text) > MAX_FIELD_CHARS)
    if long or len(result.versions) > 32 or len(result.timings) > 32:
        problems.append(
            f"schema: free-form fields over {MAX_FIELD_CHARS} characters ({long}) or too many "
            "versions/timings entries"
        )
    if size > max_bytes:
        problems.append(f"size: {size} bytes, over the policy's cap of {max_bytes} bytes")
    if max_tensor_values is not None:
        known = set() if outputs is None else outputs.profiles | outputs.tables
        arrays = [(k, "profile", len(p.values)) for k, p in result.profiles.items()]
        arrays += [(k, "table", sum(len(row) for row in t)) for k, t in result.tables.items()]
        for key, kind, count in arrays:
            name = f"{kind} {key}" if key in known else f"an unexpected {kind}"
            if count > max_tensor_values:
                problems.append(
                    f"tensors: {name} holds {count} values, over the lab's cap of "
                    f"{max_tensor_values}"
                )
    if result.bootstrap is not None:
        problems += _bootstrap_problems(result, result.bootstrap, spec, outputs, max_bootstrap)
    if result.samples and not allow_samples:
        problems.append(
            f"samples: the result holds {len(result.samples)} generated text(s); "
            "the policy releases none"
        )
    return problems


def _bootstrap_problems(
    result: ExperimentResult,
    replicates: Replicates,
    spec: dict[str, Any],
    outputs: MethodOutputs | None,
    max_bootstrap: int | None,
) -> list[str]:
    """Why a result's bootstrap may not be released (names from the result never quoted)."""
    from analoglab.experiments.uncertainty import DEFAULT_RESAMPLES

    problems: list[str] = []
    # a spec's dict leaves its bootstrap out at the default (see experiments.spec)
    asked = (spec.get("bootstrap") or {}).get("resamples", DEFAULT_RESAMPLES)
    b = replicates.resamples
    if b != asked:
        problems.append(f"bootstrap: {b} resamples, the job's spec asks for {asked}")
    if max_bootstrap is not None and b > max_bootstrap:
        problems.append(f"bootstrap: {b} resamples, over the lab's cap of {max_bootstrap}")
    known_profiles = outputs.profiles if outputs is not None else frozenset()
    strangers = len(set(replicates.metrics) - set(result.metrics)) + len(
        set(replicates.profiles) - (known_profiles & set(result.profiles))
    )
    if strangers:
        problems.append(f"bootstrap: replicates of {strangers} output(s) the result does not hold")
    wrong = sum(1 for v in replicates.metrics.values() if len(v) != b)
    for name, rows in replicates.profiles.items():
        width = len(result.profiles[name].values) if name in result.profiles else -1
        wrong += int(len(rows) != b or any(len(row) != width for row in rows))
    if wrong:
        problems.append(
            f"bootstrap: {wrong} replicate set(s) not of {b} replicates the size of their output"
        )
    if len(replicates.items) > 8 or any(len(k) > MAX_FIELD_CHARS for k in replicates.items):
        problems.append("bootstrap: too many or too long item-set names")
    return problems
