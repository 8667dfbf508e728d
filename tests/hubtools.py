"""A real JupyterHub for tests: the proxy it needs, its common configuration, a running hub,
and a Python that every OS user may run.

Shared by the queue's hub-token tests, the MLflow gate's tests and the platform's; each adds
its own roles, services and scopes to :func:`base_config`'s lines.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from analoglab.hub.platform import blocked_for_others

REPO = Path(__file__).resolve().parents[1]


def chp_command() -> str:
    """configurable-http-proxy, which JupyterHub needs (``make pytest`` installs it)."""
    path = Path(
        os.environ.get("CONFIGURABLE_HTTP_PROXY")
        or REPO / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    )
    if not path.is_file():
        pytest.fail(
            f"configurable-http-proxy not found at {path}: JupyterHub needs it. Run "
            "`make pytest` (it runs `npm install --prefix .venv/node configurable-http-proxy`) "
            "or set CONFIGURABLE_HTTP_PROXY to its path",
            pytrace=False,
        )
    return str(path)


def base_config(work: Path, ports: dict[str, int]) -> list[str]:
    """``jupyterhub_config.py`` lines every test hub shares: loopback ports, the proxy, state in
    ``work``, the dummy authenticator, and simple local servers under ``work/home``."""
    singleuser = Path(sys.executable).parent / "jupyterhub-singleuser"
    return [
        "c = get_config()  # noqa",
        'c.JupyterHub.ip = "127.0.0.1"',
        f"c.JupyterHub.port = {ports['public']}",
        'c.JupyterHub.hub_ip = "127.0.0.1"',
        f"c.JupyterHub.hub_port = {ports['hub']}",
        f'c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports["proxy_api"]}"',
        f"c.ConfigurableHTTPProxy.command = [{chp_command()!r}]",
        f'c.JupyterHub.db_url = "sqlite:///{work / "hub.sqlite"}"',
        f'c.JupyterHub.cookie_secret_file = "{work / "cookie_secret"}"',
        'c.JupyterHub.authenticator_class = "dummy"',
        "c.Authenticator.allow_all = True",
        'c.JupyterHub.spawner_class = "simple"',
        f"c.Spawner.cmd = [{str(singleuser)!r}]",
        'c.Spawner.args = ["--allow-root"]',
        f'c.Spawner.home_dir_template = "{work / "home"}/{{username}}"',
    ]


@contextlib.contextmanager
def running_hub(work: Path, config: str) -> Iterator[subprocess.Popen[bytes]]:
    """``jupyterhub`` with ``config`` in ``work``, ready (its services started), until the block
    ends; then SIGTERM, and its proxy stopped should the hub have left it. Log: ``work/hub.log``."""
    (work / "jupyterhub_config.py").write_text(config)
    log = work / "hub.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTERHUB_", "ANALOGLAB_", "MLFLOW_"))
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyterhub"), "-f", "jupyterhub_config.py"],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        # "now running" comes once the services are started and the hub handles SIGTERM
        # (stopped before that, it would leave the proxy and the services behind)
        while b"JupyterHub is now running" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterHub did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proxy_pid = work / "jupyterhub-proxy.pid"
        if proxy_pid.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(proxy_pid.read_text().strip()), signal.SIGTERM)


@functools.cache
def shared_python() -> Path | None:
    """A Python that other OS users may run, with this virtualenv's packages: what an admin
    gives a platform with one OS user per hub user (docs/platform.md). None when there is none.

    This virtualenv's interpreter may sit where only its owner can go (pyenv under ``/root``).
    Then a virtualenv is made, in a folder open to all, from a system Python of the same
    version (``/usr/bin/python3.X``, as Debian installs it) without packages of its own: a
    ``.pth`` file adds this virtualenv's site-packages (open to all), ``share`` and ``etc``
    (JupyterLab's assets and the server extensions' settings) point to this virtualenv's, and
    its console scripts are copied with their first line pointing to the new interpreter. The
    same packages run, so the platform under test is the one built here."""
    if blocked_for_others(Path(sys.executable), Path(sys.prefix)) is None:
        return Path(sys.executable)
    venv = Path(sys.prefix)
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    if blocked_for_others(site, REPO) is not None:
        return None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = next(
        (
            p
            for p in (Path("/usr/bin") / version, Path("/usr/local/bin") / version)
            if p.is_file() and blocked_for_others(p) is None
        ),
        None,
    )
    if base is None:
        return None
    where = Path(tempfile.mkdtemp(prefix="analoglab-python-"))
    where.chmod(0o755)
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    shared = where / "venv"
    made = subprocess.run(
        [str(base), "-m", "venv", "--without-pip", str(shared)], capture_output=True, check=False
    )
    if made.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        return None
    (shared / "lib" / version / "site-packages" / "analoglab-shared.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n"
    )
    for folder in ("share", "etc"):
        if (venv / folder).is_dir():
            (shared / folder).symlink_to(venv / folder)
    interpreter = f"#!{shared / 'bin' / 'python'}\n"
    for script in (venv / "bin").iterdir():
        target = shared / "bin" / script.name
        if target.exists() or target.is_symlink() or not script.is_file():
            continue
        with script.open("rb") as f:
            first = f.readline()
        if first.startswith(f"#!{venv / 'bin'}/python".encode()):
            target.write_bytes(interpreter.encode() + script.read_bytes()[len(first) :])
            target.chmod(0o755)
    return shared / "bin" / "python"


class Kernel:
    """One kernel of a Jupyter server, driven over its websocket (``…/channels``)."""

    def __init__(self, server: str, token: str, path: str | None = None) -> None:
        import websocket

        self.headers = {"Authorization": f"token {token}"}
        body = {"path": path} if path else {}  # the kernel's folder, relative to the server's
        resp = httpx.post(f"{server}/api/kernels", headers=self.headers, json=body, timeout=60)
        assert resp.status_code == 201, resp.text
        self.id = resp.json()["id"]
        self.session = uuid.uuid4().hex
        ws = server.replace("http://", "ws://", 1) + f"/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(
            ws, header=[f"Authorization: token {token}"], timeout=30, suppress_origin=True
        )
        self.ws.settimeout(1.0)

    def execute(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "session": self.session,
            "username": "test",
            "version": "5.3",
            "date": "",
        }
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
        self.ws.send(json.dumps({**message, "channel": "shell"}))
        return msg_id

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None when none came within a second."""
        import websocket

        try:
            message: dict[str, Any] = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        return message

    def close(self) -> None:
        self.ws.close()


