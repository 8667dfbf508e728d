"""Release checks: what a result must satisfy before it leaves the lab.

The agent runs :func:`check_release` on every result before posting it to the hub. A result
that fails any check is *withheld* with every reason listed (it stays on the lab site; the hub
only learns why), one that passes is posted and then released automatically or, where the
frontier's policy asks for human release, waits in ``awaiting_release``. The checks:

1. **schema** — it is an ``ExperimentResult`` of the spec's method and of the job's spec (its
   ``spec_hash`` *and* the spec it records), holding only the outputs that method produces
   (:data:`METHOD_OUTPUTS`): an unknown profile or table is a channel nothing in the spec
   asked for; its free-form fields (metric and output names, versions, device, model name)
   are short, and it holds at most ``max_metrics`` metrics;
2. **size** — its JSON is at most the policy's ``max_output_bytes``;
3. **tensors** — no profile or table holds more values than the lab's ``max_tensor_values``
   (results are aggregates; a large array is how weights or activations would leak);

Reasons never quote names taken from the result (they go to the hub), only counts.
4. **samples** — generated text only where the policy's ``allow_samples`` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from analoglab.experiments.result import ExperimentResult
from analoglab.lab.config import ReleaseConfig
from analoglab.models.catalog import FrontierPolicy


@dataclass(frozen=True)
class Outputs:
    """What one method's result may hold."""

    profiles: frozenset[str]
    tables: frozenset[str]
    metrics: frozenset[str]  # required metric names


def _o(profiles: set[str], tables: set[str], metrics: set[str]) -> Outputs:
    return Outputs(frozenset(profiles), frozenset(tables), frozenset(metrics))


#: The outputs of each method that runs on a frontier (see ``docs/methods/``).
METHOD_OUTPUTS: dict[str, Outputs] = {
    "activation_stats": _o(
        {"norm", "mean_direction", "pca_top1"}, {"pca_explained_variance"}, set()
    ),
    "steering": _o({"effect", "side_effect_kl"}, {"score", "normalised_effect"}, {"effect"}),
    "probe": _o({"accuracy", "train_accuracy"}, set(), {"accuracy", "effect"}),
    "ablation": _o({"effect", "mlp"}, {"heads"}, {"effect"}),
    "patching": _o({"recovery"}, {"recovery_by_position"}, {"effect"}),
    "evaluation": _o(set(), set(), {"accuracy", "effect"}),
}


#: The longest name or free-form value (a metric name, a library version) a result may hold.
MAX_FIELD_CHARS = 120


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def result_size(result: dict[str, Any]) -> int:
    """Bytes of the result's compact JSON (what the hub measures against the cap)."""
    return len(json.dumps(result, separators=(",", ":"), sort_keys=True).encode())


def check_release(
    result: dict[str, Any],
    *,
    spec: dict[str, Any],
    spec_hash: str,
    policy: FrontierPolicy,
    config: ReleaseConfig | None = None,
) -> list[str]:
    """Every reason ``result`` may not leave the lab; empty when it may."""
    config = config or ReleaseConfig()
    try:
        parsed = ExperimentResult.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        return [f"schema: not an ExperimentResult ({where}: {first['msg']})"]
    problems: list[str] = []
    method = spec.get("method")
    known = parsed.method in METHOD_OUTPUTS
    if parsed.method != method:
        shown = repr(parsed.method) if known else "another"
        problems.append(f"schema: the result is of method {shown}, the job's {method!r}")
    if parsed.spec_hash != spec_hash or _canonical(parsed.spec) != _canonical(spec):
        problems.append("schema: the result is of another spec than the job's")
    outputs = METHOD_OUTPUTS.get(parsed.method)
    if outputs is None:
        problems.append("schema: the result's method does not run on a frontier")
    else:
        extra_p = len(set(parsed.profiles) - outputs.profiles)
        extra_t = len(set(parsed.tables) - outputs.tables)
        missing = sorted(outputs.metrics - set(parsed.metrics))
        if extra_p:
            problems.append(f"schema: {extra_p} profile(s) that {parsed.method} does not produce")
        if extra_t:
            problems.append(f"schema: {extra_t} table(s) that {parsed.method} does not produce")
        if missing:
            problems.append(f"schema: metric(s) {missing} missing")
    if len(parsed.metrics) > config.max_metrics:
        problems.append(
            f"schema: {len(parsed.metrics)} metrics, over the lab's cap of {config.max_metrics}"
        )
    free = [
        *parsed.metrics,
        *parsed.profiles,
        *parsed.tables,
        *parsed.versions,
        *parsed.versions.values(),
        *parsed.timings,
        parsed.device,
        parsed.model.name,
        parsed.model.model_type,
    ]
    long = sum(1 for text in free if len(text) > MAX_FIELD_CHARS)
    if long or len(parsed.versions) > 32 or len(parsed.timings) > 32:
        problems.append(
            f"schema: free-form fields over {MAX_FIELD_CHARS} characters ({long}) or too many "
            "versions/timings entries"
        )
    size = result_size(result)
    if size > policy.max_output_bytes:
        problems.append(
            f"size: {size} bytes, over the policy's cap of {policy.max_output_bytes} bytes"
        )
    cap = config.max_tensor_values
    arrays = [(f"profile {k}", len(p.values)) for k, p in parsed.profiles.items()]
    arrays += [(f"table {k}", sum(len(row) for row in t)) for k, t in parsed.tables.items()]
    for name, count in arrays:
        if count > cap:
            problems.append(f"tensors: {name} holds {count} values, over the lab's cap of {cap}")
    if parsed.samples and not policy.allow_samples:
        problems.append(
            f"samples: the result holds {len(parsed.samples)} generated text(s); "
            "the policy releases none"
        )
    return problems
