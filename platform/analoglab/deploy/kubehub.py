"""The hub's configuration on Kubernetes, applied by the official chart's ``hub.extraConfig``.

``helm/values/jupyterhub.yaml`` loads it with::

    from analoglab.deploy.kubehub import configure
    configure(c, get_config, os.environ)

where ``get_config`` is the chart's (``z2jh.get_config``: a dotted key of the values in,
its value out). What it adds to what the chart configured, built from the same pure builders
as the one-machine hub (:mod:`analoglab.hub.config`), so the two cannot drift apart:

- our services, registered as external services at their Kubernetes Services' URLs with the
  API tokens the ``analoglab-hub`` chart generated (its Secret, passed to the hub as
  environment variables by ``hub.extraEnv``): the queue (OAuth for the review pages), the
  MLflow gate, the public demo, ``analoglab-cli``, Dask Gateway, and one ``agent-<lab>`` per
  lab of ``custom.analoglab.labs``;
- the ``custom:analoglab:*`` scopes, the groups and the roles (researchers, admins,
  ``reviewers-<lab>``, each lab's agent), and the scopes of notebook tokens;
- the notebook's environment (the queue, MLflow, the model store, the catalog) and the
  kernel culling that spares busy kernels, with the activity extension that makes a running
  cell count as activity, at an interval derived from the chart's ``cull.timeout`` so the
  chart's idle culler spares busy servers;
- KubeSpawner's ``profile_list`` restricted to groups (:mod:`.profiles`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analoglab.deploy.profiles import restrict_profiles
from analoglab.hub.config import (
    ACTIVITY_EXTENSION,
    ADMINS,
    CLI_SERVICE,
    CULLER_SERVICE,
    DEMO_SERVICE,
    MLFLOW_SERVICE,
    QUEUE_SERVICE,
    RESEARCHERS,
    SCOPE,
    Plan,
    Ports,
    access,
    activity_interval,
    agent_service,
    custom_scopes,
    kernel_culling_args,
    reviewers_group,
    roles,
    server_token_scopes,
)
from analoglab.hub.layout import Layout

DASK_GATEWAY_SERVICE = "dask-gateway"
#: Environment variables holding the services' API tokens (set from the hub chart's Secret).
TOKEN_ENV = {
    QUEUE_SERVICE: "ANALOGLAB_QUEUE_API_TOKEN",
    MLFLOW_SERVICE: "ANALOGLAB_MLFLOW_API_TOKEN",
    CLI_SERVICE: "ANALOGLAB_CLI_API_TOKEN",
    DASK_GATEWAY_SERVICE: "ANALOGLAB_DASK_GATEWAY_API_TOKEN",
}
#: Where the notebook's pod mounts the model store (read-only) and the catalog.
MODEL_STORE = "/models"
CATALOG_DIR = "/catalog"

GetConfig = Callable[..., Any]


def agent_token_env(lab: str) -> str:
    """The variable holding lab ``lab``'s agent token (``agent-<lab>-token`` in the Secret)."""
    return "ANALOGLAB_AGENT_" + re.sub(r"[^A-Z0-9]", "_", lab.upper()) + "_TOKEN"


@dataclass(frozen=True)
class Site:
    """What the hub's configuration depends on, read from ``custom.analoglab`` and ``cull``."""

    labs: tuple[str, ...]
    queue_url: str  # the queue's Service (http://<release>-queue:8765)
    mlflow_url: str | None  # the MLflow gate's Service; None: no MLflow
    demo_url: str | None  # the demo's Service; None: no demo
    dask_gateway_url: str | None  # Dask Gateway's traefik Service; None: no gateway
    base_url: str = "/"
    cull_timeout: int = 3600
    kernel_cull_timeout: int = 1800

    def service_url(self, base: str, service: str) -> str:
        """A service's URL with the prefix it serves under (the proxy forwards it unchanged)."""
        return f"{base.rstrip('/')}{self.base_url}services/{service}"