def output_text(message: dict[str, Any]) -> str:
    content = message.get("content", {})
    kind = message.get("header", {}).get("msg_type")
    if kind == "stream":
        return str(content.get("text", ""))
    if kind in ("execute_result", "display_data"):
        return str(content.get("data", {}).get("text/plain", "")) + "\n"
    if kind == "error":
        return "\n".join(content.get("traceback", [])) + "\n"
    return ""


def is_idle(message: dict[str, Any]) -> bool:
    """Whether ``message`` is the kernel's iopub ``idle`` status: its request's outputs have
    all been sent before it."""
    return (
        message.get("header", {}).get("msg_type") == "status"
        and message.get("content", {}).get("execution_state") == "idle"
    )


def output_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """A kernel message as the notebook output it becomes (nbformat's shape), if it is one."""
    kind = message.get("header", {}).get("msg_type")
    content = message.get("content", {})
    if kind == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if kind in ("execute_result", "display_data"):
        return {"output_type": kind, "data": content.get("data", {}), "metadata": {}}
    if kind == "error":
        return {"output_type": "error", "traceback": content.get("traceback", [])}
    return None


def run_cells(
    kernel: Kernel, cells: list[Any], timeout: float = 300, after: Any = None, stop: bool = False
) -> bool:
    """Run notebook ``cells`` (code ones) in order in ``kernel``, filling their ``outputs`` as
    Jupyter would; a cell that fails fails the test with its traceback, unless ``stop``: then
    the cells stop there, as "Run All" does, and the answer is False. ``after(kernel, cell)``
    is called after each cell, while the kernel still holds its state.

    A cell is done when both its ``execute_reply`` (shell channel) and the kernel's ``idle``
    status for it (iopub) have come: the server merges the two channels onto one websocket
    with no order between them, so a cell's last printed line can arrive after its reply,
    but never after its ``idle``."""
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        msg_id = kernel.execute(source)
        cell["outputs"] = []
        deadline = time.monotonic() + timeout
        status: str | None = None
        idle = False
        while status is None or not idle:
            assert time.monotonic() < deadline, f"cell did not finish: {source[:200]}"
            message = kernel.receive()
            if message is None or message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            output = output_of(message)
            if output is not None:
                cell["outputs"].append(output)
            if message.get("header", {}).get("msg_type") == "execute_reply":
                status = message["content"]["status"]
            idle = idle or is_idle(message)
        if status != "ok" and stop:
            return False
        assert status == "ok", f"{source[:200]}\n" + "\n".join(
            "\n".join(o.get("traceback", [])) for o in cell["outputs"]
        )
        if after is not None:
            after(kernel, cell)
    return True


def run_cell(server: str, token: str, code: str, timeout: float = 120) -> str:
    """Run ``code`` in a new kernel of the Jupyter server at ``server`` (it must succeed);
    what it printed or displayed as text."""
    kernel = Kernel(server, token)
    try:
        return kernel_text(kernel, code, timeout)
    finally:
        kernel.close()
        httpx.delete(f"{server}/api/kernels/{kernel.id}", headers=kernel.headers, timeout=30)


def kernel_text(kernel: Kernel, code: str, timeout: float = 120) -> str:
    """Run ``code`` in ``kernel`` (it must succeed); what it printed or displayed as text."""
    cell: dict[str, Any] = {"cell_type": "code", "source": code}
    run_cells(kernel, [cell], timeout)
    return "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for o in cell["outputs"]
    )
