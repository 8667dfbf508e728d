"""The Kubernetes executor against an emulated API server on loopback.

kmock's KubernetesEmulator stands in for the API server (it stores what is created, patched
and deleted, and serves reads, lists and deletes); it has no controllers. A fake kubelet (a
thread of this test) plays the cluster: when a Job appears it creates the Job's pod, moves it
to Running, then Succeeded or Failed with the log a worker would have written, updates the
Job's status, serves the pod's log (with ``limitBytes``/``tailLines`` as a kubelet does), and
garbage-collects the pods of a deleted Job. One slow test runs the real worker command line
from the Job's pod spec on the tiny frontier, with the pod's volumes mapped to local folders.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest

from analoglab.lab.config import KubernetesExecutorConfig, LabConfig
from analoglab.lab.executor import Outcome, Task
from analoglab.lab.framing import frame
from analoglab.lab.kubernetes import RUN_LABEL, KubernetesExecutor

NS = "frontier-lab"
RESULT = {"method": "evaluation", "model": {"name": "demo-frontier"}, "metrics": {"acc": 0.9}}


@dataclass
class Script:
    """What the fake kubelet does with the next Job's pod."""

    end: str = "Succeeded"  # Succeeded | Failed | Running (forever) | Pending | Waiting | NoPod
    log: str = ""
    exit_code: int = 0
    reason: str = "Error"  # the container's reason when it fails
    message: str = ""  # the container's termination message
    run_seconds: float = 0.05
    #: Runs the container for real: pod → (exit code, log).
    run: Callable[[dict[str, Any]], tuple[int, str]] | None = None


@dataclass
class Kubelet:
    """Plays the cluster's controllers and kubelet against the emulator, over HTTP."""

    url: str
    script: Script = field(default_factory=Script)
    logs: dict[str, bytes] = field(default_factory=dict)
    log_requests: list[dict[str, str]] = field(default_factory=list)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    running: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/merge-patch+json")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"null")

    def start(self) -> None:
        self._spawn(self._loop)

    def stop(self) -> None:
        """Stop, and wait for every request in flight (before the API server goes)."""
        self._stop.set()
        for t in list(self._threads):
            t.join(10)

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except urllib.error.HTTPError as exc:
                self.errors.append(f"{exc.code} {exc.read()!r}")
            except OSError:
                pass  # the API server is gone (a test stops it)
            time.sleep(0.02)

    def _tick(self) -> None:
        jobs = self.api("GET", f"/apis/batch/v1/namespaces/{NS}/jobs")["items"]
        names = {j["metadata"]["name"] for j in jobs}
        for j in jobs:
            name = j["metadata"]["name"]
            if name not in self.seen:
                self.seen[name] = j
                self._spawn(self._pod_of, j)
        for name in set(self.seen) - names - self.gone:
            self.gone.add(name)
            self._collect_garbage(name)

    def _collect_garbage(self, job: str) -> None:
        """What the garbage collector does after a Job is deleted: delete its pods."""
        pods = self.api("GET", f"/api/v1/namespaces/{NS}/pods")["items"]
        for pod in pods:
            if pod["metadata"]["labels"].get(RUN_LABEL) == job:
                self.api("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")

    def _pod_of(self, job: dict[str, Any]) -> None:
        try:
            self._drive(job)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: the Job or pod was deleted meanwhile
                self.errors.append(f"{exc.code} {exc.read()!r}")
        except OSError as exc:
            if not self._stop.is_set():  # else: the API server was stopped on purpose
                self.errors.append(repr(exc))
        except Exception as exc:
            self.errors.append(repr(exc))

    def _drive(self, job: dict[str, Any]) -> None:
        s = self.script
        name = job["metadata"]["name"]
        jpath = f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status"
        if s.end == "NoPod":
            return
        template = job["spec"]["template"]
        pod_name = f"{name}-x7k2p"
        ppath = f"/api/v1/namespaces/{NS}/pods/{pod_name}"
        labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": NS,
                "labels": labels,
                "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name}],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        self.api("POST", f"/api/v1/namespaces/{NS}/pods", pod)
        self.api("PATCH", jpath, {"status": {"active": 1}})
        if s.end == "Pending":
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
            self.api("PATCH", ppath + "/status", {"status": {"conditions": [condition]}})
            return
        if s.end == "Waiting":  # scheduled, but the container cannot start
            waiting = {"waiting": {"reason": s.reason, "message": s.message}}
            self.api(
                "PATCH", ppath + "/status", {"status": {"containerStatuses": [self._cs(waiting)]}}
            )
            return
        time.sleep(0.02)
        pod["spec"]["nodeName"] = "gpu-node-1"
        self.api("PATCH", ppath, {"spec": {"nodeName": "gpu-node-1"}})
        running = {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
        self.api(
            "PATCH",
            ppath + "/status",
            {"status": {"phase": "Running", "containerStatuses": [self._cs(running)]}},
        )
        self.running.set()
        if s.end == "Running":
            return
        if s.run is not None:
            code, text = s.run(pod)
        else:
            time.sleep(s.run_seconds)
            code, text = s.exit_code, s.log
        self.logs[pod_name] = text.encode()
        ok = code == 0
        terminated = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if ok else s.reason,
                "message": s.message,
            }
        }
        phase = "Succeeded" if ok else "Failed"
        self.api(
            "PATCH",
            ppath + "/status",
            {"status": {"phase": phase, "containerStatuses": [self._cs(terminated)]}},
        )
        kind = "Complete" if ok else "Failed"
        cond = {"type": kind, "status": "True", "reason": "" if ok else "BackoffLimitExceeded"}
        counts = {"succeeded": 1} if ok else {"failed": 1}
        self.api("PATCH", jpath, {"status": {"active": 0, **counts, "conditions": [cond]}})

    @staticmethod
    def _cs(state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "worker",
            "image": "w",
            "imageID": "",
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def serve_log(self, request: Any) -> Any:
        """GET .../pods/NAME/log as a kubelet answers it: tailLines, then limitBytes."""
        params = dict(request.params)
        self.log_requests.append(params)
        if request.name not in self.logs:
            return kmock.KubernetesObjectNotFoundError()
        data = self.logs[request.name]
        if "tailLines" in params:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(params["tailLines"]) :])
        if "limitBytes" in params:
            data = data[: int(params["limitBytes"])]
        return data


