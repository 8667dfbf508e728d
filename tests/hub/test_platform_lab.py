"""The demo lab on the platform: ``analoglab up`` over the tiny preset's models, and a job
that a researcher submits, the lab's reviewer approves and the lab's agent (a hub service
holding the tiny frontier) runs for real; the result comes back through the queue.

Uses the session's ``tiny_build`` (copied: the platform writes into its data folder).
"""

from __future__ import annotations

import json
import time

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult
from analoglab.queue.client import QueueClient

from ..platformtools import copy_of, platform_in, stop

pytestmark = pytest.mark.slow


def test_the_demo_labs_agent_runs_a_reviewed_job(
    tiny_build: tuple[Settings, BuildResult],
) -> None:
    with platform_in(copy_of(tiny_build[0].home)) as running:
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
            assert job["state"] == "awaiting_review", job  # the demo lab reviews each job
            job = rita.review(job["id"], "approve", "a small evaluation")
            assert job["state"] == "approved", job
            deadline = time.monotonic() + 240
            while job["state"] in ("approved", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(1)
                job = ada.get(job["id"])
            # and releases results without a second look (FrontierPolicy's default)
            assert job["state"] == "released", job
            result = ada.result(job["id"])
            assert "tiny-frontier" in json.dumps(result["model"]) and result["metrics"], result
        assert stop(running) < 10
