"""The hub's configuration on Kubernetes (analoglab.deploy.kubehub), built from
helm/values/jupyterhub.yaml merged over the official chart's defaults: as data, and loaded by
a real JupyterHub process the way the chart's jupyterhub_config.py loads hub.extraConfig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from analoglab.deploy.kubehub import TOKEN_ENV, agent_token_env, build, configure
from analoglab.deploy.profiles import GROUPS_KEY
from analoglab.hub.config import SCOPE

from .charts import HELM, SCHEMAS, deep_merge, load_yaml


def merged_values() -> dict[str, Any]:
    defaults_file = SCHEMAS / "jupyterhub-chart-values.defaults.json"
    defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else {}
    merged: dict[str, Any] = deep_merge(defaults, load_yaml(HELM / "values" / "jupyterhub.yaml"))
    return merged


def get_config_of(values: dict[str, Any]) -> Any:
    """What z2jh.get_config does: a dotted key of the values in, its value (or default) out."""

    def get_config(key: str, default: Any = None) -> Any:
        node: Any = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    return get_config


def environ(labs: list[str]) -> dict[str, str]:
    env = {name: f"token-of-{name.lower()}" for name in TOKEN_ENV.values()}
    env.update({agent_token_env(lab): f"agent-token-{lab}" for lab in labs})
    return env


def test_build_registers_our_services_with_tokens_from_the_environment() -> None:
    values = merged_values()
    labs = values["custom"]["analoglab"]["labs"]
    cfg = build(get_config_of(values), environ(labs))
    services = {s["name"]: s for s in cfg["JupyterHub"]["services"]}
    assert set(services) == {"queue", "mlflow", "demo", "analoglab-cli", "dask-gateway"} | {
        f"agent-{lab}" for lab in labs
    }
    assert services["queue"]["api_token"] == "token-of-analoglab_queue_api_token"
    assert services["queue"]["url"] == "http://analoglab-queue:8765"
    assert services["queue"]["oauth_redirect_uri"] == "/services/queue/oauth_callback"
    assert "api_token" not in services["demo"]  # the demo never asks the hub anything
    roles = {r["name"]: r for r in cfg["JupyterHub"]["load_roles"]}
    assert "idle-culler" not in roles  # the chart's culler has its own
    assert roles["analoglab-agent-demo-lab"]["services"] == ["agent-demo-lab"]
    assert f"{SCOPE}review:demo-lab" in cfg["JupyterHub"]["custom_scopes"]
    env = cfg["KubeSpawner"]["environment"]
    assert env["ANALOGLAB_QUEUE_URL"] == "http://analoglab-queue:8765/services/queue"
    assert env["MLFLOW_TRACKING_URI"] == "http://analoglab-mlflow:8766/services/mlflow"
    assert env["ANALOGLAB_MODEL_STORE"] == "/models"
    # a running cell is reported more often than the chart's culler looks for activity
    assert int(env["JUPYTERHUB_ACTIVITY_INTERVAL"]) * 4 <= values["cull"]["timeout"]
    args = cfg["KubeSpawner"]["args"]
    assert "--MappingKernelManager.cull_busy=False" in args
    assert any("analoglab.hub.activity" in a for a in args)
    scopes = cfg["KubeSpawner"]["server_token_scopes"]
    assert f"{SCOPE}submit" in scopes and not any("review" in s for s in scopes)


def test_a_missing_token_stops_the_hub_with_the_variable_named() -> None:
    values = merged_values()
    env = environ([])  # no agent tokens
    with pytest.raises(ValueError, match=agent_token_env("demo-lab")):
        build(get_config_of(values), env)


def test_configure_appends_to_what_the_chart_set_and_restricts_profiles() -> None:
    from traitlets.config import Config

    values = merged_values()
    c = Config()
    c.JupyterHub.services = [{"name": "jupyterhub-idle-culler", "command": ["x"]}]
    c.JupyterHub.load_roles = [{"name": "jupyterhub-idle-culler", "scopes": ["list:users"]}]
    c.KubeSpawner.profile_list = values["singleuser"]["profileList"]
    c.KubeSpawner.environment = {"DASK_GATEWAY__ADDRESS": "x"}
    configure(c, get_config_of(values), environ(values["custom"]["analoglab"]["labs"]))
    names = [s["name"] for s in c.JupyterHub.services]
    assert names[0] == "jupyterhub-idle-culler" and "queue" in names
    assert c.JupyterHub.load_roles[0]["name"] == "jupyterhub-idle-culler"
    assert c.KubeSpawner.environment["DASK_GATEWAY__ADDRESS"] == "x"
    profile_list = c.KubeSpawner.profile_list
    assert callable(profile_list)
    nobody = type("S", (), {"user": type("U", (), {"groups": []})()})()
    assert [p["slug"] for p in profile_list(nobody)] == ["cpu"]
    assert all(GROUPS_KEY not in p for p in profile_list(nobody))


HUB_CONFIG = """
import json, os
values = json.load(open(os.environ["VALUES_JSON"]))
# what the official chart's jupyterhub_config.py does with the values we set
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.JupyterHub.db_url = os.environ["HUB_DB_URL"]
c.JupyterHub.cookie_secret = bytes.fromhex("00" * 32)
c.JupyterHub.services = [{"name": "jupyterhub-idle-culler", "command": ["true"]}]
c.JupyterHub.load_roles = [{
    "name": "jupyterhub-idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["jupyterhub-idle-culler"],
}]
c.KubeSpawner.profile_list = values["singleuser"]["profileList"]
for section, settings in values["hub"]["config"].items():
    for name, value in settings.items():
        setattr(getattr(c, section), name, value)
