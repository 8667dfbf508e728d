"""Our values for the official charts (helm/values/*.yaml), merged over each chart's defaults
as Helm does, validate against that chart's values schema (../shared/schemas)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from .charts import HELM, SCHEMAS, deep_merge, load_yaml

CHARTS = {"jupyterhub": "jupyterhub-chart-values", "dask-gateway": "dask-gateway-chart-values"}


def schema_and_defaults(chart: str) -> tuple[dict[str, Any], dict[str, Any]]:
    base = SCHEMAS / CHARTS[chart]
    if not (SCHEMAS / f"{CHARTS[chart]}.schema.json").is_file():
        pytest.skip(f"no upstream schema at {SCHEMAS}")
    schema = json.loads((SCHEMAS / f"{CHARTS[chart]}.schema.json").read_text())
    defaults = json.loads(base.with_name(f"{CHARTS[chart]}.defaults.json").read_text())
    return schema, defaults


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_our_values_validate_against_the_upstream_schema(chart: str) -> None:
    schema, defaults = schema_and_defaults(chart)
    jsonschema.validate(defaults, schema)  # the data is sound as shipped
    ours = load_yaml(HELM / "values" / f"{chart}.yaml")
    merged = deep_merge(defaults, ours)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(merged), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_a_misspelt_key_is_caught() -> None:
    schema, defaults = schema_and_defaults("jupyterhub")
    bad = deep_merge(defaults, {"singleuser": {"profilelist": []}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_the_hub_values_are_consistent_with_themselves() -> None:
    jh = load_yaml(HELM / "values" / "jupyterhub.yaml")
    labs = jh["custom"]["analoglab"]["labs"]
    from analoglab.deploy.kubehub import agent_token_env

    for lab in labs:
        env = jh["hub"]["extraEnv"][agent_token_env(lab)]
        assert env["valueFrom"]["secretKeyRef"]["key"] == f"agent-{lab}-token"
    # GPU profiles request GPUs, run on GPU nodes, tolerate their taint, and are restricted
    gpu = [p for p in jh["singleuser"]["profileList"] if p["slug"].startswith("gpu")]
    assert len(gpu) == 2
    for p in gpu:
        o = p["kubespawner_override"]
        assert int(o["extra_resource_limits"]["nvidia.com/gpu"]) >= 1, p["slug"]
        assert o["node_selector"] and o["tolerations"], p["slug"]
        assert p["analoglab_groups"], p["slug"]
        image = o["image"]
        assert ":" in image and not image.endswith(":latest")
    # /dev/shm is memory-backed in every server
    vols = {v["name"]: v for v in jh["singleuser"]["storage"]["extraVolumes"]}
    (shm,) = [
        m for m in jh["singleuser"]["storage"]["extraVolumeMounts"] if m["mountPath"] == "/dev/shm"
    ]
    assert vols[shm["name"]]["emptyDir"]["medium"] == "Memory"
    # the notebook image is pulled ahead, profiles' images too
    assert jh["prePuller"]["continuous"]["enabled"] and jh["prePuller"]["pullProfileListImages"]


def test_helmfile_deploys_the_three_in_order_in_one_namespace() -> None:
    helmfile = load_yaml(HELM / "helmfile.yaml")
    releases = helmfile["releases"]
    assert [r["name"] for r in releases] == ["analoglab", "jupyterhub", "dask-gateway"]
    assert len({r["namespace"] for r in releases}) == 1
    ns = releases[0]["namespace"]
    assert releases[1]["needs"] == [f"{ns}/analoglab"]
    assert releases[2]["needs"] == [f"{ns}/jupyterhub"]
    assert (HELM / releases[0]["chart"]).is_dir()
    for r in releases[1:]:
        assert r.get("version"), f"{r['name']}: pin the chart's version"
        for v in r["values"]:
            assert (HELM / v).is_file(), v
    # the labs our release generates tokens for are the labs the hub registers
    jh = load_yaml(HELM / "values" / "jupyterhub.yaml")
    ours = [v for v in releases[0]["values"] if isinstance(v, dict)]
    assert ours and ours[0]["labs"] == jh["custom"]["analoglab"]["labs"]
