"""``analoglab up``: the platform's side effects, from an empty data folder to Ctrl-C.

:func:`up` takes the data folder's lock (a second ``up`` says where the first runs and exits
1), builds the demo models if the preset is missing, writes what must survive restarts (the
service tokens, the review pages' secret, the admin's credentials file, all mode 0600 in the
0700 folder ``<home>/hub``), writes ``jupyterhub_config.py`` from :mod:`.config`, and starts
JupyterHub, which starts the proxy and the managed services. Once the hub, the proxy and the
queue answer it writes ``hub/platform.json`` and prints one summary.

Stopping (SIGINT, SIGTERM, SIGHUP, or the hub dying): JupyterHub gets SIGTERM and stops its
services, the user servers and the proxy; whatever is left after a few seconds (anything
carrying this run's ``ANALOGLAB_PLATFORM_ID``, or still a descendant: ``up`` is the
child subreaper of its tree) gets SIGTERM, then SIGKILL, so that within 10 s nothing of the
platform is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from analoglab.config import Settings
from analoglab.errors import AnalogLabError
from analoglab.files import atomic_write
from analoglab.hub.config import (
    CLI_SERVICE,
    DEMO_SERVICE,
    MLFLOW_SERVICE,
    QUEUE_SERVICE,
    AgentSite,
    Mode,
    Plan,
    Ports,
    build_config,
    is_loopback,
    lab_overrides,
    render,
)
from analoglab.hub.layout import Layout
from analoglab.hub.status import read_state
from analoglab.tracking.server import is_healthy

STOP_SECONDS = 10.0  # everything is gone this long after the signal
HUB_GRACE = 6.0  # of which JupyterHub gets this much to stop its own processes
REPO = Path(__file__).resolve().parents[3]


class PlatformError(AnalogLabError):
    """The platform cannot start (port taken, hub failing, no proxy, ...)."""


class AlreadyRunning(PlatformError):
    """Another ``analoglab up`` runs on this data folder."""


@dataclass(frozen=True)
class UpOptions:
    """What ``analoglab up`` was asked for (its command-line options)."""

    ip: str = "127.0.0.1"
    port: int = 8000
    dev: bool = False
    single_os_user: bool = False  # even as root, every server runs as the platform's user
    preset: str | None = None
    build: bool = True
    admin: str = "admin"
    mem_limit: str | None = None
    cpu_limit: float | None = None
    cull_timeout: int = 3600
    cull_every: int = 300
    kernel_cull_timeout: int = 1800
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    notebooks: Path | None = None
    ready_timeout: float = 120.0
    demo: bool = True  # the public demo at /services/demo/, where Gradio is installed


Say = Callable[[str], None]


# -- preparing the data folder -------------------------------------------------------------------


def proxy_command() -> str:
    """configurable-http-proxy: ``CONFIGURABLE_HTTP_PROXY``, else the one ``make`` installs."""
    explicit = os.environ.get("CONFIGURABLE_HTTP_PROXY")
    path = (
        Path(explicit)
        if explicit
        else REPO / ".venv/node/node_modules/.bin/configurable-http-proxy"
    )
    if not path.is_file():
        raise PlatformError(
            f"configurable-http-proxy not found at {path}: JupyterHub needs it. `make up` "
            "installs it (npm install --prefix .venv/node configurable-http-proxy), or set "
            "CONFIGURABLE_HTTP_PROXY to its path"
        )
    return str(path)


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in ``path`` (mode 0600), made on the first run."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = make()
        atomic_write(path, (value + "\n").encode(), perms=0o600)
    return value


def prepare(settings: Settings, layout: Layout) -> None:
    """Create the folders; keep the hub's state and anything frontier-side private."""
    settings.ensure_folders()
    for folder in (layout.hub, layout.secrets, layout.logs):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    # Users' servers read the public model store and the catalog; never the lab sites
    # (frontier weights), the foundry's work (checkpoints) or the services' databases.
    for private in (settings.lab_sites_path, settings.foundry_path, layout.data / "mlflow"):
        private.mkdir(parents=True, exist_ok=True)
        private.chmod(0o700)
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        if (layout.data / name).exists():
            (layout.data / name).chmod(0o600)
    layout.lab_settings.mkdir(parents=True, exist_ok=True)
    atomic_write(
        layout.lab_settings / "overrides.json",
        json.dumps(lab_overrides(), indent=2).encode(),
        perms=0o644,
    )
    layout.data.chmod(0o755)
    for public in (settings.models_path, settings.catalog_path, layout.lab_settings):
        for root, _dirs, files in os.walk(public):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)


