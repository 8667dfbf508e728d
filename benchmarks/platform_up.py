"""The platform on one machine: warm ``analoglab up`` to ready, a server spawn, idle memory.

    python benchmarks/platform_up.py --home DATA_FOLDER [--runs 3] [--json out.json]

Copies the models, catalog and lab sites of ``--home`` (a data folder where the demo or tiny
preset is built: ``analoglab models build``) into a temporary data folder, then:

- **cold start**: the first ``analoglab up`` there (creates the hub's database, the secrets);
- **warm start** (``--runs`` times): ``up`` again, timed from the command to its summary (hub,
  proxy and queue answering) and to "MLflow is ready" (MLflow starts in parallel, the slow part);
- **spawn**: a user added with ``analoglab users add``, its server started through the hub's
  API, timed until JupyterLab's page answers 200;
- **idle memory**: the resident memory of ``up``'s whole process tree (psutil), without and
  with that one idle server, and per process kind;
- **stop**: SIGINT to gone.

Single-OS-user mode (``--single-os-user``) so that it runs anywhere without OS accounts.
"""

from __future__ import annotations

import sys

# This file is named platform.py: keep its folder off the path, or `import platform` (by
# this script and by the libraries it imports) would find it instead of the standard library.
if sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
    del sys.path[0]

import argparse
import json
import os
import platform as host
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(output: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while text not in output.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - started > timeout:
            raise SystemExit(f"no {text!r} in time:\n{output.read_text()[-3000:]}")
        time.sleep(0.05)
    return time.monotonic() - started


def tree_memory(pid: int) -> tuple[float, dict[str, float]]:
    """Resident MiB of ``pid`` and its descendants, in all and per kind of process."""
    kinds: dict[str, float] = defaultdict(float)
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss / 2**20
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        total += rss
        for kind in (
            "jupyterhub-singleuser",
            "configurable-http-proxy",
            "queue serve",
            "tracking gate",
            "mlflow",
            "lab agent",
            "idle_culler",
            "jupyterhub",
            "analoglab up",
        ):
            if kind in cmd:
                kinds[kind] += rss
                break
        else:
            kinds["other"] += rss
    return total, dict(kinds)


class Up:
    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data, self.env = data, env
        self.port = free_port()
        self.output = data.parent / f"up-{time.monotonic_ns()}.log"
        started = time.monotonic()
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "analoglab",
                    "up",
                    "--no-build",
                    "--single-os-user",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.output, "Analog Lab is running", self.proc, 300)
        self.ready = time.monotonic() - started
        summary = self.output.read_text()
        if "(ok), signed in" not in summary and "loopback only (ok)" not in summary:
            wait_for(self.output, "MLflow is ready", self.proc, 300)
        self.mlflow = time.monotonic() - started

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "analoglab", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def stop(self) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        return time.monotonic() - started


def spawn(up: Up) -> float:
    json.loads(up.cli("users", "add", "bench", "--json"))
    state = json.loads((up.data / "hub/platform.json").read_text())
    token = (up.data / "hub/secrets/analoglab-cli.token").read_text().strip()
    headers = {"Authorization": f"token {token}"}
    started = time.monotonic()
    resp = httpx.post(f"{state['hub_api_url']}/users/bench/server", headers=headers, timeout=60)
    resp.raise_for_status()
    user_token = httpx.post(
        f"{state['hub_api_url']}/users/bench/tokens", headers=headers, json={}, timeout=30
    ).json()["token"]
    while True:
        lab = httpx.get(
            f"http://127.0.0.1:{up.port}/user/bench/lab",
            headers={"Authorization": f"token {user_token}"},
            timeout=30,
        )
        if lab.status_code == 200 and "JupyterLab" in lab.text:
            return time.monotonic() - started
        if time.monotonic() - started > 300:
            raise SystemExit(f"JupyterLab did not answer: {lab.status_code}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a data folder with models")
    parser.add_argument("--note", default="", help="what was built there (for the record)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="analoglab-bench-platform-"))
    data = work / "home"
    for part in ("models", "catalog", "lab-sites"):
        if (args.home / part).is_dir():
            shutil.copytree(args.home / part, data / part, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "ANALOGLAB_"))}
    env["ANALOGLAB_HOME"] = str(data)
    results: dict[str, Any] = {
        "machine": f"{host.node()} {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, load {os.getloadavg()[0]:.1f}",
        "data": args.note or str(args.home),
        "labs": sorted(p.parent.name for p in (data / "lab-sites").glob("*/lab.toml")),
    }
    try:
        cold = Up(data, env)
        results["cold_ready_s"] = round(cold.ready, 2)
        results["cold_stop_s"] = round(cold.stop(), 2)
        warm = []
        for _ in range(args.runs):
            up = Up(data, env)
            warm.append((up.ready, up.mlflow))
            if len(warm) < args.runs:
                up.stop()
        results["warm_ready_s"] = [round(r, 2) for r, _ in warm]
        results["warm_mlflow_ready_s"] = [round(m, 2) for _, m in warm]
        time.sleep(5)  # let the services settle
        idle, kinds = tree_memory(up.proc.pid)
        results["idle_mib"] = round(idle)
        results["idle_mib_by_kind"] = {k: round(v) for k, v in sorted(kinds.items())}
        results["spawn_to_lab_s"] = round(spawn(up), 2)
        time.sleep(5)
        with_server, kinds = tree_memory(up.proc.pid)
        results["idle_mib_with_one_server"] = round(with_server)
        results["server_mib"] = round(kinds.get("jupyterhub-singleuser", 0))
        results["stop_with_server_s"] = round(up.stop(), 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
