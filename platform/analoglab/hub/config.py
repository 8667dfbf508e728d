"""The JupyterHub configuration of the platform, built as data from a :class:`Plan`.

:func:`build_config` is pure: a :class:`Plan` (ports, paths, tokens, modes, the labs of the
catalog) in, ``{section: {setting: value}}`` out, where a value is plain data or a
:class:`Ref` to a function the hub imports (the spawn hooks). :func:`render` writes it as the
text of ``jupyterhub_config.py``. Nothing here touches the disk or the network.

What it configures:

- the proxy (configurable-http-proxy) on the one public address, the hub's API on loopback;
- the authenticator: ``nativeauthenticator`` (sign-up held for an admin's approval, bcrypt
  hashes, blocked after failed logins; :mod:`.auth` makes it run on JupyterHub 6), or in dev
  mode JupyterHub's shared-password one;
- the spawner: one OS user per hub user (``LocalProcessSpawner``) or, where the platform does
  not run as root, one OS user for all (``SimpleLocalProcessSpawner``); the advisory memory and
  CPU limits (local spawners pass them on as ``MEM_LIMIT``/``CPU_LIMIT``, they do not enforce
  them); the kernel culler of every server (idle kernels culled, busy ones spared) and the
  extension that makes a running cell count as the server's activity, so the hub's idle culler
  spares a busy server (:mod:`.activity`);
- the managed services: the queue (``/services/queue/``), the MLflow server on a private port
  (and its OAuth gate at ``/services/mlflow/`` when there is one), one lab agent per lab site
  of this machine, the idle culler, and the token-only ``analoglab-cli`` service the
  ``users`` commands use; the public demo at ``/services/demo/`` (:func:`demo_service`)
  where the demo extra is installed;
- the roles: the ``custom:analoglab:*`` scopes (see :mod:`analoglab.queue.hubauth`) granted to
  the groups ``researchers``, ``reviewers-<lab>`` and ``admins``, and the scopes of notebook
  tokens (``Spawner.server_token_scopes``): reach the queue and MLflow, submit, never review.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from analoglab.hub.layout import Layout

QUEUE_SERVICE = "queue"
MLFLOW_SERVICE = "mlflow"
MLFLOW_SERVER_SERVICE = "mlflow-server"
CULLER_SERVICE = "idle-culler"
ACTIVITY_EXTENSION = "analoglab.hub.activity"  # a running cell is activity (see that module)
CLI_SERVICE = "analoglab-cli"
DEMO_SERVICE = "demo"  # the public demo (Gradio): open to everyone, no hub login
RESEARCHERS = "researchers"
ADMINS = "admins"
SCOPE = "custom:analoglab:"

Mode = Literal["per-user", "single-user"]
Auth = Literal["native", "dev"]


def reviewers_group(lab: str) -> str:
    return f"reviewers-{lab}"


def agent_service(lab: str) -> str:
    return f"agent-{lab}"


def access(service: str) -> str:
    return f"access:services!service={service}"


def is_loopback(ip: str) -> bool:
    if ip in ("localhost", ""):
        return ip == "localhost"
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def connect_host(ip: str) -> str:
    """The address processes on this machine use to reach something bound to ``ip``."""
    if ip in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True)
class Ref:
    """A function the hub imports by name (``module:attribute``), e.g. a spawn hook."""

    target: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.target.partition(":")[2]


@dataclass(frozen=True)
class Ports:
    public: int
    hub: int
    proxy_api: int
    queue: int
    mlflow: int
    gate: int
    demo: int = 0


@dataclass(frozen=True)
class AgentSite:
    """A lab site on this machine whose agent the hub runs as a service."""

    lab: str
    config: Path  # its lab.toml
    token: str  # the service's API token, also in token_file for the agent to read
    token_file: Path


@dataclass(frozen=True)
class Plan:
    """Everything the hub's configuration depends on (see :func:`build_config`)."""

    layout: Layout
    ports: Ports
    bin_dir: Path  # the virtualenv's bin: python, jupyterhub-singleuser, analoglab
    proxy_command: str
    ip: str = "127.0.0.1"
    mode: Mode = "single-user"
    as_root: bool = False  # the hub runs as root (single-user mode then needs --allow-root)
    auth: Auth = "native"
    admin: str = "admin"
    dev_password: str | None = None  # dev mode: every user's password
    dev_admin_password: str | None = None  # dev mode: the admin's (32+ characters)
    labs: tuple[str, ...] = ()
    agents: tuple[AgentSite, ...] = ()
    cli_token: str = ""
    queue_page_secret: str = ""
    mlflow_gate: list[str] | None = None  # the gate's command line, when there is one
    demo: bool = False  # run the public demo at /services/demo/ (needs the demo extra)
    mem_limit: str | None = None
    cpu_limit: float | None = None
    cull_timeout: int = 3600  # seconds a server may be idle before the culler stops it
    cull_every: int = 300
    kernel_cull_timeout: int = 1800  # seconds an idle (never a busy) kernel is kept
    platform_id: str = ""  # marks every process of this platform (ANALOGLAB_PLATFORM_ID)
    notebooks: Path | None = None  # shared notebooks copied into new homes
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> str:
        return str(self.bin_dir / "python")

    @property
    def public_url(self) -> str:
        scheme = "https" if self.ssl_cert else "http"
        host = "127.0.0.1" if self.ip in ("", "0.0.0.0", "::") else connect_host(self.ip)
        return f"{scheme}://{host}:{self.ports.public}"

    @property
    def internal_url(self) -> str:
        """The proxy as processes on this machine reach it."""
        scheme = "https" if self.ssl_cert else "http"
        return f"{scheme}://{connect_host(self.ip)}:{self.ports.public}"

    @property
    def queue_url(self) -> str:
        return f"{self.internal_url}/services/{QUEUE_SERVICE}"

    @property
    def mlflow_server_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def mlflow_url(self) -> str:
        """What notebooks log to: the gate through the proxy, else (no gate yet) the server
        itself on loopback."""
        if self.mlflow_gate:
            return f"{self.internal_url}/services/{MLFLOW_SERVICE}"
        return self.mlflow_server_url

    @property
    def hub_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.hub}/hub/api"