for name, snippet in sorted(values["hub"]["extraConfig"].items()):
    exec(compile(snippet, "extraConfig." + name, "exec"), globals())
"""

Z2JH = """
import json, os
_values = json.load(open(os.environ["VALUES_JSON"]))
def get_config(key, default=None):
    node = _values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
"""

PROBE = """
import asyncio, json, sys
from jupyterhub.app import JupyterHub
from jupyterhub import orm

async def main():
    app = JupyterHub()
    await app.initialize(["-f", sys.argv[1]])
    db = app.db
    print(json.dumps({
        "services": sorted(s.name for s in db.query(orm.Service)),
        "roles": sorted(r.name for r in db.query(orm.Role)),
        "groups": sorted(g.name for g in db.query(orm.Group)),
        "scopes": sorted(app.custom_scopes),
        "profiles": callable(app.config.KubeSpawner.profile_list),
        "queue_oauth": bool(
            db.query(orm.OAuthClient).filter_by(identifier="service-queue").first()
        ),
    }))

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_extra_config_loads_in_a_real_jupyterhub(tmp_path: Path) -> None:
    values = merged_values()
    labs = values["custom"]["analoglab"]["labs"]
    (tmp_path / "values.json").write_text(json.dumps(values))
    (tmp_path / "z2jh.py").write_text(Z2JH)
    (tmp_path / "jupyterhub_config.py").write_text(textwrap.dedent(HUB_CONFIG))
    (tmp_path / "probe.py").write_text(PROBE)
    env = {
        **os.environ,
        **environ(labs),
        "VALUES_JSON": str(tmp_path / "values.json"),
        "HUB_DB_URL": f"sqlite:///{tmp_path / 'hub.sqlite'}",
        "PYTHONPATH": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "jupyterhub_config.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert {
        "queue",
        "mlflow",
        "demo",
        "analoglab-cli",
        "dask-gateway",
        "jupyterhub-idle-culler",
    } <= set(got["services"])
    assert {f"agent-{lab}" for lab in labs} <= set(got["services"])
    assert {"analoglab-researcher", "analoglab-operator", "analoglab-reviewer-demo-lab"} <= set(
        got["roles"]
    )
    assert {"researchers", "admins", "reviewers-demo-lab"} <= set(got["groups"])
    assert f"{SCOPE}submit" in got["scopes"]
    assert got["profiles"] and got["queue_oauth"]


def test_the_hub_config_needs_only_the_light_core() -> None:
    """The hub image installs analoglab without extras: loading the config must not import
    torch, MLflow, Gradio, the queue's web stack, or KubeSpawner itself."""
    code = (
        "import sys, analoglab.deploy.kubehub\n"
        "heavy = {'torch', 'gradio', 'mlflow', 'transformers', 'fastapi', 'sqlalchemy',"
        " 'kubespawner', 'kubernetes', 'dask'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
