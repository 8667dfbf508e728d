"""The hub's configuration as data (``analoglab.hub.config``): no hub is started here.

The rendered ``jupyterhub_config.py`` is executed against a traitlets ``Config``, as JupyterHub
loads it, and the values that carry the platform's guarantees are checked: who may reach which
service, what a notebook's token may do, where MLflow is, how servers are spawned and culled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from analoglab.hub.config import (
    AgentSite,
    Plan,
    Ports,
    access,
    build_config,
    connect_host,
    is_loopback,
    render,
)
from analoglab.hub.layout import Layout
from analoglab.hub.spawn import NATIVE_TEMPLATES, server_token
from analoglab.queue.hubauth import roles_from_scopes


def plan(tmp_path: Path, **changes: Any) -> Plan:
    layout = Layout(tmp_path / "data")
    site = AgentSite(
        "demo-lab", tmp_path / "lab.toml", "agent-token", layout.token_file("agent-demo-lab")
    )
    values: dict[str, Any] = {
        "layout": layout,
        "ports": Ports(8000, 8081, 8001, 8765, 5000, 5001),
        "bin_dir": Path("/venv/bin"),
        "proxy_command": "/chp",
        "labs": ("demo-lab", "other-lab"),
        "agents": (site,),
        "cli_token": "cli-token",
        "queue_page_secret": "s" * 32,
        "platform_id": "abc",
    }
    values.update(changes)
    return Plan(**values)


def loaded(p: Plan) -> Config:
    c = Config()
    exec(
        compile(render(build_config(p)), "jupyterhub_config.py", "exec"), {"get_config": lambda: c}
    )
    return c


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def test_rendered_config_loads_and_binds_as_planned(tmp_path: Path) -> None:
    c = loaded(plan(tmp_path))
    assert (c.JupyterHub.ip, c.JupyterHub.port) == ("127.0.0.1", 8000)
    assert (c.JupyterHub.hub_ip, c.JupyterHub.hub_port) == ("127.0.0.1", 8081)
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path / 'data/hub/jupyterhub.sqlite'}"
    assert c.ConfigurableHTTPProxy.command == ["/chp"]
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:8001"
    assert c.JupyterHub.authenticator_class == "analoglab.hub.auth.PlatformAuthenticator"
    assert c.JupyterHub.template_paths == [NATIVE_TEMPLATES]
    assert c.NativeAuthenticator.open_signup is False
    assert c.Authenticator.admin_users == ["admin"]
    # the spawn hook and the token callable are the real functions, imported by the config
    from analoglab.hub import spawn

    assert c.Spawner.pre_spawn_hook is spawn.pre_spawn
    assert c.Spawner.environment["MLFLOW_TRACKING_TOKEN"] is server_token


def test_services_and_their_roles(tmp_path: Path) -> None:
    c = loaded(plan(tmp_path))
    services = by_name(c.JupyterHub.services)
    assert set(services) == {
        "queue",
        "mlflow-server",
        "idle-culler",
        "analoglab-cli",
        "agent-demo-lab",
    }
    queue = services["queue"]
    assert queue["url"] == "http://127.0.0.1:8765"
    assert queue["command"] == ["/venv/bin/analoglab", "queue", "serve"]
    assert queue["environment"]["ANALOGLAB_HOME"] == str(tmp_path / "data")
    assert queue["environment"]["ANALOGLAB_QUEUE_PAGE_SECRET"] == "s" * 32
    # MLflow without its gate: a process, never a route of the proxy
    assert "url" not in services["mlflow-server"]
    assert "--port" in services["mlflow-server"]["command"]
    agent = services["agent-demo-lab"]
    assert agent["api_token"] == "agent-token"
    assert agent["command"][-4:] == [
        "--hub",
        "http://127.0.0.1:8000/services/queue",
        "--token-file",
        str(tmp_path / "data/hub/secrets/agent-demo-lab.token"),
    ]
    culler = services["idle-culler"]["command"]
    assert "--timeout=3600" in culler and "--cull-every=300" in culler

    roles = by_name(c.JupyterHub.load_roles)
    assert set(roles["idle-culler"]["scopes"]) == {
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
    }
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    agent_role = roles["analoglab-agent-demo-lab"]
    assert roles_from_scopes(agent_role["scopes"]) == {"agent:demo-lab"}
    assert access("queue") in agent_role["scopes"]
    researcher = roles["analoglab-researcher"]
    assert researcher["groups"] == ["researchers"]
    assert roles_from_scopes(researcher["scopes"]) == {"researcher"}
    for lab in ("demo-lab", "other-lab"):
        role = roles[f"analoglab-reviewer-{lab}"]
        assert role["groups"] == [f"reviewers-{lab}"]
        assert roles_from_scopes(role["scopes"]) == {f"reviewer:{lab}"}
    assert roles_from_scopes(roles["analoglab-operator"]["scopes"]) == {"admin"}
    assert set(c.JupyterHub.load_groups) == {
        "researchers",
        "admins",
        "reviewers-demo-lab",
        "reviewers-other-lab",
    }
    # every custom scope granted is declared
    granted = {s for r in roles.values() for s in r["scopes"] if s.startswith("custom:")}
    assert granted <= set(c.JupyterHub.custom_scopes)
    # the review pages' OAuth tokens may carry every queue scope (each user gets what they hold)
    queue = by_name(c.JupyterHub.services)["queue"]
    assert set(queue["oauth_client_allowed_scopes"]) == set(c.JupyterHub.custom_scopes)


def test_notebook_tokens_submit_and_reach_services_but_never_review(tmp_path: Path) -> None:
    scopes = loaded(plan(tmp_path)).Spawner.server_token_scopes
    assert roles_from_scopes(scopes) == {"researcher"}
    assert access("queue") in scopes and "access:servers!server" in scopes
    assert access("mlflow") not in scopes  # no gate: nothing to reach

    gated = loaded(plan(tmp_path, mlflow_gate=["/venv/bin/analoglab", "tracking", "gate"]))
    assert access("mlflow") in gated.Spawner.server_token_scopes
    gate = by_name(gated.JupyterHub.services)["mlflow"]
    assert gate["url"] == "http://127.0.0.1:5001" and gate["oauth_no_confirm"] is True
    env = gated.Spawner.environment
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:8000/services/mlflow"


def test_user_servers_environment(tmp_path: Path) -> None:
    c = loaded(plan(tmp_path, mem_limit="4G", cpu_limit=2.0))
    env = c.Spawner.environment
    assert env["ANALOGLAB_QUEUE_URL"] == "http://127.0.0.1:8000/services/queue"
    assert env["ANALOGLAB_MODEL_STORE"] == str(tmp_path / "data/models")
    assert env["ANALOGLAB_CATALOG_DIR"] == str(tmp_path / "data/catalog")
    assert "ANALOGLAB_LAB_SITES_DIR" not in env  # frontier weights are not the users'
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["ANALOGLAB_PLATFORM_ID"] == "abc"
    assert c.Spawner.mem_limit == "4G" and c.Spawner.cpu_limit == 2.0
    assert c.Spawner.default_url == "/lab"
    args = c.Spawner.args
    assert "--MappingKernelManager.cull_busy=False" in args
    assert "--MappingKernelManager.cull_idle_timeout=1800" in args


@pytest.mark.parametrize(
    ("mode", "as_root", "spawner", "allow_root"),
    [
        ("per-user", True, "localprocess", False),
        ("single-user", True, "simple", True),
        ("single-user", False, "simple", False),
    ],
)
def test_spawner_modes(
    tmp_path: Path, mode: str, as_root: bool, spawner: str, allow_root: bool
) -> None:
    c = loaded(plan(tmp_path, mode=mode, as_root=as_root))
    assert c.JupyterHub.spawner_class == spawner
    assert c.Spawner.cmd == ["/venv/bin/jupyterhub-singleuser"]
    assert ("--allow-root" in c.Spawner.args) is allow_root
    if mode == "single-user":
        assert c.SimpleLocalProcessSpawner.home_dir_template == str(
            tmp_path / "data/homes/{username}"
        )


def test_dev_mode_uses_a_shared_password(tmp_path: Path) -> None:
    c = loaded(plan(tmp_path, auth="dev", dev_password="p" * 10, dev_admin_password="a" * 32))
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert c.SharedPasswordAuthenticator.user_password == "p" * 10
    assert "NativeAuthenticator" not in c


def test_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert connect_host("0.0.0.0") == "127.0.0.1" and connect_host("10.0.0.2") == "10.0.0.2"


def test_the_platforms_ports_are_distinct_and_leave_the_public_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from analoglab.hub import platform as hub_platform

    # the OS offers the public port (chosen, not yet bound) and one port twice: neither
    # reaches the plan, and every socket opened to find them is closed
    offered = iter([8000, 41001, 41001, 8000, 41002, 41003])
    opened: list[Any] = []

    class Offered:
        def __init__(self) -> None:
            self.port, self.closed = next(offered), False
            opened.append(self)

        def bind(self, address: tuple[str, int]) -> None:
            assert address == ("127.0.0.1", 0)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(hub_platform.socket, "socket", Offered)
    assert hub_platform.free_ports(3, avoid={8000}) == [41001, 41002, 41003]
    assert len(opened) == 6 and all(s.closed for s in opened)
    monkeypatch.undo()

    # on the real OS: six distinct ports, each free to bind once chosen
    public = hub_platform.free_ports(1)[0]
    ports = hub_platform.free_ports(6, avoid={public})
    assert len(set(ports)) == 6 and public not in ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
