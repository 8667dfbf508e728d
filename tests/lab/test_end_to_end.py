"""The whole loop with real processes on loopback: the queue service (``analoglab queue serve``,
uvicorn), the lab agent (``analoglab lab agent``, its own process with a worker child) and an
MLflow tracking server; the researcher calls :func:`analoglab.transfer_check` and a reviewer
approves through the API.

Then the same with the agent killed (-9) mid-run: the job is claimed again after its lease
expires, by a new agent, and completes exactly once. Notebooks 03 and 06 (a steering vector
found on the analog carried to the frontier through the lab's residual map, the build's) run
against the same services.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from analoglab.config import Settings
from analoglab.experiments.transfer import TransferReport
from analoglab.loop import transfer_check
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.db import make_engine, make_sessionmaker
from analoglab.queue.models import AuditEntry
from analoglab.tracking.server import ServerOptions, server_command, wait_until_healthy

from ..conftest import free_port

pytestmark = pytest.mark.slow

PEOPLE = {"ada": ["researcher"], "rev": ["reviewer:tiny-lab"], "bot": ["agent:tiny-lab"]}
STEER = {
    "method": "steering",
    "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 16},
    "evaluate": {"kind": "task_set", "name": "neutral", "n": 16},
    "target": " good",
    "foil": " bad",
    "layers": {"depths": [0.0, 0.5, 1.0]},
    "scales": [-2, 0, 2],
}


@dataclass
class Platform:
    queue_url: str
    mlflow_url: str
    db_url: str
    settings: Settings  # the researcher's: tiny catalog, the MLflow server
    folder: Path
    agents: list[subprocess.Popen[bytes]]

    def client(self, who: str) -> QueueClient:
        return QueueClient(self.queue_url, f"tok-{who}")

    def start_agent(self) -> subprocess.Popen[bytes]:
        log = (self.folder / f"agent-{len(self.agents)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "analoglab",
                "lab",
                "agent",
                "--config",
                str(self.folder / "lab.toml"),
                "--hub",
                self.queue_url,
                "--token-file",
                str(self.folder / "agent.token"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env(),
        )
        self.agents.append(proc)
        return proc


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALOGLAB_")}
    return env | {"OMP_NUM_THREADS": "1"} | extra


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} did not answer at {url}")


@pytest.fixture(scope="module")
def platform(tiny_build: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tiny: Settings = tiny_build[0]
    folder = tmp_path_factory.mktemp("e2e")
    tokens = "".join(
        f'[tokens.{hash_token(f"tok-{n}")}]\nname = "{n}"\nroles = {r!r}\n'.replace("'", '"')
        for n, r in PEOPLE.items()
    )
    (folder / "tokens.toml").write_text(tokens)
    (folder / "agent.token").write_text("tok-bot\n")
    (folder / "agent.token").chmod(0o600)
    weights = tiny.lab_sites_path / "tiny-lab" / "models" / "tiny-frontier"
    key = tiny.lab_sites_path / "tiny-lab" / "signing.key"  # the key the catalog vouches for
    maps = tiny.lab_sites_path / "tiny-lab" / "maps"  # fitted by the build, read here
    (folder / "lab.toml").write_text(
        f'lab = "tiny-lab"\nsigning_key = "{key}"\nmaps = "{maps}"\n'
        f'[models."tiny-frontier"]\npath = "{weights}"\n'
        '[executor]\nkind = "local"\nthreads = 1\n'
        "[agent]\nlease_seconds = 6\nheartbeat_seconds = 1\nwait_seconds = 1\n"
        # the demo lab's per-item outputs may be public: its results carry their bootstrap,
        # so transfer checks get paired intervals (a real lab decides; off by default)
        "[release]\nrelease_bootstrap = true\n"
    )
    db_url = f"sqlite:///{folder / 'queue.db'}"
    procs: list[subprocess.Popen[bytes]] = []
    qport, mport = free_port(), free_port()
    queue_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "analoglab",
            "queue",
            "serve",
            "--tokens",
            str(folder / "tokens.toml"),
            "--database-url",
            db_url,
            "--port",
            str(qport),
        ],
        stdout=(folder / "queue.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=_env(ANALOGLAB_HOME=str(tiny.home)),
    )
    procs.append(queue_proc)
    mlflow_cmd = server_command(
        tiny,
        ServerOptions(
            port=mport,
            backend_store_uri=f"sqlite:///{folder / 'mlflow.db'}",
            artifacts_destination=str(folder / "mlartifacts"),
        ),
    )
    mlflow_proc = subprocess.Popen(
        mlflow_cmd,
        stdout=(folder / "mlflow.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    procs.append(mlflow_proc)
    queue_url, mlflow_url = f"http://127.0.0.1:{qport}", f"http://127.0.0.1:{mport}"
    plat = Platform(
        queue_url,
        mlflow_url,
        db_url,
        Settings(home=tiny.home, mlflow_tracking_uri=mlflow_url, queue_url=queue_url),
        folder,
        [],
    )
    try:
        _wait_http(f"{queue_url}/health", queue_proc, "the queue service", 90)
        wait_until_healthy(mlflow_url, timeout=90)
        yield plat
    finally:
        for proc in procs + plat.agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs + plat.agents:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def approve_when_submitted(plat: Platform, count: int, found: list[int]) -> threading.Thread:
    """A reviewer who approves the next ``count`` jobs as they reach the lab's queue."""

    def work() -> None:
        with plat.client("rev") as rev:
            deadline = time.monotonic() + 120
            while len(found) < count and time.monotonic() < deadline:
                for job in rev.lab_queue("tiny-lab", state="awaiting_review")["jobs"]:
                    rev.review(job["id"], "approve", "fine by the lab")
                    found.append(job["id"])
                time.sleep(0.2)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def audit_actions(db_url: str, job_id: int) -> list[tuple[str, str]]:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            rows = s.execute(
                select(AuditEntry.action, AuditEntry.actor)
                .where(AuditEntry.job_id == job_id)
                .order_by(AuditEntry.seq)
            ).all()
        return [(a, b) for a, b in rows]
    finally:
        engine.dispose()


