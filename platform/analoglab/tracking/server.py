"""The MLflow tracking server the one-machine platform runs (``analoglab tracking server``).

``mlflow server`` with a SQLite backend in the data folder (the same database as the embedded
store, ``<home>/mlflow/mlflow.db``) and served artifacts under ``<home>/mlflow/artifacts``:
clients upload and download artifacts through the server, so they need no access to its
disk. Clients point at it with ``ANALOGLAB_MLFLOW_TRACKING_URI=http://<host>:<port>``.
:func:`wait_until_healthy` polls its ``/health`` (it answers after 10–15 s).
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from analoglab.config import Settings
from analoglab.tracking.errors import TrackingError
from analoglab.tracking.store import artifacts_path, default_tracking_uri, is_server

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


@dataclass(frozen=True)
class ServerOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    extra: list[str] = field(default_factory=list)


def backend_store_uri(settings: Settings, explicit: str | None = None) -> str:
    """The server's database: ``explicit``, else a configured database URI, else the SQLite
    store in the data folder (a configured ``http`` URI names a server, not a database)."""
    if explicit:
        return explicit
    configured = settings.mlflow_tracking_uri
    if configured and not is_server(configured) and not configured.startswith("file:"):
        return configured
    return default_tracking_uri(settings)


def server_command(settings: Settings, options: ServerOptions | None = None) -> list[str]:
    """The ``mlflow server`` command line (run with this Python, so no PATH is needed)."""
    options = options or ServerOptions()
    destination = options.artifacts_destination or str(artifacts_path(settings))
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri(settings, options.backend_store_uri),
        "--artifacts-destination",
        destination,
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--workers",
        str(options.workers),
        *options.extra,
    ]


def server_url(host: str, port: int) -> str:
    """The URL clients use (a wildcard bind address is reached on loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(url: str, timeout: float = 60.0, interval: float = 0.25) -> None:
    """Return once ``<url>/health`` answers 200; raise :class:`TrackingError` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        time.sleep(interval)
    raise TrackingError(f"the MLflow server at {url} did not answer /health in {timeout:.0f} s")
