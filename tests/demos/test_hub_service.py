"""The demo as a hub service of ``analoglab up`` (configuration as data; no hub started), and
``analoglab demo`` taking its address and prefix from the hub's service variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from analoglab.hub.config import DEMO_SERVICE, Plan, Ports, access, build_config, render
from analoglab.hub.layout import Layout


def plan(tmp_path: Path, **changes: Any) -> Plan:
    values: dict[str, Any] = {
        "layout": Layout(tmp_path / "data"),
        "ports": Ports(8000, 8081, 8001, 8765, 5000, 5001, 7861),
        "bin_dir": Path("/venv/bin"),
        "proxy_command": "/chp",
        "labs": ("demo-lab",),
        "platform_id": "abc",
        "demo": True,
    }
    values.update(changes)
    return Plan(**values)


def services(p: Plan) -> dict[str, dict[str, Any]]:
    c = Config()
    exec(
        compile(render(build_config(p)), "jupyterhub_config.py", "exec"), {"get_config": lambda: c}
    )
    return {s["name"]: s for s in c.JupyterHub.services}


def test_the_demo_is_a_public_service_behind_the_proxy(tmp_path: Path) -> None:
    demo = services(plan(tmp_path, mlflow_gate=["/venv/bin/analoglab", "tracking", "gate"]))[
        DEMO_SERVICE
    ]
    # routed by the proxy at /services/demo/ (a url), run by the hub (a command)
    assert demo["url"] == "http://127.0.0.1:7861"
    assert demo["command"][:2] == ["/venv/bin/analoglab", "demo"]
    # links to runs go to the MLflow gate through the proxy; reads go to MLflow on loopback
    assert demo["command"][2:] == ["--mlflow-link", "http://127.0.0.1:8000/services/mlflow"]
    env = demo["environment"]
    assert env["ANALOGLAB_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["ANALOGLAB_HOME"] == str(tmp_path / "data")
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False"
    # no OAuth client, no token: it asks the hub nothing, and nobody signs in to see it
    assert "api_token" not in demo and "oauth_no_confirm" not in demo


def test_the_demo_grants_nothing_and_is_off_unless_asked(tmp_path: Path) -> None:
    with_demo = plan(tmp_path)
    c = Config()
    exec(compile(render(build_config(with_demo)), "c.py", "exec"), {"get_config": lambda: c})
    for role in c.JupyterHub.load_roles:
        assert access(DEMO_SERVICE) not in role.get("scopes", [])
    assert DEMO_SERVICE not in services(plan(tmp_path, demo=False))
    no_gate = services(plan(tmp_path))[DEMO_SERVICE]
    assert "--mlflow-link" not in no_gate["command"]


def test_analoglab_demo_reads_the_hub_service_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run by the hub, ``analoglab demo`` listens where JUPYTERHUB_SERVICE_URL says and serves
    under JUPYTERHUB_SERVICE_PREFIX."""
    import analoglab.demos.app as app_module
    from analoglab.cli import app

    seen: dict[str, Any] = {}
    monkeypatch.setenv("ANALOGLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:7999")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/demo/")
    monkeypatch.setattr(app_module, "build_app", lambda settings, **kw: ("app", kw))
    monkeypatch.setattr(app_module, "serve", lambda a, **kw: seen.update(kw))
    from typer.testing import CliRunner

    done = CliRunner().invoke(app, ["demo"])
    assert done.exit_code == 0, done.output
    assert seen == {"host": "127.0.0.1", "port": 7999, "root_path": "/services/demo/"}


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--no-demo"], False)])
def test_up_serves_the_demo_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flag: list[str], expected: bool
) -> None:
    """``analoglab up --no-demo`` hands ``up`` options without the demo (whose plan then
    has no demo service: the test above); by default the demo is asked for."""
    import os

    import analoglab.hub.platform as platform_module
    from analoglab.cli import app

    seen: dict[str, Any] = {}

    def fake_up(settings: Any, options: Any, say: Any) -> int:
        seen["options"] = options
        return 0

    def no_exit(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setenv("ANALOGLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(platform_module, "up", fake_up)
    monkeypatch.setattr(os, "_exit", no_exit)
    from typer.testing import CliRunner

    done = CliRunner().invoke(app, ["up", *flag])
    assert done.exit_code == 0, done.output
    assert seen["options"].demo is expected