def check(plat: Platform, spec: dict[str, Any], lines: list[str]) -> TransferReport:
    return transfer_check(
        spec,
        analog="tiny-analog-s",
        frontier="tiny-frontier",
        token="tok-ada",
        settings=plat.settings,
        poll=0.3,
        timeout=180,
        show=lines.append,
    )


def test_submit_vet_approve_claim_run_release_report(platform: Platform) -> None:
    import mlflow

    platform.start_agent()
    approved: list[int] = []
    reviewer = approve_when_submitted(platform, 1, approved)
    lines: list[str] = []
    report = check(platform, STEER, lines)
    reviewer.join(5)
    (job_id,) = approved
    with platform.client("ada") as ada:
        job = ada.get(job_id)
        frontier_result = ada.result(job_id)
    assert job["state"] == "released" and job["analog_result_ref"].startswith("mlflow-run:")
    assert frontier_result["model"]["name"] == "tiny-frontier"
    assert report.spec_hash == job["spec_hash"] == frontier_result["spec_hash"]
    assert any(f"job {job_id}: released" in line for line in lines)
    # MLflow: a parent with the report, a child per model, the job on the frontier child.
    client = mlflow.MlflowClient(tracking_uri=platform.mlflow_url)
    (exp,) = [e for e in client.search_experiments() if e.name == "analoglab"]
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("analoglab.kind") == "transfer"]
    children = {
        r.data.tags["analoglab.kind"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"analog", "frontier"}
    assert children["frontier"].data.tags["analoglab.job_id"] == str(job_id)
    assert children["frontier"].data.tags["analoglab.model"] == "tiny-frontier"
    assert parent.data.metrics["transfer.score"] == pytest.approx(report.score)
    assert parent.data.tags["analoglab.verdict"] == report.verdict
    actions = [a for a, _ in audit_actions(platform.db_url, job_id)]
    assert actions.count("claim") == 1 and actions.count("result") == 1
    # Restartable: the same call again returns the logged report, with no new job.
    again = check(platform, STEER, [])
    assert again == report
    with platform.client("ada") as ada:
        assert len(ada.list()["jobs"]) == 1


def test_an_agent_killed_mid_run_and_the_job_completes_once(platform: Platform) -> None:
    import psutil

    for agent in platform.agents:  # start from no agent at all
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
    # The first agent's worker is frozen (SIGSTOP) once it has loaded the frontier and before
    # any claim: the job it is handed cannot finish, so the agent dies holding a job whose
    # result exists nowhere (not even in its outbox), however fast the run would be.
    log = platform.folder / f"agent-{len(platform.agents)}.log"  # rich wraps its lines
    first = platform.start_agent()
    deadline = time.monotonic() + 90
    while "(loaded in" not in " ".join(log.read_text().split() if log.exists() else []):
        assert first.poll() is None and time.monotonic() < deadline, "no frontier loaded"
        time.sleep(0.1)
    (worker,) = psutil.Process(first.pid).children()
    worker.suspend()
    spec = STEER | {"seed": 7}
    approved: list[int] = []
    reviewer = approve_when_submitted(platform, 1, approved)
    box: dict[str, Any] = {}
    lines: list[str] = []
    loop = threading.Thread(target=lambda: box.update(report=check(platform, spec, lines)))
    loop.start()
    reviewer.join(60)
    (job_id,) = approved
    with platform.client("ada") as ada:
        deadline = time.monotonic() + 60
        while ada.get(job_id)["state"] != "running":
            assert time.monotonic() < deadline, "the agent never claimed the job"
            time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # the agent alone, mid-run
    first.wait(10)
    killed_at = time.monotonic()
    worker.resume()
    worker.wait(10)  # its worker notices and exits: nobody else runs this job's old lease
    platform.start_agent()
    loop.join(180)
    assert "report" in box, lines
    with platform.client("ada") as ada:
        job = ada.get(job_id)
    assert job["state"] == "released"
    assert time.monotonic() - killed_at >= 5  # it waited for the 6 s lease to expire
    actions = audit_actions(platform.db_url, job_id)
    claims = [a for a in actions if a[0] == "claim"]
    assert len(claims) == 2  # claimed, lost with the agent, claimed again
    assert [a for a, _ in actions].count("result") == 1  # completed exactly once
    assert ("lease_expired", "lease-sweeper") in actions


def test_the_command_line_resumes_a_finished_check(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from analoglab.cli import app

    spec_file = tmp_path / "steer.json"
    spec_file.write_text(json.dumps(STEER))
    monkeypatch.setenv("ANALOGLAB_HOME", str(platform.settings.home))
    monkeypatch.setenv("ANALOGLAB_MLFLOW_TRACKING_URI", platform.mlflow_url)
    with platform.client("ada") as ada:
        jobs_before = len(ada.list()["jobs"])
    args = [
        "transfer",
        "--via-queue",
        "--spec",
        str(spec_file),
        "--analog",
        "tiny-analog-s",
        "--frontier",
        "tiny-frontier",
        "--url",
        platform.queue_url,
        "--token",
        "tok-ada",
    ]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["report"]
    logged = check(platform, STEER, [])
    assert report["score"] == pytest.approx(logged.score)
    with platform.client("ada") as ada:
        assert len(ada.list()["jobs"]) == jobs_before  # resumed, nothing submitted
    res = CliRunner().invoke(app, args[:-2])  # no token: the queue is never reached
    assert res.exit_code == 0 and "already checked" in res.output


def test_the_transfer_notebook_runs_against_the_platform(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = Path(__file__).parents[2] / "shared-notebooks" / "03-checking-transfer.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # stored clean
    if not any(a.poll() is None for a in platform.agents):
        platform.start_agent()
    with platform.client("ada") as ada:
        before = {j["id"] for j in ada.list()["jobs"]}
    # The kernel inherits this environment, as a hub notebook inherits the hub's (the
    # notebook's env contract: its second cell).
    for key, value in {
        "ANALOGLAB_HOME": str(platform.settings.home),
        "ANALOGLAB_QUEUE_URL": platform.queue_url,
        "MLFLOW_TRACKING_URI": platform.mlflow_url,
        "JUPYTERHUB_API_TOKEN": "tok-ada",
        "ANALOG": "tiny-analog-s",
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    approved: list[int] = []
    reviewer = approve_when_submitted(platform, 1, approved)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    reviewer.join(5)
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "tiny-analog-s → tiny-frontier" in text
    assert f"queue:  {platform.queue_url}" in text and f"MLflow: {platform.mlflow_url}" in text
    assert "verdict:" in text and "same report:" in text
    assert "95% interval [" in text
    with platform.client("ada") as ada:
        new = [j for j in ada.list()["jobs"] if j["id"] not in before]
    assert [j["id"] for j in new] == approved and new[0]["state"] == "released"
    assert f"queue job: {approved[0]}" in text


def test_the_carrying_notebook_runs_a_mapped_job_through_the_queue(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = Path(__file__).parents[2] / "shared-notebooks" / "06-carrying-a-finding.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # stored clean
    if not any(a.poll() is None for a in platform.agents):
        platform.start_agent()
    with platform.client("ada") as ada:
        before = {j["id"] for j in ada.list()["jobs"]}
    for key, value in {
        "ANALOGLAB_HOME": str(platform.settings.home),
        "ANALOGLAB_QUEUE_URL": platform.queue_url,
        "MLFLOW_TRACKING_URI": platform.mlflow_url,
        "JUPYTERHUB_API_TOKEN": "tok-ada",
        "ANALOG": "tiny-analog-s",
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    approved: list[int] = []
    reviewer = approve_when_submitted(platform, 1, approved)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    reviewer.join(5)
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "tiny-analog-s → tiny-frontier" in text
    assert "effect on tiny-analog-s:" in text and "95% interval [" in text
    assert "mlflow:runs/" in text and "/artifacts/steering_vector.json" in text
    assert "steering_vector of tiny-analog-s: 24 values" in text
    assert "verdict:" in text and "same report:" in text
    assert "map_r2" in text and "ratio_to_native" in text
    with platform.client("ada") as ada:
        new = [j for j in ada.list()["jobs"] if j["id"] not in before]
    assert [j["id"] for j in new] == approved and new[0]["state"] == "released"
    assert new[0]["spec"]["method"] == "mapped_steering"
    assert new[0]["spec"]["artifact"]["source"].startswith("mlflow:runs/")
