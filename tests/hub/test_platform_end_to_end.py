"""The platform end to end: a notebook in a researcher's server checks transfer through it.

``analoglab up`` over a copy of the session's ``tiny_build`` (its demo lab ``tiny-lab`` holds
``tiny-frontier``); the admin's CLI adds a researcher and a reviewer of the lab; the
researcher's server starts through the hub. In a kernel of that server (over its websocket,
as a JupyterLab tab runs one), the server's own copy of ``03-checking-transfer`` runs cell by
cell. Meanwhile the reviewer, in headless Chromium signed in to the review pages with the
hub's OAuth, approves the job the notebook submitted (and releases its result when the lab
holds it for release); the lab's agent runs it on the frontier. The notebook's report lands
in MLflow, where the researcher reads it with a hub token. Ctrl-C then stops the platform
with none of its processes left.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult
from analoglab.queue.client import QueueClient

from ..browser import Browser
from ..hubtools import Kernel, is_idle, output_text
from ..platformtools import Running, copy_of, platform_in, platform_processes, start_server, stop

pytestmark = pytest.mark.slow

NOTEBOOK = "shared-notebooks/03-checking-transfer.ipynb"
ANALOG = "tiny-analog-s"


@pytest.fixture
def running(tiny_build: tuple[Settings, BuildResult]) -> Iterator[Running]:
    with platform_in(copy_of(tiny_build[0].home)) as up:
        yield up


def decide(browser: Browser, review: str, job_id: int, button: str, text: str) -> None:
    """On the job's review page, write ``text`` and press ``button`` (approve, release)."""
    browser.open(f"{review}/jobs/{job_id}")
    field = "comment" if button == "approve" else "reason"
    browser.wait_for(f"document.querySelector('button[value={button}]')", 30)
    before = browser.evaluate("performance.timeOrigin")
    browser.evaluate(
        f"document.querySelector('textarea[name={field}]').value = {json.dumps(text)};"
        f"document.querySelector('button[value={button}]').click(); true"
    )
    browser.wait_for(
        f"performance.timeOrigin !== {json.dumps(before)} && document.readyState === 'complete'"
    )


