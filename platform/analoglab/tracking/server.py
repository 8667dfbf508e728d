"""The MLflow tracking server the one-machine platform runs (``analoglab tracking server``).

``mlflow server`` with a SQLite backend in the data folder (the same database as the embedded
store, ``<home>/mlflow/mlflow.db``) and served artifacts under ``<home>/mlflow/artifacts``:
clients upload and download artifacts through the server, so they need no access to its
disk. Clients point at it with ``ANALOGLAB_MLFLOW_TRACKING_URI=http://<host>:<port>``.
:func:`wait_until_healthy` polls its ``/health`` (it answers after 10–15 s).

Behind the hub (``analoglab tracking serve``), MLflow has no authentication of its own, so it
listens on a private loopback port and :func:`serve_behind_hub` runs, in one process that the
hub manages as its ``mlflow`` service, the gate (:mod:`.gate`) in front of it and an
:class:`MlflowSupervisor` for it: started at once (the gate answers 503 until MLflow is
ready), restarted when it exits on its own (three times within five minutes at most, then the
service stops and says why), stopped — its whole process group — when the service gets
SIGTERM or SIGINT, or when the service itself dies (Linux: the parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from analoglab.config import Settings
from analoglab.tracking.errors import TrackingError
from analoglab.tracking.store import artifacts_path, default_tracking_uri, is_server

if TYPE_CHECKING:
    from analoglab.tracking.gate import GateConfig

log = logging.getLogger(__name__)

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


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is answered as the error it is here


_PROBE = urllib.request.build_opener(_NoRedirects)


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether MLflow itself answers ``<url>/health``: a 200 whose body is its ``OK``, with no
    redirect followed. Anything else on that port (a hub, a proxy: a 302 to a page that
    answers 200) is not MLflow, however healthy."""
    try:
        with _PROBE.open(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return bool(resp.status == 200 and resp.read(16).strip() == b"OK")
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(url: str, timeout: float = 60.0, interval: float = 0.25) -> None:
    """Return once MLflow answers ``<url>/health`` (:func:`is_healthy`); raise
    :class:`TrackingError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        time.sleep(interval)
    raise TrackingError(f"the MLflow server at {url} did not answer /health in {timeout:.0f} s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the process that started it dies (PR_SET_PDEATHSIG),
    so a killed service leaves no MLflow behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class MlflowSupervisor:
    """One ``mlflow server`` child in a process group of its own: :meth:`start`,
    :meth:`watch` (restart it when it exits on its own, at most ``max_restarts`` times within
    ``window`` seconds), :meth:`stop` (SIGTERM to the group, SIGKILL after ``grace`` s)."""

    def __init__(
        self,
        command: list[str],
        url: str,
        *,
        max_restarts: int = 3,
        window: float = 300.0,
        grace: float = 10.0,
    ) -> None:
        self.command = command
        self.url = url
        self.max_restarts = max_restarts
        self.window = window
        self.grace = grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.failure: str | None = None
        self.ready = False
        self._restarts: deque[float] = deque()

    def start(self) -> None:
        self.ready = False
        self.proc = subprocess.Popen(
            self.command, start_new_session=True, preexec_fn=_die_with_parent
        )
        log.info("MLflow starting at %s (pid %d)", self.url, self.proc.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker that outlived its parent

    async def watch(self, on_failure: Any, interval: float = 0.5) -> None:
        """Until cancelled: note when MLflow is ready; restart it when it exits; after too
        many exits set :attr:`failure` and call ``on_failure()``."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            proc = self.proc
            if proc is None:
                return
            code = proc.poll()
            if code is None:
                if not self.ready and await asyncio.to_thread(is_healthy, self.url, 1.0):
                    self.ready = True
                    log.info("MLflow ready at %s (%.1f s)", self.url, time.monotonic() - started)
                continue
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > self.window:
                self._restarts.popleft()
            self.stop()  # whatever of its group is left
            if len(self._restarts) >= self.max_restarts:
                self.failure = (
                    f"MLflow exited {len(self._restarts) + 1} times within {self.window:.0f} s "
                    f"(last with status {code}); its output is above"
                )
                log.error("%s: stopping the service", self.failure)
                on_failure()
                return
            self._restarts.append(now)
            log.warning("MLflow exited with status %s: restarting it", code)
            started = now
            self.start()


def serve_behind_hub(
    settings: Settings,
    gate: GateConfig,
    *,
    host: str,
    port: int,
    mlflow: ServerOptions | None = None,
) -> None:
    """Run the gate on ``host:port`` in front of MLflow at ``gate.upstream``, and when
    ``mlflow`` is given, that MLflow server too, supervised (see the module docstring).
    Returns when stopped by SIGTERM/SIGINT; raises :class:`TrackingError` when MLflow kept
    exiting."""
    import uvicorn

    from analoglab.tracking.gate import create_gate

    app = create_gate(gate)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    )
    supervisor = None
    if mlflow is not None:
        artifacts_path(settings).mkdir(parents=True, exist_ok=True)
        supervisor = MlflowSupervisor(server_command(settings, mlflow), gate.upstream)

    def stop_serving() -> None:
        server.should_exit = True

    async def run() -> None:
        watcher = None
        if supervisor is not None:
            supervisor.start()
            watcher = asyncio.create_task(supervisor.watch(stop_serving))
        try:
            await server.serve()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    # uvicorn re-raises the signal that stopped it once it is done: caught here so that
    # MLflow is stopped (below) before this process ends.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(run())
    finally:
        if supervisor is not None:
            supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if supervisor is not None and supervisor.failure:
        raise TrackingError(supervisor.failure)
