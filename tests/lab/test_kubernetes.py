"""The Kubernetes Job builder, the NetworkPolicy and the agent's RBAC, tested as data and
validated against the Kubernetes 1.33 schema (strict: an unknown field is an error)."""

from __future__ import annotations

import base64
import json
from typing import Any

import kubernetes_validate
import pytest

from analoglab.lab.config import KubernetesExecutorConfig, parse_lab_config
from analoglab.lab.executor import Task
from analoglab.lab.framing import frame
from analoglab.lab.kubernetes import (
    EGRESS_DENY,
    EGRESS_LABEL,
    RUN_LABEL,
    build_agent_rbac,
    build_job,
    build_network_policy,
    job_name,
    label_value,
    log_limit_bytes,
    weights_path,
)

K8S = "1.33.0"
SPEC = {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 8}}


def cfg(**kw: Any) -> KubernetesExecutorConfig:
    base: dict[str, Any] = {
        "namespace": "frontier-lab",
        "image": "registry.lab.example/analoglab-worker:1.2",
        "weights_claim": "frontier-weights",
    }
    return KubernetesExecutorConfig.model_validate({**base, **kw})


def task(**kw: Any) -> Task:
    base: dict[str, Any] = {
        "job_id": 42,
        "frontier": "demo-frontier",
        "spec": SPEC,
        "weights": "demo-frontier",
    }
    return Task(**{**base, **kw})


def job(t: Task | None = None, c: KubernetesExecutorConfig | None = None) -> dict[str, Any]:
    return build_job(t or task(), c or cfg(), name="analoglab-42-abcde", max_result_bytes=1_000_000)


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(manifest)["containers"]
    assert isinstance(c, dict)
    return c


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_job_validates_against_the_kubernetes_schema() -> None:
    kubernetes_validate.validate(job(), K8S, strict=True)
    full = cfg(
        gpus=2,
        node_selector={"nvidia.com/gpu.product": "H100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        image_pull_secrets=["lab-registry"],
        labels={"team": "interp"},
    )
    kubernetes_validate.validate(job(c=full), K8S, strict=True)


def test_the_schema_check_would_catch_a_broken_job() -> None:
    """The validation above is not vacuous: a misspelt field fails it."""
    bad = job()
    pod_spec(bad)["automountServiceAcountToken"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S, strict=True)


def test_the_job_runs_the_worker_once_on_the_weights_in_the_volume() -> None:
    c = cfg(weights_mount="/mnt/weights", cpu="1500m")
    manifest = job(task(weights="frontiers/demo", weights_sha256="ab" * 32), c)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"]["name"] == "analoglab-42-abcde"
    assert manifest["metadata"]["namespace"] == "frontier-lab"
    ctr = container(manifest)
    assert ctr["image"] == "registry.lab.example/analoglab-worker:1.2"
    cmd = ctr["command"]
    assert cmd[:4] == ["python", "-m", "analoglab.lab.worker", "once"]
    assert arg(cmd, "--frontier") == "demo-frontier"
    assert arg(cmd, "--weights") == "/mnt/weights/frontiers/demo"
    assert arg(cmd, "--sha256") == "ab" * 32
    assert arg(cmd, "--device") == "cpu"
    assert arg(cmd, "--threads") == "1"
    assert json.loads(base64.b64decode(arg(cmd, "--spec-b64"))) == SPEC
    assert "--sha256" not in container(job())["command"]
    # The weights are the claim, mounted read-only at the configured path.
    (weights,) = [v for v in pod_spec(manifest)["volumes"] if v["name"] == "weights"]
    assert weights["persistentVolumeClaim"] == {"claimName": "frontier-weights", "readOnly": True}
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "weights"]
    assert mount == {"name": "weights", "mountPath": "/mnt/weights", "readOnly": True}


