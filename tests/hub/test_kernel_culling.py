"""Idle culling does not kill work: the kernel culler flags the platform gives every server.

A real Jupyter server runs with :func:`analoglab.hub.config.kernel_culling_args` (a short
timeout); of two kernels, one sits idle and one executes a long cell (sent by a second
client, as a notebook tab would). The idle one is culled, the busy one is not. And the server,
which runs the platform's activity extension (:mod:`analoglab.hub.activity`), keeps
reporting activity while the busy kernel runs silently: the hub's culler judges a server by
that activity, so a server with a running cell is never culled (the hub's side:
``test_platform_culling.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from jupyter_client import BlockingKernelClient

from analoglab.hub.activity import INTERVAL_ENV
from analoglab.hub.config import ACTIVITY_EXTENSION, Plan, Ports, kernel_culling_args
from analoglab.hub.layout import Layout

from ..conftest import free_port

pytestmark = pytest.mark.slow


def test_idle_kernels_are_culled_busy_ones_are_not(tmp_path: Path) -> None:
    plan = Plan(Layout(tmp_path), Ports(1, 2, 3, 4, 5, 6), Path(sys.executable).parent, "/chp")
    args = kernel_culling_args(replace(plan, kernel_cull_timeout=6))
    assert "--MappingKernelManager.cull_busy=False" in args
    port, token = free_port(), secrets.token_hex(16)
    runtime = tmp_path / "runtime"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "HOME": str(tmp_path),
        INTERVAL_ENV: "1",
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter-server"),
            f"--port={port}",
            "--ip=127.0.0.1",
            "--no-browser",
            "--allow-root",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            *args,
            f"--ServerApp.jpserver_extensions={ACTIVITY_EXTENSION}=True",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    headers = {"Authorization": f"token {token}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/status", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.3)
        idle = httpx.post(f"{api}/kernels", headers=headers, json={}, timeout=60).json()["id"]
        busy = httpx.post(f"{api}/kernels", headers=headers, json={}, timeout=60).json()["id"]
        client = BlockingKernelClient()
        client.load_connection_info(json.loads((runtime / f"kernel-{busy}.json").read_text()))
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            client.execute("import time; time.sleep(120)")
            deadline = time.monotonic() + 90
            while True:
                listed = httpx.get(  # not itself activity
                    f"{api}/kernels?no_track_activity=1", headers=headers, timeout=10
                )
                kernels = {k["id"]: k for k in listed.json()}
                if idle not in kernels:
                    break
                assert time.monotonic() < deadline, kernels
                time.sleep(1)
            assert busy in kernels and kernels[busy]["execution_state"] == "busy", kernels
            # the busy kernel prints nothing and no request counts, yet the server's activity
            # moves on: the extension reports the running cell
            culled = datetime.now(UTC)
            time.sleep(4)
            status = httpx.get(f"{api}/status", headers=headers, timeout=10).json()
            last = datetime.fromisoformat(status["last_activity"].replace("Z", "+00:00"))
            assert (last - culled).total_seconds() > 2, (status, culled)
        finally:
            client.stop_channels()
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
