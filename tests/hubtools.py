"""A real JupyterHub for tests: the proxy it needs, its common configuration, and a running hub.

Shared by the queue's hub-token tests and the MLflow gate's tests; each adds its own roles,
services and scopes to :func:`base_config`'s lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
