"""The hub's idle culler on the platform, both ways: an idle server is culled, a server whose
kernel is running a cell is not.

``analoglab up --cull-timeout 60 --cull-every 10``; two researchers' servers start. One sits
idle. In the other, a kernel starts a cell that sleeps for minutes without printing, and the
tab that sent it goes away (its websocket closed), as when a researcher leaves a long run
overnight. Nothing else touches either server. The idle one is culled once a minute has passed;
the busy one, whose last request and kernel message are as old, is still running well after
that: its activity extension reports the running cell to the hub (``analoglab.hub.activity``).
The kernel-side half (the server's own kernel culler spares busy kernels) is
``test_kernel_culling.py``.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import httpx
import pytest

from ..hubtools import Kernel
from ..platformtools import Running, platform_in, start_server

pytestmark = pytest.mark.slow

TIMEOUT, EVERY = 60, 10


def empty(data: Path) -> None:
    data.mkdir(parents=True)


def has_server(running: Running, name: str) -> bool:
    model = running.hub_api("GET", f"/users/{name}").json()
    return "" in (model.get("servers") or {})


def test_idle_servers_are_culled_busy_ones_are_not() -> None:
    with platform_in(empty, "--cull-timeout", str(TIMEOUT), "--cull-every", str(EVERY)) as up:
        tag = secrets.token_hex(3)
        idle, busy = f"i{tag}", f"b{tag}"
        for name in (idle, busy):
            done = up.run("users", "add", name, "--json")
            assert done.returncode == 0, done.stderr
            up.users[name] = json.loads(done.stdout)["password"]
        tokens = {name: up.user_token(name) for name in up.users}
        for name in (idle, busy):
            start_server(up, name, tokens[name])
        kernel = Kernel(f"{up.url}/user/{busy}", tokens[busy])
        kernel.execute("import time; time.sleep(600)")
        time.sleep(2)
        kernel.close()  # the tab is gone; the cell runs on
        sent = time.monotonic()

        deadline = sent + TIMEOUT + 6 * EVERY
        while has_server(up, idle):
            assert time.monotonic() < deadline, "the idle server was not culled"
            time.sleep(2)
        culled = time.monotonic()
        assert culled - sent > TIMEOUT - 15  # not before its time
        # the busy server's own requests and messages are as old as the idle one's; two more
        # rounds of the culler, and it runs still, its cell busy
        while time.monotonic() < culled + 3 * EVERY:
            assert has_server(up, busy), "the server with a running cell was culled"
            time.sleep(2)
        kernels = httpx.get(
            f"{up.url}/user/{busy}/api/kernels?no_track_activity=1",
            headers={"Authorization": f"token {tokens[busy]}"},
            timeout=30,
        ).json()
        assert [k["execution_state"] for k in kernels] == ["busy"], kernels
        # it was the culler that stopped the idle one
        log = (up.data / "hub/logs/jupyterhub.log").read_text(errors="replace")
        stops = [line for line in log.splitlines() if f"/users/{idle}/server" in line]
        assert any("DELETE" in line and "idle-culler" in line for line in stops), stops