def read_site(get_config: GetConfig) -> Site:
    custom: Mapping[str, Any] = get_config("custom.analoglab", None) or {}
    services: Mapping[str, Any] = custom.get("services") or {}
    if not services.get("queue"):
        raise ValueError("custom.analoglab.services.queue (the queue's URL) is required")
    base = str(get_config("hub.baseUrl", "/") or "/")
    return Site(
        labs=tuple(custom.get("labs") or ()),
        queue_url=str(services["queue"]),
        mlflow_url=services.get("mlflow") or None,
        demo_url=services.get("demo") or None,
        dask_gateway_url=services.get("daskGateway") or None,
        base_url=base if base.endswith("/") else base + "/",
        cull_timeout=int(get_config("cull.timeout", 3600) or 3600),
        kernel_cull_timeout=int(custom.get("kernelCullTimeout") or 1800),
    )


def plan_of(site: Site) -> Plan:
    """The one-machine :class:`Plan` the shared builders read (ports and paths unused here)."""
    return Plan(
        layout=Layout(Path("/srv/analoglab")),
        ports=Ports(public=0, hub=0, proxy_api=0, queue=0, mlflow=0, gate=0),
        bin_dir=Path("/usr/local/bin"),
        proxy_command="",
        labs=site.labs,
        mlflow_gate=["gate"] if site.mlflow_url else None,
        demo=site.demo_url is not None,
        cull_timeout=site.cull_timeout,
        kernel_cull_timeout=site.kernel_cull_timeout,
    )


def _token(environ: Mapping[str, str], name: str) -> str:
    token = environ.get(name, "")
    if not token:
        raise ValueError(
            f"{name} is not set: hub.extraEnv must pass it from the hub chart's Secret"
        )
    return token