def test_the_job_runs_once_and_is_bounded_in_time() -> None:
    spec = job(c=cfg(timeout_seconds=900.5, ttl_seconds_after_finished=120))["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["completions"] == 1 and spec["parallelism"] == 1
    assert spec["activeDeadlineSeconds"] == 901
    assert spec["ttlSecondsAfterFinished"] == 120
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_pod_is_locked_down() -> None:
    manifest = job(c=cfg(run_as_user=4242))
    pod = pod_spec(manifest)
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert "serviceAccountName" not in pod
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 4242
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = container(manifest)["securityContext"]
    assert csc["runAsNonRoot"] is True and csc["runAsUser"] == 4242
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["privileged"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in csc["capabilities"]
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    # Only the weights (read-only) and two scratch emptyDirs: no hostPath, no secret volume.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes) == {"weights", "tmp", "cache"}
    assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["cache"]
    mounts = {m["mountPath"]: m for m in container(manifest)["volumeMounts"]}
    assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly")


def test_the_pod_is_offline_and_gets_no_token() -> None:
    ctr = container(job())
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HOME"].startswith("/cache/") and env["HOME"] == "/tmp"
    assert "envFrom" not in ctr
    assert not [k for k in env if any(w in k for w in ("TOKEN", "SECRET", "KEY", "PASSWORD"))]
    assert all(set(e) == {"name", "value"} for e in ctr["env"])  # nothing from a Secret
    assert "ANALOGLAB_" not in json.dumps(job())


def test_labels_select_the_job_and_its_pod_for_the_egress_policy() -> None:
    manifest = job(task(frontier="Org/Big Frontier:v2"), cfg(labels={"team": "interp"}))
    meta = manifest["metadata"]["labels"]
    pod = manifest["spec"]["template"]["metadata"]["labels"]
    for labels in (meta, pod):
        assert labels["app.kubernetes.io/name"] == "analoglab-worker"
        assert labels["analoglab.io/job-id"] == "42"
        assert labels["analoglab.io/frontier"] == "Org-Big-Frontier-v2"
        assert labels[EGRESS_LABEL] == EGRESS_DENY
        assert labels["team"] == "interp"
    assert pod[RUN_LABEL] == "analoglab-42-abcde"
    assert manifest["metadata"]["annotations"]["analoglab.io/frontier"] == "Org/Big Frontier:v2"
    # The policy's selector matches the pod, and a lab's own labels cannot switch it off.
    policy = build_network_policy(cfg())
    for key, value in policy["spec"]["podSelector"]["matchLabels"].items():
        assert pod[key] == value
    sneaky = job(c=cfg(labels={EGRESS_LABEL: "allow", "app.kubernetes.io/name": "x"}))
    assert sneaky["spec"]["template"]["metadata"]["labels"][EGRESS_LABEL] == EGRESS_DENY
    kubernetes_validate.validate(manifest, K8S, strict=True)


def test_gpu_limits_only_when_gpus_are_asked_for() -> None:
    cpu_only = container(job(c=cfg(cpu="4", memory="24Gi")))
    assert cpu_only["resources"] == {
        "requests": {"cpu": "4", "memory": "24Gi"},
        "limits": {"cpu": "4", "memory": "24Gi"},
    }
    assert "nvidia.com/gpu" not in json.dumps(cpu_only)
    gpu = container(job(c=cfg(gpus=2)))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in gpu["resources"]["requests"]
    assert arg(gpu["command"], "--device") == "cuda"


def test_node_selector_tolerations_and_pull_secrets_come_from_the_config() -> None:
    tolerations = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "lab", "operator": "Equal", "value": "frontier", "effect": "NoExecute"},
    ]
    c = cfg(
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=tolerations,
        image_pull_secrets=["lab-registry"],
    )
    pod = pod_spec(job(c=c))
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == tolerations
    assert pod["imagePullSecrets"] == [{"name": "lab-registry"}]
    plain = pod_spec(job())
    assert "nodeSelector" not in plain and "tolerations" not in plain


def test_the_executor_config_reads_from_lab_toml() -> None:
    lab = parse_lab_config(
        {
            "lab": "demo-lab",
            "executor": {
                "kind": "kubernetes",
                "image": "w:1",
                "weights_claim": "weights",
                "gpus": 1,
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
            },
        }
    )
    assert isinstance(lab.executor, KubernetesExecutorConfig)
    kubernetes_validate.validate(job(c=lab.executor), K8S, strict=True)


def test_names_are_dns_labels_and_unique() -> None:
    names = {job_name(123456789) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert len(name) <= 63 and name == name.lower() and name.startswith("analoglab-123456789-")
        manifest = build_job(task(), cfg(), name=name, max_result_bytes=10)
        kubernetes_validate.validate(manifest, K8S, strict=True)
    for bad in ("Analoglab-1", "a_b", "x" * 64, "-a", "a-"):
        with pytest.raises(ValueError, match="not a valid Job name"):
            build_job(task(), cfg(), name=bad, max_result_bytes=10)


def test_weights_cannot_leave_the_volume() -> None:
    assert weights_path("demo", "/weights") == "/weights/demo"
    assert weights_path("/weights/demo/", "/weights") == "/weights/demo"
    assert weights_path("a/./b", "/weights/") == "/weights/a/b"
    for bad in ("../etc", "/etc/passwd", "a/../../x", "/weightsX/demo"):
        with pytest.raises(ValueError, match="outside the weights volume"):
            weights_path(bad, "/weights")
    with pytest.raises(ValueError, match="outside the weights volume"):
        job(task(weights="/srv/lab/models/demo-frontier"))


def test_a_spec_too_large_for_a_command_line_is_refused() -> None:
    huge = {"method": "activation_stats", "data": {"kind": "prompts", "prompts": ["x" * 200_000]}}
    with pytest.raises(ValueError, match="command line"):
        job(task(spec=huge))


def test_label_values_are_made_valid() -> None:
    assert label_value("demo-frontier") == "demo-frontier"
    assert label_value("org/model@v1") == "org-model-v1"
    assert len(label_value("a" * 100)) == 63
    assert label_value("--x--") == "x"


def test_the_log_read_fits_a_framed_result_of_the_cap() -> None:
    for cap in (10, 1000, 123_457):
        framed = frame({"x": "y" * (cap - 8)})  # {"x":"..."} is exactly cap bytes of JSON
        assert len(framed.encode()) <= log_limit_bytes(cap)


def test_the_network_policy_denies_all_traffic_of_workers() -> None:
    policy = build_network_policy(cfg())
    kubernetes_validate.validate(policy, K8S, strict=True)
    assert policy["metadata"]["namespace"] == "frontier-lab"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"analoglab.io/egress": "deny"}}
    assert "Egress" in spec["policyTypes"] and "Ingress" in spec["policyTypes"]
    assert spec["egress"] == [] and spec["ingress"] == []


def test_the_agent_rbac_grants_jobs_pods_and_logs_in_its_namespace_only() -> None:
    role, binding = build_agent_rbac(
        cfg(), service_account="agent", service_account_namespace="ops"
    )
    for obj in (role, binding):
        kubernetes_validate.validate(obj, K8S, strict=True)
        assert obj["metadata"]["namespace"] == "frontier-lab"
    assert role["kind"] == "Role"  # namespaced, not a ClusterRole
    grants = {
        (group, res): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
    }
    assert grants == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get"},
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "agent", "namespace": "ops"}]
    _, default = build_agent_rbac(cfg())
    assert default["subjects"][0]["namespace"] == "frontier-lab"