def test_a_notebook_checks_transfer_through_the_platform(running: Running, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    researcher, reviewer = f"r{tag}", f"v{tag}"
    for name, extra in ((researcher, []), (reviewer, ["--reviewer", "tiny-lab"])):
        done = running.run("users", "add", name, *extra, "--json")
        assert done.returncode == 0, done.stderr
        running.users[name] = json.loads(done.stdout)["password"]
    token = running.user_token(researcher)
    start_server(running, researcher, token)
    server = f"{running.url}/user/{researcher}"
    headers = {"Authorization": f"token {token}"}
    stored = httpx.get(f"{server}/api/contents/{NOTEBOOK}", headers=headers, timeout=30)
    assert stored.status_code == 200, stored.text[:500]
    cells = [c for c in stored.json()["content"]["cells"] if c["cell_type"] == "code"]
    codes = [f"import os; os.environ['ANALOG'] = {ANALOG!r}"]  # the researcher's choice
    codes += ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]

    review = running.url + "/services/queue/review"
    kernel = Kernel(server, token)
    decided: dict[int, list[str]] = {}
    text: dict[str, str] = {}
    replies: dict[str, str] = {}
    with (
        Browser(tmp_path / "reviewer", timeout=60) as browser,
        QueueClient(running.url + "/services/queue", token) as ada,
    ):
        browser.open(review)
        browser.wait_for("document.querySelector('#username_input')")
        browser.fill_and_submit(
            {"#username_input": reviewer, "#password_input": running.users[reviewer]}
        )
        browser.wait_for(f"document.body.innerText.includes('signed in as {reviewer}')")
        try:
            ids = [kernel.execute(code) for code in codes]
            text = {i: "" for i in ids}
            deadline = time.monotonic() + 420
            checked = 0.0
            idle: set[str] = set()  # a cell's outputs all come before its idle status
            while len(replies) < len(ids) or len(idle) < len(ids):
                assert time.monotonic() < deadline, f"the notebook did not finish:\n{text}"
                message = kernel.receive()
                if message is not None:
                    parent = message.get("parent_header", {}).get("msg_id")
                    if parent in text:
                        text[parent] += output_text(message)
                        if message.get("header", {}).get("msg_type") == "execute_reply":
                            replies[parent] = message["content"]["status"]
                        if is_idle(message):
                            idle.add(parent)
                        if parent in replies and parent in idle:
                            assert replies[parent] == "ok", text[parent]
                if time.monotonic() - checked > 2:  # the reviewer looks at the queue
                    checked = time.monotonic()
                    for job in ada.list()["jobs"]:
                        steps = decided.setdefault(job["id"], [])
                        if job["state"] == "awaiting_review" and "approve" not in steps:
                            decide(browser, review, job["id"], "approve", "a transfer check")
                            steps.append("approve")
                        elif job["state"] == "awaiting_release" and "release" not in steps:
                            decide(browser, review, job["id"], "release", "aggregate only")
                            steps.append("release")
            browser.open(review + f"/jobs/{next(iter(decided))}")
            browser.wait_for("document.querySelector('.state')?.innerText === 'released'")
            # the page's reviews list the reviewer's approval, with the comment written there
            browser.wait_for(
                "[...document.querySelectorAll('tr')].some(r => r.innerText.includes("
                f"{reviewer!r}) && r.innerText.includes('approve') && "
                "r.innerText.includes('a transfer check'))"
            )
            browser.screenshot(tmp_path / "released-job.png")
        finally:
            kernel.close()
    out = "\n".join(text[i] for i in ids)
    assert f"{ANALOG} → tiny-frontier" in out
    assert f"queue:  {running.url}/services/queue" in out
    assert "verdict:" in out and "same report:" in out
    assert "95% interval [" in out  # the score's, and each part's beside its value
    assert len(decided) == 1 and decided[next(iter(decided))][0] == "approve", decided
    job_id = next(iter(decided))
    assert f"queue job: {job_id}" in out
    with QueueClient(running.url + "/services/queue", token) as ada:
        job = ada.get(job_id)
    assert job["state"] == "released" and job["submitter"] == researcher, job

    # the researcher reads the report in MLflow, through the hub, with a hub token
    mlflow = running.url + "/services/mlflow/api/2.0/mlflow"
    experiment = httpx.get(
        f"{mlflow}/experiments/get-by-name",
        params={"experiment_name": "analoglab"},
        headers=headers,
        timeout=60,
    )
    assert experiment.status_code == 200, experiment.text[:500]
    found = httpx.post(
        f"{mlflow}/runs/search",
        headers=headers,
        json={"experiment_ids": [experiment.json()["experiment"]["experiment_id"]]},
        timeout=60,
    )
    assert found.status_code == 200, found.text[:500]
    reports = [
        run
        for run in found.json().get("runs", [])
        if any(t["key"] == "analoglab.verdict" for t in run["data"].get("tags", []))
    ]
    assert len(reports) == 1, found.text[:2000]
    tags = {t["key"]: t["value"] for t in reports[0]["data"]["tags"]}
    metrics = {m["key"] for m in reports[0]["data"].get("metrics", [])}
    assert f"verdict: {tags['analoglab.verdict']}" in out
    assert "transfer.score" in metrics, metrics

    # the public demo, through the proxy and with no sign-in: the analog answers, and the
    # board shows the check the lab released (a visitor's view of the same result)
    from gradio_client import Client

    page = httpx.get(f"{running.url}/services/demo/", timeout=60, follow_redirects=True)
    assert page.status_code == 200 and "gradio" in page.text.lower(), page.text[:500]
    demo = Client(f"{running.url}/services/demo/", verbose=False)
    said = demo.predict(ANALOG, "the cake was", 8, 0.8, 0.95, 40, 3, api_name="/talk")
    assert isinstance(said, str) and said.strip(), said
    board, note, *_ = demo.predict("all", "all", "all", "all", api_name="/board")
    assert "1 of 1 released transfer checks" in note, note
    row = board["value"]["data"][0]
    assert ANALOG in row and "tiny-frontier" in row and tags["analoglab.verdict"] in row, row

    # Ctrl-C: nothing of the platform is left
    platform_id = running.state()["platform_id"]
    assert stop(running) < 10
    assert running.proc.returncode == 0, running.output.read_text()[-2000:]
    assert platform_processes(platform_id) == []