def services(site: Site, environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """Our external services, as ``JupyterHub.services`` entries."""
    base = site.base_url
    result: list[dict[str, Any]] = [
        {
            "name": QUEUE_SERVICE,
            "url": site.queue_url,
            "api_token": _token(environ, TOKEN_ENV[QUEUE_SERVICE]),
            "oauth_client_id": f"service-{QUEUE_SERVICE}",
            "oauth_redirect_uri": f"{base}services/{QUEUE_SERVICE}/oauth_callback",
            "oauth_client_allowed_scopes": sorted(custom_scopes(site.labs)),
            "oauth_no_confirm": True,
            "display": True,
            "info": {"description": "The gated queue: jobs and their review pages."},
        },
        {"name": CLI_SERVICE, "api_token": _token(environ, TOKEN_ENV[CLI_SERVICE])},
    ]
    if site.mlflow_url:
        result.append(
            {
                "name": MLFLOW_SERVICE,
                "url": site.mlflow_url,
                "api_token": _token(environ, TOKEN_ENV[MLFLOW_SERVICE]),
                "oauth_client_id": f"service-{MLFLOW_SERVICE}",
                "oauth_redirect_uri": f"{base}services/{MLFLOW_SERVICE}/oauth_callback",
                "oauth_no_confirm": True,
                "display": True,
                "info": {"description": "MLflow: runs, transfer reports, analog cards."},
            }
        )
    if site.demo_url:
        result.append(
            {
                "name": DEMO_SERVICE,
                "url": site.demo_url,
                "display": True,
                "info": {"description": "The public demo: talk to the analogs, steer them."},
            }
        )
    if site.dask_gateway_url:
        result.append(
            {
                "name": DASK_GATEWAY_SERVICE,
                "url": site.dask_gateway_url,
                "api_token": _token(environ, TOKEN_ENV[DASK_GATEWAY_SERVICE]),
                "display": False,
            }
        )
    for lab in site.labs:
        result.append(
            {"name": agent_service(lab), "api_token": _token(environ, agent_token_env(lab))}
        )
    return result


def load_roles(site: Site) -> list[dict[str, Any]]:
    """The one-machine roles, less the culler's (the chart runs its own culler with its own
    role), plus each lab's agent and, with Dask Gateway, what the gateway may ask the hub."""
    result = [r for r in roles(plan_of(site)) if r["name"] != CULLER_SERVICE]
    for lab in site.labs:
        result.append(
            {
                "name": f"analoglab-agent-{lab}",
                "description": f"The agent of {lab}.",
                "scopes": [f"{SCOPE}agent:{lab}", access(QUEUE_SERVICE)],
                "services": [agent_service(lab)],
            }
        )
    if site.dask_gateway_url:
        result.append(
            {
                "name": "analoglab-dask-gateway",
                "description": "Dask Gateway checks the tokens of notebooks.",
                "scopes": ["read:users:name", "read:users:groups"],
                "services": [DASK_GATEWAY_SERVICE],
            }
        )
    return result


def server_token(spawner: Any) -> str:
    """The notebook server's own hub token (MLflow's client sends it to the gate)."""
    return str(spawner.api_token)


def notebook_environment(site: Site) -> dict[str, Any]:
    """What a user's server (and its kernels) sees; a callable value is called per spawn."""
    plan = plan_of(site)
    env: dict[str, Any] = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANALOGLAB_MODEL_STORE": MODEL_STORE,
        "ANALOGLAB_CATALOG_DIR": CATALOG_DIR,
        "ANALOGLAB_QUEUE_URL": site.service_url(site.queue_url, QUEUE_SERVICE),
        "DASK_DISTRIBUTED__DASHBOARD__LINK": "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status",
        "JUPYTERHUB_ACTIVITY_INTERVAL": str(activity_interval(plan)),
        "ANALOGLAB_BUSY_CHECK_SECONDS": str(max(5, activity_interval(plan) // 2)),
    }
    if site.mlflow_url:
        mlflow = site.service_url(site.mlflow_url, MLFLOW_SERVICE)
        env["ANALOGLAB_MLFLOW_TRACKING_URI"] = mlflow
        env["MLFLOW_TRACKING_URI"] = mlflow
        env["MLFLOW_TRACKING_TOKEN"] = server_token
    return env


def notebook_args(site: Site) -> list[str]:
    """The server's own kernel culler (idle kernels go, busy ones stay) and the activity
    extension (a running cell is activity)."""
    return [
        *kernel_culling_args(plan_of(site)),
        f"--ServerApp.jpserver_extensions={ACTIVITY_EXTENSION}=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]


def build(get_config: GetConfig, environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Our settings as ``{section: {setting: value}}`` (lists to be appended to the chart's)."""
    site = read_site(get_config)
    plan = plan_of(site)
    groups = (RESEARCHERS, ADMINS, *(reviewers_group(lab) for lab in site.labs))
    return {
        "JupyterHub": {
            "custom_scopes": custom_scopes(site.labs),
            "load_groups": {g: {"users": []} for g in groups},
            "services": services(site, environ),
            "load_roles": load_roles(site),
        },
        "KubeSpawner": {
            "environment": notebook_environment(site),
            "args": notebook_args(site),
            "server_token_scopes": server_token_scopes(plan),
        },
    }


def _current(section: Any, name: str, default: Any) -> Any:
    return section.get(name, default)


def configure(c: Any, get_config: GetConfig, environ: Mapping[str, str]) -> None:
    """Apply :func:`build` to the hub's config object ``c``: lists are appended to what the
    chart set (its culler service and role stay), dicts merged, and the chart's profile list
    (``singleuser.profileList``) replaced by its group-restricted callable."""
    settings = build(get_config, environ)
    hub, spawner = c.JupyterHub, c.KubeSpawner
    ours = settings["JupyterHub"]
    hub.services = [*_current(hub, "services", []), *ours["services"]]
    hub.load_roles = [*_current(hub, "load_roles", []), *ours["load_roles"]]
    hub.custom_scopes = {**_current(hub, "custom_scopes", {}), **ours["custom_scopes"]}
    hub.load_groups = {**ours["load_groups"], **_current(hub, "load_groups", {})}
    kube = settings["KubeSpawner"]
    spawner.environment = {**_current(spawner, "environment", {}), **kube["environment"]}
    spawner.args = [*_current(spawner, "args", []), *kube["args"]]
    spawner.server_token_scopes = kube["server_token_scopes"]
    profiles = _current(spawner, "profile_list", None)
    if profiles and not callable(profiles):
        spawner.profile_list = restrict_profiles(profiles)