class Cluster:
    """The emulated API server (in its own event loop thread) and its fake kubelet."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.kubelet = Kubelet(self.url)
        self.emulator[lambda r: r.method == "GET" and r.subresource == "log"] << (
            self.kubelet.serve_log
        )
        self.kubelet.start()
        self.up = True

    async def _start(self) -> str:
        self.emulator = kmock.KubernetesEmulator()
        await self.emulator.__aenter__()
        self.emulator.resources["v1/pods"] = {}
        self.emulator.resources["batch/v1/jobs"] = {}
        self.server = kmock.Server(self.emulator)
        await self.server.__aenter__()
        return str(self.server.url).rstrip("/")

    def stop_api(self) -> None:
        """The API server goes away (the kubelet stops with it)."""
        if not self.up:
            return
        self.up = False
        self.kubelet.stop()

        async def stop() -> None:
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)

    def close(self) -> None:
        self.stop_api()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def requests(self, method: str, plural: str) -> list[Any]:
        return [
            r
            for r in list(self.emulator)
            if r.method == method and r.resource is not None and r.resource.plural == plural
        ]

    def job_exists(self, name: str) -> bool:
        try:
            self.kubelet.api("GET", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            return False
        return True

    def assert_deleted(self, outcome: Outcome) -> None:
        """The executor deleted the Job, with a propagation policy that takes its pods too."""
        name = outcome.details["job_name"]
        assert outcome.details["job_deleted"] is True, outcome.details
        assert not self.job_exists(name)
        deletes = [r for r in self.requests("DELETE", "jobs") if r.name == name]
        assert deletes, "the executor never deleted the Job"
        assert deletes[0].params.get("propagationPolicy") in ("Background", "Foreground")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and self.pods():
            time.sleep(0.02)
        assert self.pods() == []

    def pods(self) -> list[str]:
        items = self.kubelet.api("GET", f"/api/v1/namespaces/{NS}/pods")["items"]
        return [p["metadata"]["name"] for p in items]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.close()
    assert not c.kubelet.errors, c.kubelet.errors


def config(url: str, **kw: Any) -> KubernetesExecutorConfig:
    base: dict[str, Any] = {
        "namespace": NS,
        "image": "registry.lab.example/analoglab-worker:1",
        "weights_claim": "frontier-weights",
        "host": url,
        "poll_seconds": 0.02,
        "start_timeout_seconds": 5,
        "timeout_seconds": 10,
    }
    return KubernetesExecutorConfig.model_validate({**base, **kw})


def task(job_id: int = 7, **kw: Any) -> Task:
    spec = {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 8}}
    return Task(
        **{
            "job_id": job_id,
            "frontier": "demo-frontier",
            "spec": spec,
            "weights": "demo-frontier",
            **kw,
        }
    )


def run(
    url: str,
    t: Task | None = None,
    cancel: threading.Event | None = None,
    max_result_bytes: int = 100_000,
    **kw: Any,
) -> Outcome:
    ex = KubernetesExecutor(config(url, **kw), max_result_bytes=max_result_bytes)
    try:
        return ex.run(t or task(), cancel or threading.Event())
    finally:
        ex.close()


def test_a_succeeded_pod_gives_the_result_it_logged(cluster: Cluster) -> None:
    noise = "".join(f"warning: loading shard {i}\n" for i in range(50))
    cluster.kubelet.script = Script(log=noise + frame(RESULT) + "done\n")
    outcome = run(cluster.url, task(job_id=7))
    assert outcome.status == "ok", outcome.reason
    assert outcome.result == RESULT
    assert outcome.details["pod"].startswith(outcome.details["job_name"])
    assert outcome.details["node"] == "gpu-node-1"
    # What the cluster was asked to run is the builder's Job.
    (created,) = cluster.kubelet.seen.values()
    assert created["metadata"]["labels"]["analoglab.io/job-id"] == "7"
    assert created["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert created["spec"]["backoffLimit"] == 0
    # Every log read was bounded by the server, for the worker container.
    assert cluster.kubelet.log_requests
    for params in cluster.kubelet.log_requests:
        assert params["container"] == "worker"
        assert 0 < int(params["limitBytes"]) < 1_000_000
    cluster.assert_deleted(outcome)


def test_a_failed_pod_reports_its_exit_code_and_last_output(cluster: Cluster) -> None:
    stderr = "loading weights\nerror: layer index 99 is out of range for a 6-layer model\n"
    cluster.kubelet.script = Script(end="Failed", exit_code=2, reason="Error", log=stderr)
    outcome = run(cluster.url)
    assert outcome.status == "failed"
    assert "exit" in outcome.reason and "code 2" in outcome.reason
    assert "cannot run on this frontier" in outcome.reason
    assert "layer index 99 is out of range" in outcome.reason
    assert outcome.details["exit_code"] == 2
    assert outcome.result is None
    cluster.assert_deleted(outcome)


def test_an_oom_killed_pod_says_so_from_its_termination_message(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(
        end="Failed", exit_code=137, reason="OOMKilled", message="allocating 40 GiB\n"
    )
    outcome = run(cluster.url, memory="24Gi")
    assert outcome.status == "failed"
    assert "OOMKilled" in outcome.reason and "out of memory (limit 24Gi)" in outcome.reason
    assert "allocating 40 GiB" in outcome.reason
    cluster.assert_deleted(outcome)


@pytest.mark.parametrize(
    ("end", "why"),
    [
        ("Pending", "Unschedulable: 0/3 nodes are available"),
        ("NoPod", "no pod was created"),
        ("Waiting", "waiting: ImagePullBackOff: Back-off pulling image"),
    ],
)
def test_a_job_that_never_starts_times_out(cluster: Cluster, end: str, why: str) -> None:
    cluster.kubelet.script = Script(
        end=end, reason="ImagePullBackOff", message='Back-off pulling image "w:1"'
    )
    begin = time.monotonic()
    outcome = run(cluster.url, start_timeout_seconds=0.4)
    assert outcome.status == "failed"
    assert "did not start within 0.4 s" in outcome.reason and why in outcome.reason
    assert 0.4 <= time.monotonic() - begin < 3
    cluster.assert_deleted(outcome)


def test_an_invalid_image_fails_at_once(cluster: Cluster) -> None:
    message = 'Failed to apply default image tag "Registry/W:1": invalid reference format'
    cluster.kubelet.script = Script(end="Waiting", reason="InvalidImageName", message=message)
    begin = time.monotonic()
    outcome = run(cluster.url, start_timeout_seconds=30)
    assert outcome.status == "failed"
    assert "cannot start: InvalidImageName: Failed to apply" in outcome.reason
    assert time.monotonic() - begin < 5
    cluster.assert_deleted(outcome)


def test_a_job_that_runs_too_long_is_stopped(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(end="Running")
    outcome = run(cluster.url, timeout_seconds=0.5)
    assert outcome.status == "failed"
    assert "timeout of 0.5 s" in outcome.reason
    assert outcome.details["start_seconds"] < 0.5
    cluster.assert_deleted(outcome)


def test_a_result_over_the_cap_is_refused(cluster: Cluster) -> None:
    big = {**RESULT, "samples": ["x" * 1000] * 5}  # ~5 KB of JSON, over a 2,000-byte cap
    cluster.kubelet.script = Script(log=frame(big))
    outcome = run(cluster.url, max_result_bytes=2000)
    assert outcome.status == "failed" and outcome.result is None
    assert "over the cap of 2000" in outcome.reason
    cluster.assert_deleted(outcome)


def test_a_huge_log_is_never_read_whole(cluster: Cluster) -> None:
    huge = {**RESULT, "samples": ["y" * 10_000] * 100}  # ~1 MB of JSON, 1.3 MB framed
    cluster.kubelet.script = Script(log=frame(huge))
    outcome = run(cluster.url, max_result_bytes=2000)
    assert outcome.status == "failed" and outcome.result is None
    assert "larger than the cap of 2000 bytes" in outcome.reason
    assert all(int(p["limitBytes"]) < 100_000 for p in cluster.kubelet.log_requests)
    assert outcome.details["log_bytes"] < 100_000
    cluster.assert_deleted(outcome)


def test_a_result_within_the_cap_after_a_long_log_is_found_at_its_end(cluster: Cluster) -> None:
    """A chatty worker: the log is over what is read at once, but the result fits the cap."""
    noise = "".join(f"step {i}: " + "." * 60 + "\n" for i in range(3000))  # ~200 KB
    cluster.kubelet.script = Script(log=noise + frame(RESULT))
    outcome = run(cluster.url, max_result_bytes=2000)
    assert outcome.status == "ok", outcome.reason
    assert outcome.result == RESULT
    assert any("tailLines" in p for p in cluster.kubelet.log_requests)
    cluster.assert_deleted(outcome)


def test_a_log_without_a_result_fails_the_job(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(log="the worker printed this and exited 0\n")
    outcome = run(cluster.url)
    assert outcome.status == "failed"
    assert "no usable result" in outcome.reason and "no complete result" in outcome.reason
    cluster.assert_deleted(outcome)


def test_cancel_mid_run_deletes_the_job(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(end="Running")
    cancel = threading.Event()
    stopped_at: list[float] = []

    def cancel_when_running() -> None:
        cluster.kubelet.running.wait(5)
        time.sleep(0.1)
        stopped_at.append(time.monotonic())
        cancel.set()

    threading.Thread(target=cancel_when_running, daemon=True).start()
    outcome = run(cluster.url, cancel=cancel, timeout_seconds=30)
    assert outcome.status == "cancelled", outcome.reason
    assert time.monotonic() - stopped_at[0] < 2
    cluster.assert_deleted(outcome)


def test_an_unreachable_api_server_fails_the_job() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    begin = time.monotonic()
    outcome = run(url)
    assert outcome.status == "failed"
    assert "cannot create the Job" in outcome.reason
    assert f"the Kubernetes API at {url} is unreachable" in outcome.reason
    assert outcome.details["job_deleted"] is False and "cleanup_error" in outcome.details
    assert time.monotonic() - begin < 10


def test_a_forbidden_create_names_the_missing_permission(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(end="NoPod")
    cluster.emulator[lambda r: r.method == "POST"] << kmock.KubernetesError(
        status=403,
        reason="Forbidden",
        message='jobs.batch is forbidden: User "system:serviceaccount:lab:agent" cannot '
        'create resource "jobs" in API group "batch" in the namespace "frontier-lab"',
    )
    outcome = run(cluster.url)
    assert outcome.status == "failed"
    assert "HTTP 403" in outcome.reason and "cannot create resource" in outcome.reason
    assert "build_agent_rbac" in outcome.reason


def test_losing_the_api_server_mid_run_fails_the_job_without_raising(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(end="Running")

    def stop_when_running() -> None:
        cluster.kubelet.running.wait(5)
        time.sleep(0.1)
        cluster.stop_api()

    threading.Thread(target=stop_when_running, daemon=True).start()
    ex = KubernetesExecutor(config(cluster.url), api_grace_seconds=0.5, request_timeout=2)
    try:
        outcome = ex.run(task(), threading.Event())
    finally:
        ex.close()
    assert outcome.status == "failed"
    assert "lost the Kubernetes API for over 0.5 s" in outcome.reason
    assert outcome.details["job_deleted"] is False
    assert "unreachable" in outcome.details["cleanup_error"]


def test_a_job_deleted_by_someone_else_fails(cluster: Cluster) -> None:
    cluster.kubelet.script = Script(end="Running")

    def delete_it() -> None:
        cluster.kubelet.running.wait(5)
        (name,) = cluster.kubelet.seen
        cluster.kubelet.api("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}")

    threading.Thread(target=delete_it, daemon=True).start()
    outcome = run(cluster.url)
    assert outcome.status == "failed" and "deleted by someone else" in outcome.reason


# -- the real worker in the emulated pod ----------------------------------------------------------


def run_container(mounts: dict[str, Path]) -> Callable[[dict[str, Any]], tuple[int, str]]:
    """A container runtime on this machine: runs the pod's command with its volumes mapped.

    ``mounts`` maps each volume's mount path to a local folder; the image's ``python`` is
    this interpreter. Output (stdout and stderr together) is the pod's log.
    """

    def local(value: str) -> str:
        for mount, folder in mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(folder) + value[len(mount) :]
        return value

    def run_pod(pod: dict[str, Any]) -> tuple[int, str]:
        (ctr,) = pod["spec"]["containers"]
        argv = [local(a) for a in ctr["command"]]
        assert argv[0] == "python"
        argv[0] = sys.executable
        env = {e["name"]: local(e["value"]) for e in ctr["env"]}
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        proc = subprocess.run(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240
        )
        return proc.returncode, proc.stdout.decode()

    return run_pod


@pytest.mark.slow
def test_the_real_worker_runs_the_jobs_command_line(
    cluster: Cluster, site: LabConfig, tmp_path: Path, sentiment_spec: dict[str, Any]
) -> None:
    weights = site.weights("tiny-frontier").path
    for d in ("tmp", "cache"):
        (tmp_path / d).mkdir()
    mounts = {"/weights": weights.parent, "/tmp": tmp_path / "tmp", "/cache": tmp_path / "cache"}
    cluster.kubelet.script = Script(run=run_container(mounts))
    t = Task(11, "tiny-frontier", sentiment_spec, weights.name)
    outcome = run(cluster.url, t, cpu="1", max_result_bytes=1_000_000, timeout_seconds=240)
    assert outcome.status == "ok", outcome.reason
    assert outcome.result is not None
    assert outcome.result["method"] == "evaluation"
    assert outcome.result["model"]["name"] == "tiny-frontier"
    assert outcome.result["metrics"]
    cluster.assert_deleted(outcome)

    # A spec the worker refuses: exit 2 and its reason, through the pod's status and log.
    fidelity = {"method": "fidelity", "data": {"kind": "task_set", "name": "neutral"}}
    t = Task(12, "tiny-frontier", fidelity, weights.name)
    outcome = run(cluster.url, t, cpu="1", timeout_seconds=240)
    assert outcome.status == "failed"
    assert "code 2" in outcome.reason and "not run as a job on the frontier" in outcome.reason
    cluster.assert_deleted(outcome)
