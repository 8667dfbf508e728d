"""Our two charts, rendered offline by Helm's own engine (helm-python-sdk), linted, and every
manifest validated against the Kubernetes schema in strict mode; then the policies every
rendered pod and Service must meet. Default values and an all-features values file."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from .charts import (
    HUB_CHART,
    K8S,
    LAB_CHART,
    LAB_REQUIRED,
    all_containers,
    deep_merge,
    hub_all,
    kinds,
    lab_all,
    load_yaml,
    pod_labels,
    pod_specs,
    render,
)

helm = pytest.importorskip("helm_python")

CASES = {
    "hub-defaults": (HUB_CHART, lambda: {}),
    "hub-all": (HUB_CHART, hub_all),
    "lab-defaults": (LAB_CHART, lambda: dict(LAB_REQUIRED)),
    "lab-all": (LAB_CHART, lab_all),
}
#: Containers that cannot run with a read-only root filesystem (none today).
WRITABLE_ROOT: set[str] = set()


@pytest.fixture(params=sorted(CASES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    chart, values = CASES[request.param]
    return request.param, render(chart, values())


# -- Helm: schema, lint, render ------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_pass_the_charts_schema_and_lint_strict(case: str) -> None:
    chart, values = CASES[case]
    helm.Chart.load(str(chart)).validate_schema(values())
    report = helm.lint(str(chart), values(), strict=True, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_the_lab_chart_refuses_to_render_without_its_lab_and_hub() -> None:
    with pytest.raises(helm.HelmError):
        helm.Chart.load(str(LAB_CHART)).validate_schema({})


@pytest.mark.parametrize("chart", [HUB_CHART, LAB_CHART])
def test_an_unpinned_or_latest_image_is_refused(chart: Path) -> None:
    base = {} if chart == HUB_CHART else dict(LAB_REQUIRED)
    key = "queue" if chart == HUB_CHART else "agent"
    bad = deep_merge(base, {key: {"image": {"tag": "latest"}}})
    with pytest.raises(helm.HelmError):
        helm.Chart.load(str(chart)).validate_schema(bad)


@pytest.mark.parametrize("chart", [HUB_CHART, LAB_CHART])
def test_every_values_key_has_a_comment_above_it(chart: Path) -> None:
    lines = (chart / "values.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        above = lines[i - 1].strip() if i else ""
        # a key inside a block of plain settings (cpu/memory under requests) shares its
        # parent's comment; every other key has its own
        if not above.startswith("#") and not _in_leaf_block(lines, i, len(m.group(1))):
            missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, "keys without a comment above them:\n" + "\n".join(missing)


def _in_leaf_block(lines: list[str], i: int, indent: int) -> bool:
    """Whether line i is a plain scalar setting directly under a commented parent key whose
    other children are scalars too (requests: {cpu, memory}; label maps)."""
    j = i - 1
    while j >= 0 and (len(lines[j]) - len(lines[j].lstrip())) >= indent:
        if lines[j].strip().startswith("#"):
            return False
        j -= 1
    return j >= 0 and lines[j].rstrip().endswith(":") and lines[j - 1].strip().startswith("#")


@pytest.mark.parametrize("chart", [HUB_CHART, LAB_CHART])
def test_one_folder_per_component_and_one_kind_per_file(chart: Path) -> None:
    values = {} if chart == HUB_CHART else dict(LAB_REQUIRED)
    all_values = hub_all() if chart == HUB_CHART else lab_all()
    from .charts import render_files

    for v in (values, all_values):
        for path, text in render_files(chart, v).items():
            if path.endswith("NOTES.txt"):
                continue
            parts = Path(path).parts
            assert len(parts) == 4, f"{path}: templates/<component>/<file>"
            import yaml

            found = {d["kind"] for d in yaml.safe_load_all(text) if d}
            assert len(found) <= 1, f"{path} holds {found}"


# -- the Kubernetes schema, strict ---------------------------------------------------------


def test_every_manifest_is_valid_kubernetes_in_strict_mode(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_executors_job_is_valid_kubernetes_in_strict_mode() -> None:
    from analoglab.lab.config import KubernetesExecutorConfig
    from analoglab.lab.executor import Task
    from analoglab.lab.kubernetes import build_job

    cfg = KubernetesExecutorConfig(image="r/w:1", weights_claim="w", gpus=1)
    task = Task(job_id=1, frontier="big", weights="big", spec={"method": "steering"})
    kubernetes_validate.validate(
        build_job(task, cfg, name="analoglab-1-abcde", max_result_bytes=1 << 20), K8S, strict=True
    )


# -- policies ------------------------------------------------------------------------------


def test_every_container_has_requests_and_limits(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        for c in all_containers(spec):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    assert res.get(part, {}).get(what), f"{name}/{c['name']}: no {part}.{what}"


def test_every_pod_runs_as_non_root_without_privileges(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("runAsUser", 0) > 0, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in all_containers(spec):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") is not True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            if where not in WRITABLE_ROOT:
                assert sc.get("readOnlyRootFilesystem") is True, where


def test_every_image_is_pinned(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        for c in all_containers(spec):
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}/{c['name']}: {image}"


def test_no_secret_value_is_inline(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Secrets only through secretKeyRef; no token, password or key in a plain env value,
    a ConfigMap or a command line."""
    _, docs = rendered
    secretish = re.compile(r"(TOKEN|PASSWORD|SECRET|_KEY)$")
    for name, spec in pod_specs(docs):
        for c in all_containers(spec):
            for env in c.get("env", []):
                if secretish.search(env["name"]):
                    assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], (
                        f"{name}/{c['name']}: {env['name']} is inline"
                    )
    secrets = []
    for doc in kinds(docs, "Secret"):
        secrets += [base64.b64decode(v).decode() for v in doc.get("data", {}).values()]
    text = json.dumps([d for d in docs if d["kind"] != "Secret"])
    for value in secrets:
        for piece in (value, *re.findall(r":([^:@/]{16,})@", value)):
            assert piece not in text, "a secret value appears outside its Secret"