def _base_env(plan: Plan) -> dict[str, str]:
    """What every process the hub starts needs (the hub passes on almost nothing by itself)."""
    return {
        "PATH": f"{plan.bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANALOGLAB_PLATFORM_ID": plan.platform_id,
        **plan.extra_env,
    }


def _service_env(plan: Plan) -> dict[str, str]:
    return {**_base_env(plan), "ANALOGLAB_HOME": str(plan.layout.data)}


def custom_scopes(labs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    scopes = {
        SCOPE + "submit": {"description": "Submit experiments to the gated queue."},
        SCOPE + "admin": {"description": "Operate the gated queue."},
    }
    for lab in labs:
        scopes[f"{SCOPE}review:{lab}"] = {"description": f"Review the jobs of {lab}."}
        scopes[f"{SCOPE}agent:{lab}"] = {"description": f"Run the approved jobs of {lab}."}
    return scopes


def _reached_services(plan: Plan) -> list[str]:
    names = [QUEUE_SERVICE]
    if plan.mlflow_gate:
        names.append(MLFLOW_SERVICE)
    return names


def roles(plan: Plan) -> list[dict[str, Any]]:
    """``load_roles``: what each group, service and notebook token may do."""
    reach = [access(s) for s in _reached_services(plan)]
    result: list[dict[str, Any]] = [
        {
            "name": "analoglab-researcher",
            "description": "Submit to the queue and log to MLflow.",
            "scopes": [SCOPE + "submit", *reach],
            "groups": [RESEARCHERS],
        },
        {
            "name": "analoglab-operator",
            "description": "Operate the queue.",
            "scopes": [SCOPE + "admin", *reach],
            "groups": [ADMINS],
        },
        {
            "name": CULLER_SERVICE,
            "description": "Stop servers idle for too long.",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": [CULLER_SERVICE],
        },
        {
            "name": CLI_SERVICE,
            "description": "What `analoglab users` and `analoglab status` do.",
            "scopes": [
                "admin:users",
                "admin:groups",
                "admin:servers",
                "list:users",
                "read:users",
                "read:groups",
                "read:services",
                "read:hub",
                "tokens",
            ],
            "services": [CLI_SERVICE],
        },
    ]
    for lab in plan.labs:
        result.append(
            {
                "name": f"analoglab-reviewer-{lab}",
                "description": f"Review the jobs of {lab}.",
                "scopes": [f"{SCOPE}review:{lab}", access(QUEUE_SERVICE)],
                "groups": [reviewers_group(lab)],
            }
        )
    for site in plan.agents:
        result.append(
            {
                "name": f"analoglab-agent-{site.lab}",
                "description": f"The agent of {site.lab}.",
                "scopes": [f"{SCOPE}agent:{site.lab}", access(QUEUE_SERVICE)],
                "services": [agent_service(site.lab)],
            }
        )
    return result


def server_token_scopes(plan: Plan) -> list[str]:
    """A notebook's ``JUPYTERHUB_API_TOKEN``: the default server role, the services it may
    reach, and submitting (a token gets only what its owner holds). Never reviewing: a
    reviewer signs in to the review pages with the hub's OAuth, so script in a notebook cannot
    approve a job."""
    return [
        "users:activity!user",
        "access:servers!server",
        *(access(s) for s in _reached_services(plan)),
        SCOPE + "submit",
    ]


def services(plan: Plan) -> list[dict[str, Any]]:
    env = _service_env(plan)
    analoglab = str(plan.bin_dir / "analoglab")
    result: list[dict[str, Any]] = [
        {
            "name": QUEUE_SERVICE,
            "url": f"http://127.0.0.1:{plan.ports.queue}",
            "command": [analoglab, "queue", "serve"],
            "environment": {**env, "ANALOGLAB_QUEUE_PAGE_SECRET": plan.queue_page_secret},
            # the review pages' OAuth tokens carry the queue scopes each user holds
            "oauth_client_allowed_scopes": sorted(custom_scopes(plan.labs)),
            "oauth_no_confirm": True,
            "display": True,
            "info": {"description": "The gated queue: jobs and their review pages."},
        },
        {
            "name": MLFLOW_SERVER_SERVICE,
            "command": [
                analoglab,
                "tracking",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(plan.ports.mlflow),
            ],
            # MLflow 3's job runner (GenAI jobs, unused here) costs six processes, ~0.8 GB
            "environment": {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        },
        {
            "name": CULLER_SERVICE,
            "command": [
                plan.python,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={plan.cull_timeout}",
                f"--cull-every={plan.cull_every}",
            ],
            "environment": _base_env(plan),
        },
        {"name": CLI_SERVICE, "api_token": plan.cli_token},
    ]
    if plan.mlflow_gate:
        result.append(
            {
                "name": MLFLOW_SERVICE,
                "url": f"http://127.0.0.1:{plan.ports.gate}",
                "command": list(plan.mlflow_gate),
                "environment": {**env, "ANALOGLAB_MLFLOW_SERVER": plan.mlflow_server_url},
                "oauth_no_confirm": True,
                "display": True,
                "info": {"description": "MLflow: runs, transfer reports, analog cards."},
            }
        )
    if plan.demo:
        result.append(demo_service(plan, env))
    for site in plan.agents:
        result.append(
            {
                "name": agent_service(site.lab),
                "api_token": site.token,
                "command": [
                    analoglab,
                    "lab",
                    "agent",
                    "--config",
                    str(site.config),
                    "--hub",
                    plan.queue_url,
                    "--token-file",
                    str(site.token_file),
                ],
                "environment": env,
            }
        )
    return result


def demo_service(plan: Plan, env: dict[str, str]) -> dict[str, Any]:
    """The public demo: a hub service routed by the proxy at ``/services/demo/`` that checks
    no hub login (it never asks the hub who a visitor is). It reads the model store and,
    read-only, MLflow itself on loopback (published and released results only); its links to
    runs point at the MLflow gate, where a visitor with an account can sign in."""
    link = f"{plan.public_url}/services/{MLFLOW_SERVICE}" if plan.mlflow_gate else None
    command = [str(plan.bin_dir / "analoglab"), "demo"]
    if link:
        command += ["--mlflow-link", link]
    return {
        "name": DEMO_SERVICE,
        "url": f"http://127.0.0.1:{plan.ports.demo}",
        "command": command,
        "environment": {
            **env,
            "ANALOGLAB_MLFLOW_TRACKING_URI": plan.mlflow_server_url,
            "GRADIO_ANALYTICS_ENABLED": "False",
        },
        "display": True,
        "info": {"description": "The public demo: talk to the analogs, steer them."},
    }


def singleuser_env(plan: Plan) -> dict[str, Any]:
    """What a user's server (and its kernels) sees: where the queue, MLflow, the model store
    and the catalog are; the Dask dashboard through the server's own proxy."""
    data = plan.layout.data
    return {
        **_base_env(plan),
        "ANALOGLAB_MODEL_STORE": str(data / "models"),
        "ANALOGLAB_CATALOG_DIR": str(data / "catalog"),
        "ANALOGLAB_QUEUE_URL": plan.queue_url,
        "ANALOGLAB_MLFLOW_TRACKING_URI": plan.mlflow_url,
        "MLFLOW_TRACKING_URI": plan.mlflow_url,
        "MLFLOW_TRACKING_TOKEN": Ref("analoglab.hub.spawn:server_token"),
        "DASK_DISTRIBUTED__DASHBOARD__LINK": "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status",
        # the server tells the hub of its activity often enough for the culler's timeout, and
        # a running cell counts (analoglab.hub.activity)
        "JUPYTERHUB_ACTIVITY_INTERVAL": str(activity_interval(plan)),
        "ANALOGLAB_BUSY_CHECK_SECONDS": str(max(5, activity_interval(plan) // 2)),
    }


def lab_overrides() -> dict[str, Any]:
    """JupyterLab settings every user starts from (``overrides.json`` in
    ``Layout.lab_settings``): news and update checks off, so JupyterLab never asks about them
    (the prompt appears whatever the server's news feed, while the setting is unset)."""
    return {
        "@jupyterlab/apputils-extension:notification": {
            "fetchNews": "false",
            "checkForUpdates": False,
        }
    }


def activity_interval(plan: Plan) -> int:
    """Seconds between a server's activity reports to the hub: a quarter of the culler's
    timeout (at most JupyterHub's default of 300), so a busy server is never culled."""
    return max(10, min(300, plan.cull_timeout // 4))


def kernel_culling_args(plan: Plan) -> list[str]:
    """The server's own kernel culler: idle kernels go, a kernel running a cell stays."""
    return [
        f"--MappingKernelManager.cull_idle_timeout={plan.kernel_cull_timeout}",
        f"--MappingKernelManager.cull_interval={max(10, min(300, plan.kernel_cull_timeout // 2))}",
        "--MappingKernelManager.cull_busy=False",
        "--MappingKernelManager.cull_connected=True",
    ]


def build_config(plan: Plan) -> dict[str, dict[str, Any]]:
    """The hub's configuration as ``{section: {setting: value}}``."""
    layout = plan.layout
    hub: dict[str, Any] = {
        "ip": plan.ip,
        "port": plan.ports.public,
        "hub_ip": "127.0.0.1",
        "hub_port": plan.ports.hub,
        "db_url": layout.db_url,
        "cookie_secret_file": str(layout.cookie_secret),
        "pid_file": str(layout.hub / "jupyterhub.pid"),
        "cleanup_servers": True,
        "cleanup_proxy": True,
        "custom_scopes": custom_scopes(plan.labs),
        "load_groups": {
            g: {"users": []}
            for g in (RESEARCHERS, ADMINS, *(reviewers_group(lab) for lab in plan.labs))
        },
        "load_roles": roles(plan),
        "services": services(plan),
        "spawner_class": "localprocess" if plan.mode == "per-user" else "simple",
    }
    if plan.ssl_cert and plan.ssl_key:
        hub["ssl_cert"] = str(plan.ssl_cert)
        hub["ssl_key"] = str(plan.ssl_key)
    config: dict[str, dict[str, Any]] = {
        "JupyterHub": hub,
        "ConfigurableHTTPProxy": {
            "api_url": f"http://127.0.0.1:{plan.ports.proxy_api}",
            "command": [plan.proxy_command],
            "pid_file": str(layout.hub / "jupyterhub-proxy.pid"),
        },
        "Authenticator": {"admin_users": [plan.admin], "allow_all": True},
    }
    if plan.auth == "native":
        hub["authenticator_class"] = "analoglab.hub.auth.PlatformAuthenticator"
        hub["template_paths"] = [Ref("analoglab.hub.spawn:NATIVE_TEMPLATES")]
        config["NativeAuthenticator"] = {
            "open_signup": False,  # a sign-up waits for an admin's approval
            "minimum_password_length": 10,
            "check_common_password": True,
            "allowed_failed_logins": 5,
            "seconds_before_next_try": 300,
        }
    else:
        hub["authenticator_class"] = "shared-password"
        config["SharedPasswordAuthenticator"] = {
            "user_password": plan.dev_password,
            "admin_password": plan.dev_admin_password,
        }
    single_user_root = plan.mode == "single-user" and plan.as_root
    spawner: dict[str, Any] = {
        "cmd": [str(plan.bin_dir / "jupyterhub-singleuser")],
        "args": [
            *kernel_culling_args(plan),
            f"--ServerApp.jpserver_extensions={ACTIVITY_EXTENSION}=True",
            # no news feed nor update checks (nothing to fetch from; no prompt to answer)
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--LabApp.app_settings_dir={layout.lab_settings}",
            *(["--allow-root"] if single_user_root else []),
        ],
        "default_url": "/lab",
        "environment": singleuser_env(plan),
        "server_token_scopes": server_token_scopes(plan),
        "pre_spawn_hook": Ref("analoglab.hub.spawn:pre_spawn"),
        "http_timeout": 120,
        "start_timeout": 180,
    }
    if plan.mem_limit:
        spawner["mem_limit"] = plan.mem_limit
    if plan.cpu_limit:
        spawner["cpu_limit"] = plan.cpu_limit
    config["Spawner"] = spawner
    # Stopping: SIGINT, then SIGTERM, then SIGKILL, quickly enough for Ctrl-C's 10 s.
    config["LocalProcessSpawner"] = {"interrupt_timeout": 3, "term_timeout": 2, "kill_timeout": 2}
    if plan.mode == "single-user":
        config["SimpleLocalProcessSpawner"] = {
            "home_dir_template": str(layout.homes / "{username}")
        }
    return config


def _literal(value: Any, imports: set[str]) -> str:
    if isinstance(value, Ref):
        imports.add(value.module)
        return f"{value.module}.{value.attribute}"
    if isinstance(value, dict):
        items = ", ".join(f"{k!r}: {_literal(v, imports)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v, imports) for v in value) + "]"
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def render(config: dict[str, dict[str, Any]]) -> str:
    """The text of ``jupyterhub_config.py`` for ``config``."""
    imports: set[str] = set()
    lines = []
    for section, settings in config.items():
        for name, value in settings.items():
            lines.append(f"c.{section}.{name} = {_literal(value, imports)}")
    head = [
        '"""Written by `analoglab up` at each start: edits are lost (see docs/platform.md)."""',
        *(f"import {m}" for m in sorted(imports)),
        "",
        "c = get_config()  # noqa: F821",
    ]
    return "\n".join([*head, *lines]) + "\n"
