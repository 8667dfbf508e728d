"""The lab chart matches what the executor's Job builder (analoglab.lab.kubernetes) expects:
its lab.toml parses into the executor's config, the Jobs built from it land in the chart's
namespace, mount the chart's weights claim and are cut off by the chart's NetworkPolicy,
and the chart's Role is exactly the agent's RBAC."""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analoglab.lab.config import KubernetesExecutorConfig, LabConfig, parse_lab_config
from analoglab.lab.executor import Task
from analoglab.lab.kubernetes import build_agent_rbac, build_job, build_network_policy

from .charts import LAB_CHART, LAB_REQUIRED, kinds, lab_all, render

pytest.importorskip("helm_python")


def lab_toml(docs: list[dict[str, Any]]) -> LabConfig:
    (cm,) = [c for c in kinds(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    return parse_lab_config(tomllib.loads(cm["data"]["lab.toml"]))


@pytest.mark.parametrize("values", [lambda: dict(LAB_REQUIRED), lab_all], ids=["min", "all"])
def test_lab_toml_is_the_executors_config_and_its_jobs_fit_the_chart(values: Any) -> None:
    v = values()
    docs = render(LAB_CHART, v, release="lab")
    cfg = lab_toml(docs)
    ex = cfg.executor
    assert isinstance(ex, KubernetesExecutorConfig)
    assert cfg.lab == v["lab"] and cfg.hub == v["hub"]["url"]
    namespace = v.get("executor", {}).get("namespace") or "analoglab"
    assert ex.namespace == namespace

    job = build_job(
        Task(job_id=7, frontier="f", weights="f", spec={"method": "probe"}),
        ex,
        name="analoglab-7-abcde",
        max_result_bytes=1 << 20,
    )
    pod = job["spec"]["template"]
    # the weights claim is the chart's (created here, or the operator's)
    claims = {
        vol["persistentVolumeClaim"]["claimName"]
        for vol in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in vol
    }
    pvcs = {p["metadata"]["name"] for p in kinds(docs, "PersistentVolumeClaim")}
    assert claims == {ex.weights_claim} and ex.weights_claim in pvcs
    # the chart's NetworkPolicy is the builder's, and it selects the Job's pod
    (policy,) = [
        p
        for p in kinds(docs, "NetworkPolicy")
        if p["metadata"]["name"] == build_network_policy(ex)["metadata"]["name"]
    ]
    built = build_network_policy(ex)
    assert policy["spec"] == built["spec"]
    assert policy["metadata"]["namespace"] == built["metadata"]["namespace"] == namespace
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["automountServiceAccountToken"] is False
    # the Role and RoleBinding are the builder's, bound to the agent's ServiceAccount
    (sa,) = kinds(docs, "ServiceAccount")
    role, binding = build_agent_rbac(
        ex, service_account=sa["metadata"]["name"], service_account_namespace="analoglab"
    )
    (chart_role,) = kinds(docs, "Role")
    (chart_binding,) = kinds(docs, "RoleBinding")
    assert chart_role["rules"] == role["rules"]
    assert chart_role["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert chart_binding["roleRef"] == binding["roleRef"]
    assert chart_binding["subjects"] == binding["subjects"]


def test_the_full_values_reach_the_jobs() -> None:
    v = lab_all()
    cfg = lab_toml(render(LAB_CHART, v, release="lab"))
    ex = cfg.executor
    assert isinstance(ex, KubernetesExecutorConfig)
    assert ex.gpus == 2 and ex.cpu == "16" and ex.memory == "128Gi"
    assert ex.node_selector == v["executor"]["nodeSelector"]
    assert ex.tolerations == v["executor"]["tolerations"]
    assert ex.labels == {"team": "interp"}
    assert ex.image_pull_secrets == ["registry"]
    assert cfg.models["big-frontier"].sha256 == "0" * 64
    assert cfg.agent.lease_seconds == 180
    assert cfg.release.max_metrics == 128
    job = build_job(
        Task(job_id=1, frontier="big-frontier", weights="big-frontier", spec={}),
        ex,
        name="analoglab-1-abcde",
        max_result_bytes=1024,
    )
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"


def test_the_agent_reads_its_token_and_signing_key_from_secrets() -> None:
    docs = render(LAB_CHART, dict(LAB_REQUIRED), release="lab")
    cfg = lab_toml(docs)
    (dep,) = kinds(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert str(cfg.token_file).startswith("/secrets/token/")
    assert volumes[mounts["/secrets/token"]["name"]]["secret"]["secretName"] == "agent-token"
    assert str(cfg.signing_key).startswith("/secrets/signing/")
    (secret,) = kinds(docs, "Secret")
    assert (
        volumes[mounts["/secrets/signing"]["name"]]["secret"]["secretName"]
        == secret["metadata"]["name"]
    )
    pem = base64.b64decode(secret["data"]["signing.key"])
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    # the outbox and withheld results live beside lab.toml, on the site's own volume
    assert mounts["/site"]["name"] == "site" and "persistentVolumeClaim" in volumes["site"]


def test_an_operators_signing_key_and_weights_claim_replace_the_generated_ones() -> None:
    v = {
        **LAB_REQUIRED,
        "signingKey": {"existingSecret": "my-key"},
        "weights": {"existingClaim": "w"},
    }
    docs = render(LAB_CHART, v, release="lab")
    assert not kinds(docs, "Secret")
    assert [p["metadata"]["name"] for p in kinds(docs, "PersistentVolumeClaim")] == ["lab-site"]
    ex = lab_toml(docs).executor
    assert isinstance(ex, KubernetesExecutorConfig) and ex.weights_claim == "w"