def test_every_service_is_selected_by_a_network_policy(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    policies = kinds(docs, "NetworkPolicy")
    for svc in kinds(docs, "Service"):
        selector = svc["spec"]["selector"]
        pods = [
            pod_labels(d)
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")
            and all(pod_labels(d).get(k) == v for k, v in selector.items())
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no pod of the chart"
        for labels in pods:
            assert any(
                all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
                for p in policies
            ), f"the pods of Service {svc['metadata']['name']} have no NetworkPolicy"


def test_every_workload_is_selected_by_a_network_policy(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    policies = kinds(docs, "NetworkPolicy")
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        labels = pod_labels(d)
        assert any(
            all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
            for p in policies
        ), f"{d['kind']}/{d['metadata']['name']} has no NetworkPolicy"


def test_only_the_agent_gets_a_service_account_token(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        if name.endswith("-agent"):
            assert spec.get("serviceAccountName"), name
            continue
        assert spec.get("automountServiceAccountToken") is False, name


# -- the hub chart's own behaviour ---------------------------------------------------------


def test_the_generated_secret_holds_every_token_and_database_url() -> None:
    docs = render(HUB_CHART, hub_all())
    (secret,) = kinds(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for key in (
        "queue-api-token",
        "mlflow-api-token",
        "cli-api-token",
        "dask-gateway-api-token",
        "queue-page-secret",
        "postgres-password",
        "agent-demo-lab-token",
        "agent-other-lab-token",
    ):
        assert len(data[key]) >= 32, key
    assert len(set(data.values())) == len(data), "every value drawn on its own"
    password = data["postgres-password"]
    assert data["queue-database-url"] == (
        f"postgresql+psycopg://analoglab:{password}@analoglab-postgresql.analoglab.svc:5432/queue"
    )
    assert data["mlflow-database-url"].endswith("/mlflow")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_secrets_are_kept_across_upgrades_by_lookup() -> None:
    """Without a cluster `lookup` finds nothing, so the template is checked for reading the
    existing Secret back before drawing a value."""
    text = (HUB_CHART / "templates/secrets/secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert "get $old ." in text and "randAlphaNum" in text
    lab = (LAB_CHART / "templates/secrets/signing-key.yaml").read_text()
    assert "lookup" in lab and 'genPrivateKey "ed25519"' in lab


def test_external_database_uses_the_operators_secret_and_no_postgresql() -> None:
    values = {
        "postgresql": {"enabled": False},
        "externalDatabase": {
            "existingSecret": "prod-db",
            "networkPolicyPeers": [{"ipBlock": {"cidr": "10.9.0.0/24"}}],
        },
    }
    docs = render(HUB_CHART, values)
    assert not kinds(docs, "StatefulSet")
    (secret,) = kinds(docs, "Secret")
    assert "queue-database-url" not in secret["data"]
    refs = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in pod_specs(docs)
        for c in all_containers(spec)
        for env in c.get("env", [])
        if env["name"] in ("ANALOGLAB_QUEUE_DATABASE_URL", "MLFLOW_DATABASE_URL")
    }
    assert refs == {"prod-db"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_queue_migrates_before_it_serves_and_has_a_disruption_budget() -> None:
    docs = render(HUB_CHART, {})
    (queue,) = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "analoglab-queue"]
    spec = queue["spec"]["template"]["spec"]
    (migrate,) = spec["initContainers"]
    assert "analoglab.queue.migrate import upgrade" in migrate["command"][-1]
    (pdb,) = kinds(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(queue).items()


def test_the_model_store_is_read_only_everywhere_but_in_its_fill_job() -> None:
    docs = render(HUB_CHART, hub_all())
    for name, spec in pod_specs(docs):
        for c in all_containers(spec):
            for m in c.get("volumeMounts", []):
                if m["name"] == "models" and not name.startswith("Job/"):
                    assert m.get("readOnly") is True, f"{name}/{c['name']}"
    (job,) = kinds(docs, "Job")
    steps = job["spec"]["template"]["spec"]["initContainers"]
    assert [s["command"][:3] for s in steps] == [["analoglab", "models", "install"]] * 2
    assert steps[0]["command"][4:6] == [
        "--public-key",
        hub_all()["modelStore"]["bundles"][0]["publicKey"],
    ]
    assert "--public-key" not in steps[1]["command"]  # the lab's key in the catalog
    (policy,) = [
        p for p in kinds(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("models")
    ]
    assert policy["spec"]["egress"] == []


def test_catalog_entries_are_labs_the_catalog_reads() -> None:
    from analoglab.models.catalog import Lab

    docs = render(HUB_CHART, hub_all())
    (cm,) = [c for c in kinds(docs, "ConfigMap") if c["metadata"]["name"] == "analoglab-catalog"]
    for name, text in cm["data"].items():
        lab = Lab.model_validate_json(text)
        assert f"{lab.id}.json" == name


def test_mlflow_server_is_reached_only_by_the_demo_and_its_gate_by_hub_pods() -> None:
    docs = render(HUB_CHART, {})
    (policy,) = [
        p for p in kinds(docs, "NetworkPolicy") if p["metadata"]["name"] == "analoglab-mlflow"
    ]
    gate, server = policy["spec"]["ingress"]
    assert [p["port"] for p in server["ports"]] == [5000]
    assert [
        f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in server["from"]
    ] == ["demo"]
    assert {f["podSelector"]["matchLabels"]["component"] for f in gate["from"]} == {
        "proxy",
        "hub",
        "singleuser-server",
    }


def test_upstream_values_name_our_resources() -> None:
    """The JupyterHub values refer to our release's resources by name: they must exist."""
    docs = render(HUB_CHART, {"labs": ["demo-lab"]})
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    jh = load_yaml(HUB_CHART.parent / "values" / "jupyterhub.yaml")
    (secret,) = kinds(docs, "Secret")
    for env in jh["hub"]["extraEnv"].values():
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["data"], ref
    for vol in jh["singleuser"]["storage"]["extraVolumes"]:
        if "persistentVolumeClaim" in vol:
            assert ("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]) in names
        if "configMap" in vol:
            assert ("ConfigMap", vol["configMap"]["name"]) in names
    services = jh["custom"]["analoglab"]["services"]
    for key in ("queue", "mlflow", "demo"):
        host = services[key].split("//")[1].split(":")[0]
        assert ("Service", host) in names, services[key]
    dg = load_yaml(HUB_CHART.parent / "values" / "dask-gateway.yaml")
    auth = dg["gateway"]["auth"]["jupyterhub"]
    assert auth["apiTokenFromSecretName"] == secret["metadata"]["name"]
    assert auth["apiTokenFromSecretKey"] in secret["data"]


def test_the_services_that_ask_the_hub_are_admitted_by_its_policy() -> None:
    """The JupyterHub chart's policy admits to the hub only pods with this label."""
    docs = render(HUB_CHART, {})
    for d in kinds(docs, "Deployment"):
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        label = pod_labels(d).get("hub.jupyter.org/network-access-hub")
        assert label == ("true" if component in ("queue", "mlflow") else None), component


def test_each_analoglab_process_finds_the_store_and_catalog_where_they_are_mounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings each container's environment gives: the model store and the catalog's
    labs are mounted volumes there, and the data folder is on a writable scratch volume."""
    from analoglab.config import Settings

    docs = render(HUB_CHART, hub_all())
    configmaps = {c["metadata"]["name"]: c.get("data") or {} for c in kinds(docs, "ConfigMap")}
    checked = 0
    for name, spec in pod_specs(docs):
        for c in all_containers(spec):
            command = c.get("command", [])
            if not command or command[0] != "analoglab" or c["name"] == "server":
                continue
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            for source in c.get("envFrom", []):
                env.update(configmaps[source["configMapRef"]["name"]])
            for key in list(os.environ):
                if key.startswith("ANALOGLAB_"):
                    monkeypatch.delenv(key)
            with monkeypatch.context() as m:
                for k, v in env.items():
                    m.setenv(k, v)
                settings = Settings()
            mounts = {Path(v["mountPath"]): v for v in c.get("volumeMounts", [])}
            where = f"{name}/{c['name']}"
            assert Path("/tmp") in mounts and settings.home.is_relative_to("/tmp"), where
            if "ANALOGLAB_MODEL_STORE" in env:
                assert settings.models_path in mounts, where
            if "ANALOGLAB_CATALOG_DIR" in env:
                assert settings.catalog_path / "labs" in mounts, where
            checked += 1
    assert checked >= 5


def test_mlflow_answers_the_host_name_the_demo_uses() -> None:
    import fnmatch

    docs = render(HUB_CHART, {})
    (demo,) = [d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "analoglab-demo"]
    (mlflow,) = [
        d for d in kinds(docs, "Deployment") if d["metadata"]["name"] == "analoglab-mlflow"
    ]
    env = {
        e["name"]: e.get("value") for e in demo["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    host = env["ANALOGLAB_MLFLOW_TRACKING_URI"].split("//")[1]
    server = mlflow["spec"]["template"]["spec"]["containers"][0]
    allowed = next(e["value"] for e in server["env"] if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS")
    patterns = allowed.split(",")
    assert any(fnmatch.fnmatch(host, p) for p in patterns), (host, patterns)
    assert any(fnmatch.fnmatch("127.0.0.1:5000", p) for p in patterns)  # the gate
