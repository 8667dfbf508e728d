"""Helpers for the deployment tests: render our charts offline with Helm's own engine
(``helm-python-sdk``), and merge values over defaults as Helm does."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "helm"
HUB_CHART = HELM / "analoglab-hub"
LAB_CHART = HELM / "analoglab-lab"
VALUES = Path(__file__).parent / "values"
SCHEMAS = ROOT.parent / "shared" / "schemas"
#: The Kubernetes version the manifests are validated against (strict mode).
K8S = "1.33.0"
NAMESPACE = "analoglab"

#: The least a lab site needs (the lab chart has no usable default for these).
LAB_REQUIRED: dict[str, Any] = {
    "lab": "demo-lab",
    "hub": {"url": "https://hub.example.org/services/queue", "tokenSecret": "agent-token"},
}


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge key by key, anything else replaces; null deletes."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = deep_merge(out.get(k), v)
        return out
    return copy.deepcopy(override)


@functools.lru_cache(maxsize=16)
def _render(chart: str, values_json: str, release: str) -> tuple[tuple[str, str], ...]:
    import helm_python as helm

    loaded = helm.Chart.load(chart)
    out = loaded.render(json.loads(values_json), name=release, namespace=NAMESPACE)
    return tuple(sorted(out.items()))


def render_files(chart: Path, values: dict[str, Any], release: str = "analoglab") -> dict[str, str]:
    return dict(_render(str(chart), json.dumps(values, sort_keys=True), release))


def render(chart: Path, values: dict[str, Any], release: str = "analoglab") -> list[dict[str, Any]]:
    """Every manifest the chart renders with ``values`` (NOTES.txt left out)."""
    docs: list[dict[str, Any]] = []
    for path, text in render_files(chart, values, release).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload's pod template."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def hub_all() -> dict[str, Any]:
    return load_yaml(VALUES / "hub-all.yaml")


def lab_all() -> dict[str, Any]:
    return load_yaml(VALUES / "lab-all.yaml")
