"""How our objects become MLflow params, metrics and tags, within MLflow's limits.

- Params are strings of at most :data:`PARAM_VALUE_LIMIT` (500) characters: the value limit
  of older MLflow servers and about what the UI shows. A nested spec is flattened to dotted
  keys (``data.kind``, ``layers.depths``); a list becomes its JSON; a longer value is cut and
  ends in ``…`` (the whole spec is always logged as ``spec.json`` too).
- Keys keep to the characters MLflow accepts everywhere (letters, digits, ``_ - . `` and
  space); anything else becomes ``_``.
- :func:`log_batch` sends params, metrics and tags in batches MLflow accepts (at most 100
  params and tags and 1,000 entries in one call).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARAM_VALUE_LIMIT = 500
TAG_VALUE_LIMIT = 5000
KEY_LIMIT = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTRIES_PER_BATCH = 1000
ELLIPSIS = "…"

_BAD_KEY_CHARS = re.compile(r"[^\w.\- ]")


def safe_key(name: str) -> str:
    """``name`` as a valid MLflow param/metric/tag key (same input, same key)."""
    key = _BAD_KEY_CHARS.sub("_", name).strip() or "_"
    if key.startswith("."):
        key = "_" + key
    return key[:KEY_LIMIT]


def clip(value: str, limit: int = PARAM_VALUE_LIMIT) -> str:
    """``value`` cut to ``limit`` characters, ending in ``…`` when it was cut."""
    return value if len(value) <= limit else value[: limit - len(ELLIPSIS)] + ELLIPSIS


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as ``{dotted.key: value}`` params, each value clipped.

    Scalars become their JSON (``true``, ``null``, ``0.5``) except strings, kept as they are;
    lists become their JSON, prefixed by ``[n items]`` when they hold objects (data items).
    """
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            text = json.dumps(list(value), separators=(",", ":"), default=str)
            if any(isinstance(v, Mapping | list | tuple) for v in value):
                text = f"[{len(value)} items] {text}"
            out[safe_key(name)] = clip(text)
        else:
            out[safe_key(name)] = clip(_scalar(value))
    return out


@dataclass(frozen=True)
class MetricValue:
    """One metric point: key, value and step (its time is taken when logged)."""

    key: str
    value: float
    step: int = 0


def now_ms() -> int:
    return int(time.time() * 1000)


def log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, str] | None = None,
    metrics: Iterable[MetricValue] = (),
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log everything in as few ``log_batch`` calls as MLflow's limits allow."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = now_ms()
    param_list = [Param(safe_key(k), clip(v)) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, clip(v, TAG_VALUE_LIMIT)) for k, v in (tags or {}).items()]
    metric_list = [
        Metric(safe_key(m.key), m.value, stamp, m.step) for m in metrics if math.isfinite(m.value)
    ]
    while param_list or tag_list or metric_list:
        p, param_list = (
            param_list[:MAX_PARAMS_TAGS_PER_BATCH],
            param_list[MAX_PARAMS_TAGS_PER_BATCH:],
        )
        room = MAX_PARAMS_TAGS_PER_BATCH - len(p)
        t, tag_list = tag_list[:room], tag_list[room:]
        room = MAX_ENTRIES_PER_BATCH - len(p) - len(t)
        m, metric_list = metric_list[:room], metric_list[room:]
        client.log_batch(run_id, metrics=m, params=p, tags=t)
