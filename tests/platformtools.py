"""The platform for real in tests: ``analoglab up`` as a subprocess on free loopback ports.

Shared by the platform's tests (``tests/hub/``) and the shared notebooks' (``tests/notebooks/``):
:func:`platform_in` runs one over a fresh data folder (under ``/tmp``, mode 0755, so that
users' OS accounts can reach its model store) and cleans up after it. As root the platform runs
on a Python every OS user may run (:func:`tests.hubtools.shared_python`), so each user's server
runs as its own OS user. Needs configurable-http-proxy (``make pytest`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from analoglab.config import Settings

from .conftest import free_port
from .hubtools import chp_command, shared_python
from .queue.conftest import write_catalog

REPO = Path(__file__).resolve().parents[1]
READY = "Analog Lab is running at"
AS_ROOT = os.geteuid() == 0


def per_user() -> bool:
    """One OS user per hub user: needs root and a Python that other users may run."""
    return AS_ROOT and shared_python() is not None


def python() -> str:
    """The platform's Python: one every OS user may run, where there is one."""
    return str((shared_python() if AS_ROOT else None) or sys.executable)


def proxy_path() -> str:
    """configurable-http-proxy for ``up`` (the one lookup all hub tests share)."""
    return chp_command()


def cli(*args: str) -> list[str]:
    return [python(), "-m", "analoglab", *args]


@dataclass
class Running:
    data: Path
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    output: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> password

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.data / "hub/platform.json").read_text())
        return state

    def hub_api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = (self.data / "hub/secrets/analoglab-cli.token").read_text().strip()
        return httpx.request(
            method,
            self.state()["hub_api_url"] + path,
            headers={"Authorization": f"token {token}"},
            timeout=30,
            **kwargs,
        )

    def user_token(self, name: str) -> str:
        resp = self.hub_api("POST", f"/users/{name}/tokens", json={"note": "test"})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])


def start(data: Path, env: dict[str, str], port: int, *args: str, timeout: float = 240) -> Running:
    """``analoglab up`` (with ``args``; the culler looks every 60 s unless they say) until it
    says it is ready."""
    output = data.parent / f"up-{time.monotonic_ns()}.log"
    args = args if "--cull-every" in args else ("--cull-every", "60", *args)
    with output.open("wb") as out:
        proc = subprocess.Popen(
            cli("up", "--port", str(port), "--no-build", *args),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while READY not in output.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            hub_log = data / "hub/logs/jupyterhub.log"
            tail = hub_log.read_text()[-3000:] if hub_log.is_file() else ""
            pytest.fail(f"up did not get ready:\n{output.read_text()[-3000:]}\n{tail}")
        time.sleep(0.3)
    return Running(data, f"http://127.0.0.1:{port}", env, proc, output)


def stop(running: Running) -> float:
    started = time.monotonic()
    running.proc.send_signal(signal.SIGINT)
    try:
        running.proc.wait(30)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait(10)
    return time.monotonic() - started


def platform_processes(platform_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get("ANALOGLAB_PLATFORM_ID") == platform_id:
                found.append(proc)
    return found


def lab_site(data: Path, lab: str, frontier: str) -> None:
    """A lab site whose frontier has no weights: its agent claims jobs and fails them."""
    site = data / "lab-sites" / lab
    site.mkdir(parents=True)
    (site / "lab.toml").write_text(
        f'lab = "{lab}"\n\n[models."{frontier}"]\npath = "models/{frontier}"\n\n'
        '[executor]\nkind = "local"\ntimeout_seconds = 60\n'
    )


@contextlib.contextmanager
def platform_in(fill: Callable[[Path], None], *args: str) -> Iterator[Running]:
    """``analoglab up`` (with ``args``) over a fresh data folder under ``/tmp`` (mode 0755, so
    users' OS accounts reach its model store) that ``fill`` prepares; afterwards the platform
    stopped, the OS accounts ``users add`` made deleted, the folder removed."""
    data = Path(tempfile.mkdtemp(prefix="analoglab-hubtest-")) / "home"
    data.parent.chmod(0o755)
    fill(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "ANALOGLAB_"))}
    env.update(
        {
            "ANALOGLAB_HOME": str(data),
            "CONFIGURABLE_HTTP_PROXY": proxy_path(),
            "HF_HUB_OFFLINE": "1",
        }
    )
    running = start(data, env, free_port(), *args)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            stop(running)
        for name in running.users:
            if AS_ROOT:
                subprocess.run(["userdel", name], capture_output=True, check=False)
        shutil.rmtree(data.parent, ignore_errors=True)


def copy_of(home: Path) -> Callable[[Path], None]:
    """A ``fill`` for :func:`platform_in`: a copy of the data folder ``home`` (a build's)."""
    return lambda data: shutil.copytree(home, data, symlinks=True)


def two_labs(data: Path) -> None:
    """A ``fill``: a catalog of two labs (the queue tests' ``lab-a``, reviewed by humans, and
    ``lab-b``, auto-approved) and a lab site for ``lab-a`` without weights."""
    write_catalog(Settings(home=data))
    lab_site(data, "lab-a", "frontier-a")


def start_server(running: Running, name: str, token: str) -> None:
    """Start ``name``'s server through the hub's API and wait until the hub says it is ready."""
    api = running.url + "/hub/api"
    headers = {"Authorization": f"token {token}"}
    resp = httpx.post(f"{api}/users/{name}/server", headers=headers, timeout=60)
    assert resp.status_code in (201, 202), resp.text
    deadline = time.monotonic() + 180
    while True:
        model = httpx.get(f"{api}/users/{name}", headers=headers, timeout=30).json()
        if (model.get("servers") or {}).get("", {}).get("ready"):
            return
        assert time.monotonic() < deadline, f"{name}'s server did not start: {model}"
        time.sleep(1)


def login(url: str, name: str, password: str) -> httpx.Client:
    """A browser-like session signed in through the login form (with its _xsrf field).

    It signs in to the hub's home page (``?next=/hub/home``): without a ``next`` JupyterHub sends
    a freshly signed-in user to ``/hub/spawn``, which starts their server, and a test that
    starts the server through the API afterwards would race that spawn (400 "already running"
    once it has finished).
    """
    client = httpx.Client(base_url=url, follow_redirects=True, timeout=30)
    form = client.get("/hub/login")
    assert form.status_code == 200, form.text
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
    assert xsrf, form.text[:2000]
    resp = client.post(
        "/hub/login",
        params={"next": "/hub/home"},
        data={"username": name, "password": password, "_xsrf": xsrf.group(1)},
    )
    assert resp.status_code == 200, resp.text[:2000]
    return client
