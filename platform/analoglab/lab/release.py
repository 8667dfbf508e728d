"""Release checks: what a result must satisfy before it leaves the lab.

The agent runs :func:`check_release` on every result before posting it to the hub. A result
that fails any check is *withheld* with every reason listed (it stays on the lab site; the hub
only learns why), one that passes is posted and then released automatically or, where the
frontier's policy asks for human release, waits in ``awaiting_release``.

The checks are :func:`analoglab.experiments.result.result_problems` (the hub runs the same on
every posted result) with the lab's own caps on top: ``max_tensor_values`` (results are
aggregates; a large array is how weights or activations would leak) and ``max_metrics``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from analoglab.experiments.result import ExperimentResult, canonical_json, result_problems
from analoglab.lab.config import ReleaseConfig
from analoglab.models.catalog import FrontierPolicy


def result_size(result: dict[str, Any]) -> int:
    """Bytes of the result's compact JSON (what the hub measures against the cap)."""
    return len(canonical_json(result).encode())


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
    return result_problems(
        parsed,
        spec=spec,
        spec_hash=spec_hash,
        size=result_size(result),
        max_bytes=policy.max_output_bytes,
        allow_samples=policy.allow_samples,
        max_tensor_values=config.max_tensor_values,
        max_metrics=config.max_metrics,
    )