def preset_built(settings: Settings, preset: str) -> bool:
    from analoglab.foundry.presets import get_preset
    from analoglab.models.catalog import Catalog

    p = get_preset(preset)
    catalog = Catalog.load(settings)
    frontiers = {f.id for f in catalog.frontiers()}
    return p.frontier_name in frontiers and (settings.lab_sites_path / p.lab / "lab.toml").is_file()


def ensure_models(settings: Settings, preset: str, say: Say) -> None:
    """Build the preset's models unless they are there (the first run: minutes)."""
    if preset_built(settings, preset):
        return
    from rich.console import Console

    from analoglab.foundry.build import build
    from analoglab.foundry.presets import get_preset
    from analoglab.progress import RichReporter

    say(f"first run: building the {preset!r} demo models (later runs start in seconds)")
    reporter = RichReporter(Console(stderr=True))
    try:
        build(get_preset(preset), settings, reporter=reporter)
    finally:
        reporter.close()


def lab_sites(settings: Settings, layout: Layout) -> list[AgentSite]:
    """The lab sites on this machine, each with the token its agent service uses."""
    sites = []
    root = settings.lab_sites_path
    for config in sorted(root.glob("*/lab.toml")) if root.is_dir() else []:
        try:
            lab = str(tomllib.loads(config.read_text())["lab"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            continue
        token_file = layout.token_file(f"agent-{lab}")
        token = secret_file(token_file, lambda: secrets.token_hex(32))
        sites.append(AgentSite(lab, config, token, token_file))
    return sites


def catalog_labs(settings: Settings) -> tuple[str, ...]:
    from analoglab.models.catalog import Catalog

    return tuple(sorted(lab.id for lab in Catalog.load(settings).labs))


def check_port(ip: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((ip, port))
        except OSError as exc:
            raise PlatformError(
                f"cannot listen on {ip}:{port} ({exc.strerror}): is something else there? "
                "Pass another --port"
            ) from None


def blocked_for_others(*paths: Path) -> Path | None:
    """The first folder (or file) on the way to ``paths`` that other OS users cannot pass
    (no ``o+x``); None when they can reach and run them all."""
    import stat

    for path in paths:
        real = path.resolve()
        for step in [*reversed(real.parents), real]:
            try:
                mode = step.stat().st_mode
            except OSError:
                return step
            if not mode & stat.S_IXOTH:
                return step
    return None


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on now, none in
    ``avoid`` (the public port: chosen, not yet bound). Each socket stays bound until all are
    chosen, so the OS cannot offer a port twice, and a port in ``avoid`` it offers is skipped
    (at most once each). Two services given one port would put whichever binds first behind
    the other's name: the hub answering as MLflow."""
    taken = set(avoid)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in taken:
                taken.add(port)
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def mlflow_gate_command(bin_dir: Path, upstream: str) -> list[str] | None:
    """The MLflow gate's command line (``analoglab tracking gate``) where this install has
    it; None: MLflow stays on loopback, out of the proxy, never exposed unauthenticated."""
    import inspect

    try:
        from analoglab.tracking.commands import tracking_app
    except ImportError:
        return None
    for command in tracking_app.registered_commands:
        callback = command.callback
        name = command.name or (callback.__name__.replace("_", "-") if callback else "")
        if callback is not None and name in ("gate", "tracking-gate"):
            cmd = [str(bin_dir / "analoglab"), "tracking", "gate"]
            if "upstream" in inspect.signature(callback).parameters:
                cmd += ["--upstream", upstream]
            return cmd
    return None


def demo_installed() -> bool:
    """Whether this install has the public demo's Gradio (the ``demo`` extra)."""
    import importlib.util

    return importlib.util.find_spec("gradio") is not None


# -- the credentials file --------------------------------------------------------------------


def admin_credentials(layout: Layout, admin: str, dev: bool) -> dict[str, str]:
    """The admin's credentials (and in dev mode the shared password): read from the
    credentials file, made and written (0600) on the first run."""
    values: dict[str, str] = {}
    if layout.credentials.is_file():
        for line in layout.credentials.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                values[key.strip()] = value.strip()
    changed = values.get("user") != admin
    values["user"] = admin
    if not values.get("password"):
        values["password"] = secrets.token_urlsafe(12)
        changed = True
    if dev:
        if len(values.get("dev-admin-password", "")) < 32:
            values["dev-admin-password"] = secrets.token_urlsafe(32)
            changed = True
        if not values.get("dev-shared-password"):
            values["dev-shared-password"] = secrets.token_urlsafe(9)
            changed = True
    if changed:
        text = "# Analog Lab: the platform's admin (keep this file private)\n" + "".join(
            f"{k}: {v}\n" for k, v in values.items()
        )
        atomic_write(layout.credentials, text.encode(), perms=0o600)
    return values


# -- the running platform -------------------------------------------------------------------


def _set_subreaper() -> None:
    """Orphans of the platform's processes become ``up``'s children, not init's."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def marked_processes(platform_id: str) -> list[psutil.Process]:
    """Every process carrying ``ANALOGLAB_PLATFORM_ID=<platform_id>`` (those we may read)."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get("ANALOGLAB_PLATFORM_ID") == platform_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def leftovers(platform_id: str) -> list[psutil.Process]:
    """What of the platform still runs: marked processes and ``up``'s descendants."""
    procs = {p.pid: p for p in marked_processes(platform_id)}
    try:
        for child in psutil.Process().children(recursive=True):
            procs.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass
    alive = []
    for p in procs.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            continue
    return alive


def sweep(platform_id: str, deadline: float) -> list[int]:
    """SIGTERM, then SIGKILL, whatever of the platform is left; the pids that needed it."""
    left = leftovers(platform_id)
    pids = [p.pid for p in left]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(left, timeout=max(0.1, min(1.5, deadline - time.monotonic())))
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=1.0)
    # reap our own zombies
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    return pids


def _children(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=False))
    except psutil.Error:
        return []


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


class Platform:
    """One run of the platform: the hub process and what it started."""

    def __init__(self, settings: Settings, options: UpOptions, say: Say) -> None:
        self.settings = settings
        self.options = options
        self.say = say
        self.layout = Layout.of(settings)
        self.platform_id = secrets.token_hex(8)
        self.hub: subprocess.Popen[bytes] | None = None
        self.lock_fd: int | None = None
        self.stop_requested = threading.Event()
        self.plan: Plan | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    # locking

    def acquire_lock(self) -> None:
        self.layout.hub.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            state = read_state(self.layout) or {}
            where = state.get("url", "this data folder")
            raise AlreadyRunning(
                f"the platform already runs (pid {state.get('pid', '?')}) at {where}; "
                "`analoglab status` shows it, Ctrl-C in its terminal stops it"
            ) from None
        self.lock_fd = fd

    def release_lock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # the plan

    def make_plan(self) -> Plan:
        o, layout = self.options, self.layout
        as_root = os.geteuid() == 0
        mode: Mode = "per-user" if as_root and not o.single_os_user else "single-user"
        if mode == "per-user":
            blocked = blocked_for_others(Path(sys.executable), Path(sys.prefix))
            store = blocked_for_others(self.settings.models_path)
            if blocked is not None or store is not None:
                what = "run this Python" if blocked is not None else "read the model store"
                self.say(
                    f"warning: other OS users cannot {what} ({blocked or store} is closed to "
                    "them), so every server runs as root: single-OS-user mode. For one OS user "
                    "each, use a Python and a data folder outside folders like /root"
                )
                mode = "single-user"
        creds = admin_credentials(layout, o.admin, o.dev)
        check_port(o.ip, o.port)
        ports = Ports(o.port, *free_ports(6, avoid={o.port}))
        bin_dir = Path(sys.executable).parent
        notebooks = o.notebooks or (REPO / "shared-notebooks")
        return Plan(
            layout=layout,
            ports=ports,
            bin_dir=bin_dir,
            proxy_command=proxy_command(),
            ip=o.ip,
            mode=mode,
            as_root=as_root,
            auth="dev" if o.dev else "native",
            admin=o.admin,
            dev_password=creds.get("dev-shared-password") if o.dev else None,
            dev_admin_password=creds.get("dev-admin-password") if o.dev else None,
            labs=catalog_labs(self.settings),
            agents=tuple(lab_sites(self.settings, layout)),
            cli_token=secret_file(layout.token_file(CLI_SERVICE), lambda: secrets.token_hex(32)),
            queue_page_secret=secret_file(
                layout.secrets / "queue-page-secret", lambda: secrets.token_urlsafe(32)
            ),
            mlflow_gate=mlflow_gate_command(bin_dir, f"http://127.0.0.1:{ports.mlflow}"),
            mem_limit=o.mem_limit,
            cpu_limit=o.cpu_limit,
            cull_timeout=o.cull_timeout,
            cull_every=o.cull_every,
            kernel_cull_timeout=o.kernel_cull_timeout,
            platform_id=self.platform_id,
            notebooks=notebooks if notebooks.is_dir() else None,
            ssl_cert=o.ssl_cert,
            ssl_key=o.ssl_key,
            demo=o.demo and demo_installed(),
        )

    # starting

    def start_hub(self, plan: Plan) -> None:
        layout = self.layout
        atomic_write(layout.config_file, render(build_config(plan)).encode(), perms=0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env.update(
            {
                "ANALOGLAB_HOME": str(layout.data),
                "ANALOGLAB_PLATFORM_ID": self.platform_id,
                "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if plan.notebooks:
            env["ANALOGLAB_SHARED_NOTEBOOKS"] = str(plan.notebooks)
        self._log = layout.hub_log.open("ab")
        self._log_start = self._log.tell()
        self._log.write(f"\n=== analoglab up {datetime.now(UTC).isoformat()} ===\n".encode())
        self._log.flush()
        old_umask = os.umask(0o077)  # what the services write (databases, tokens) is private
        try:
            self.hub = subprocess.Popen(
                [str(plan.bin_dir / "jupyterhub"), "-f", str(layout.config_file)],
                cwd=layout.hub,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches up, which stops the hub in order
            )
        finally:
            os.umask(old_umask)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.layout.hub_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stop_requested.is_set():
                return False
            if self.hub is not None and self.hub.poll() is not None:
                raise PlatformError(
                    f"JupyterHub exited ({self.hub.returncode}) while waiting for {what}; "
                    f"the end of {self.layout.hub_log}:\n{self.log_tail()}"
                )
            if check():
                return True
            time.sleep(0.2)
        return False

    def wait_ready(self, plan: Plan) -> dict[str, bool]:
        timeout = self.options.ready_timeout
        hub_ok = self.wait_until(
            "the hub",
            lambda: (
                self.hub_says_running()
                and _answers(plan.hub_api_url + "/")
                and _answers(plan.internal_url + "/hub/api/")
            ),
            timeout,
        )
        if not hub_ok:
            if self.stop_requested.is_set():
                return {}
            raise PlatformError(
                f"JupyterHub did not answer within {timeout:.0f} s; the end of "
                f"{self.layout.hub_log}:\n{self.log_tail()}"
            )
        if plan.auth == "native":
            self.ensure_admin_password(plan)
        queue_ok = self.wait_until(
            "the queue", lambda: _answers(plan.queue_url + "/health"), timeout
        )
        return {"hub": hub_ok, "queue": queue_ok, "mlflow": self.mlflow_ready(plan)}

    def mlflow_ready(self, plan: Plan) -> bool:
        return is_healthy(plan.mlflow_server_url)  # MLflow's own check: its 200 "OK"

    def watch_mlflow(self, plan: Plan, services: dict[str, bool]) -> None:
        """MLflow takes 10-15 s to start: say when it answers, without holding up ``up``."""

        def watch() -> None:
            deadline = time.monotonic() + self.options.ready_timeout
            while not self.stop_requested.is_set() and time.monotonic() < deadline:
                if self.mlflow_ready(plan):
                    services["mlflow"] = True
                    self.write_state(plan, True, services)
                    self.say(f"  MLflow is ready ({plan.mlflow_url})")
                    return
                time.sleep(0.5)

        if not services.get("mlflow"):
            threading.Thread(target=watch, daemon=True, name="mlflow-ready").start()

    def hub_says_running(self) -> bool:
        """JupyterHub logs this once it has started every service (and handles SIGTERM)."""
        try:
            with self.layout.hub_log.open("rb") as log:
                log.seek(self._log_start)
                return b"JupyterHub is now running" in log.read()
        except OSError:
            return False

    def ensure_admin_password(self, plan: Plan) -> None:
        """The admin signs in with the password of the credentials file."""
        from analoglab.hub.users import set_password

        creds = admin_credentials(self.layout, plan.admin, False)
        deadline = time.monotonic() + 30
        while True:  # the authenticator creates its table as the hub starts
            try:
                set_password(self.layout, plan.admin, creds["password"])
                return
            except AnalogLabError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def write_state(self, plan: Plan, ready: bool, services: dict[str, bool]) -> None:
        state: dict[str, Any] = {
            "ready": ready,
            "pid": os.getpid(),
            "hub_pid": self.hub.pid if self.hub else None,
            "platform_id": self.platform_id,
            "url": plan.public_url,
            "hub_api_url": plan.hub_api_url,
            "mode": plan.mode,
            "auth": plan.auth,
            "admin": plan.admin,
            "labs": list(plan.labs),
            "ports": {
                "public": plan.ports.public,
                "hub": plan.ports.hub,
                "proxy_api": plan.ports.proxy_api,
                "queue": plan.ports.queue,
                "mlflow": plan.ports.mlflow,
                "mlflow_gate": plan.ports.gate if plan.mlflow_gate else None,
            },
            "services": {
                "queue": {
                    "url": f"{plan.public_url}/services/{QUEUE_SERVICE}/",
                    "ok": services.get("queue"),
                },
                "mlflow": {
                    "url": f"{plan.public_url}/services/{MLFLOW_SERVICE}/"
                    if plan.mlflow_gate
                    else plan.mlflow_server_url,
                    "ok": services.get("mlflow"),
                    "gated": bool(plan.mlflow_gate),
                },
                "demo": {"url": f"{plan.public_url}/services/{DEMO_SERVICE}/"}
                if plan.demo
                else None,
                "agents": [f"agent-{s.lab}" for s in plan.agents],
                "idle_culler": {"timeout": plan.cull_timeout, "every": plan.cull_every},
            },
            "credentials": str(self.layout.credentials),
            "log": str(self.layout.hub_log),
            "started": datetime.now(UTC).isoformat(),
        }
        atomic_write(self.layout.state, json.dumps(state, indent=2).encode(), perms=0o600)

    # stopping

    def request_stop(self, signum: int, _frame: object) -> None:
        self.stop_requested.set()

    def stop(self) -> list[int]:
        """Stop the hub and everything it started (see the module docstring)."""
        self.stop_requested.set()
        deadline = time.monotonic() + STOP_SECONDS - 0.5
        hub = self.hub
        if hub is not None and hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
            # The hub stops its services one after the other (each may take seconds): stop
            # them all at once; it then finds them gone. The proxy it stops itself.
            for child in _children(hub.pid):
                with contextlib.suppress(psutil.Error):
                    if not any("configurable-http-proxy" in part for part in child.cmdline()):
                        child.terminate()
            try:
                hub.wait(max(0.1, min(HUB_GRACE, deadline - time.monotonic() - 2)))
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait(2)
        swept = sweep(self.platform_id, deadline)
        if self._log is not None:
            self._log.close()
            self._log = None
        with contextlib.suppress(FileNotFoundError):
            self.layout.state.unlink()
        return swept


def summary(plan: Plan, services: dict[str, bool], layout: Layout) -> list[str]:
    url = plan.public_url
    lines = [f"Analog Lab is running at {url}"]
    if plan.auth == "native":
        lines.append(
            f"  sign in as {plan.admin!r}: the password is in {layout.credentials} (mode 0600)"
        )
    else:
        lines.append(
            f"  DEV MODE, not for real users: any name signs in with the shared password "
            f"{plan.dev_password!r}; {plan.admin!r} with the admin password in {layout.credentials}"
        )
    if plan.mode == "per-user":
        lines.append("  servers: each user's server runs as their own OS user")
    else:
        lines.append(
            f"  servers: SINGLE-OS-USER mode: every user's server runs as {_whoami()!r}, so "
            "users can read each other's files (run as root for one OS user each)"
        )
    queue = "ok" if services.get("queue") else "not answering yet"
    lines.append(
        f"  queue: {url}/services/{QUEUE_SERVICE}/ ({queue}); review pages at "
        f"{url}/services/{QUEUE_SERVICE}/review"
    )
    ml = "ok" if services.get("mlflow") else "starting"
    if plan.mlflow_gate:
        lines.append(f"  MLflow: {url}/services/{MLFLOW_SERVICE}/ ({ml}), signed in with the hub")
    else:
        lines.append(f"  MLflow: {plan.mlflow_server_url} on loopback only ({ml})")
    if plan.demo:
        lines.append(f"  public demo: {url}/services/{DEMO_SERVICE}/ (open to all, no sign-in)")
    if plan.agents:
        lines.append("  lab agents: " + ", ".join(s.lab for s in plan.agents))
    lines.append(
        f"  idle servers stop after {plan.cull_timeout // 60} min; idle kernels after "
        f"{plan.kernel_cull_timeout // 60} min (a kernel running a cell is never idle)"
    )
    if plan.mem_limit or plan.cpu_limit:
        lines.append(
            f"  per-user limits (advisory, sizes Dask): memory {plan.mem_limit or '-'}, "
            f"CPUs {plan.cpu_limit or '-'}"
        )
    lines.append("  add users: analoglab users add NAME [--reviewer LAB] [--admin]")
    lines.append(f"  status: analoglab status; log: {layout.hub_log}")
    lines.append("  stop: Ctrl-C")
    return lines


def _whoami() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def up(settings: Settings, options: UpOptions, say: Say) -> int:
    """Run the platform in the foreground until a signal; the exit status."""
    platform = Platform(settings, options, say)
    platform.acquire_lock()
    previous: dict[int, Any] = {}
    status = 0
    try:
        if not is_loopback(options.ip) and not options.ssl_cert:
            say(
                f"warning: listening on {options.ip} without TLS: passwords and tokens cross "
                "the network in clear; put a TLS reverse proxy in front (docs/platform.md) or "
                "pass --ssl-cert/--ssl-key"
            )
        layout = platform.layout
        preset = options.preset or settings.default_preset
        if options.build:
            ensure_models(settings, preset, say)  # Ctrl-C here: KeyboardInterrupt, resumable
        prepare(settings, layout)
        # From here on a signal stops the platform in order (see Platform.stop).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, platform.request_stop)
        _set_subreaper()
        plan = platform.make_plan()
        platform.plan = plan
        platform.start_hub(plan)
        services = platform.wait_ready(plan)
        if platform.stop_requested.is_set():
            return 130
        platform.write_state(plan, True, services)
        for line in summary(plan, services, layout):
            say(line)
        platform.watch_mlflow(plan, services)
        while not platform.stop_requested.wait(0.5):
            if platform.hub is not None and platform.hub.poll() is not None:
                say(f"JupyterHub exited ({platform.hub.returncode}); see {layout.hub_log}")
                status = 1
                break
        else:
            status = 0
        return status
    finally:
        started = time.monotonic()
        if platform.hub is not None:
            say("stopping the platform ...")
        swept = platform.stop()
        if platform.hub is not None:
            extra = f" ({len(swept)} processes needed a push)" if swept else ""
            say(f"stopped in {time.monotonic() - started:.1f} s{extra}")
        platform.release_lock()
        for number, handler in previous.items():
            signal.signal(number, handler)
