"""The demo lab on the platform: ``analoglab up`` over the tiny preset's models, and a job
that a researcher submits, the lab's reviewer approves and the lab's agent (a hub service
holding the tiny frontier) runs for real; the result comes back through the queue.

Uses the session's ``tiny_build`` (copied: the platform writes into its data folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult
from analoglab.queue.client import QueueClient

from ..conftest import free_port
from .test_platform import AS_ROOT, proxy_path, start, stop

pytestmark = pytest.mark.slow


def test_the_demo_labs_agent_runs_a_reviewed_job(
    tiny_build: tuple[Settings, BuildResult],
) -> None:
    data = Path(tempfile.mkdtemp(prefix="analoglab-hubtest-")) / "home"
    data.parent.chmod(0o755)
    shutil.copytree(tiny_build[0].home, data, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "ANALOGLAB_"))}
    env.update({"ANALOGLAB_HOME": str(data), "CONFIGURABLE_HTTP_PROXY": proxy_path()})
    running = start(data, env, free_port())
    try:
        status = json.loads(running.run("status", "--json").stdout)
        assert status["labs"] == ["tiny-lab"]
        assert status["services"]["agents"] == ["agent-tiny-lab"]
        for name, extra in (("ada", []), ("rita", ["--reviewer", "tiny-lab"])):
            done = running.run("users", "add", name, *extra, "--json")
            assert done.returncode == 0, done.stderr
            running.users[name] = json.loads(done.stdout)["password"]
        queue = running.url + "/services/queue"
        spec = {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 8}}
        with (
            QueueClient(queue, running.user_token("ada")) as ada,
            QueueClient(queue, running.user_token("rita")) as rita,
        ):
            job = ada.submit(spec, "tiny-frontier")
            if job["state"] == "awaiting_review":
                job = rita.review(job["id"], "approve", "a small evaluation")
            deadline = time.monotonic() + 240
            while job["state"] in ("approved", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(1)
                job = ada.get(job["id"])
            if job["state"] == "awaiting_release":
                job = rita.release(job["id"], "release", "aggregate numbers only")
            assert job["state"] == "released", job
            result = ada.result(job["id"])
            assert "tiny-frontier" in json.dumps(result["model"]) and result["metrics"], result
    finally:
        if running.proc.poll() is None:
            assert stop(running) < 10
        for name in running.users:  # the OS accounts `users add` made
            if AS_ROOT:
                subprocess.run(["userdel", name], capture_output=True, check=False)
        shutil.rmtree(data.parent, ignore_errors=True)
