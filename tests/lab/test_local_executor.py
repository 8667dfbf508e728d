"""The local executor: a warm worker process, and every way a job can fail without taking the
agent down (timeout, memory cap, crash, a spec the model cannot run), with a scrubbed env."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.experiments.runner import run
from analoglab.experiments.spec import parse_spec
from analoglab.lab.config import LabConfig, LocalExecutorConfig
from analoglab.lab.executor import Task
from analoglab.lab.local import LocalExecutor, scrubbed_env
from analoglab.models.loading import load_any

pytestmark = pytest.mark.slow


def task(site: LabConfig, spec: dict[str, Any], job_id: int = 1) -> Task:
    return Task(job_id, "tiny-frontier", spec, str(site.weights("tiny-frontier").path))


def executor(**kw: Any) -> LocalExecutor:
    return LocalExecutor(LocalExecutorConfig(threads=1, **kw))


def test_results_match_an_in_process_run_and_the_worker_stays_warm(
    site: LabConfig, tiny_home: Settings, sentiment_spec: dict[str, Any]
) -> None:
    ex = executor()
    try:
        first = ex.run(task(site, sentiment_spec, 1), threading.Event())
        second = ex.run(task(site, sentiment_spec, 2), threading.Event())
    finally:
        ex.close()
    assert first.ok and second.ok, (first.reason, second.reason)
    direct = run(parse_spec(sentiment_spec), load_any("tiny-frontier", "cpu", tiny_home))
    assert first.result is not None and second.result is not None
    assert first.result["metrics"] == direct.metrics
    assert first.result["model"]["name"] == "tiny-frontier"
    assert first.result["model"]["weights_sha256"] == direct.model.weights_sha256
    assert first.details["reused_model"] is False and second.details["reused_model"] is True
    assert ex.loads == 1
    # the second job found the weights loaded: no load, only the lookup (a rounded 0.0001 s
    # on a busy machine), far less than the first job's load
    assert second.details["load_seconds"] < first.details["load_seconds"] / 10


def test_a_cold_worker_per_job_when_not_warm(
    site: LabConfig, sentiment_spec: dict[str, Any]
) -> None:
    ex = executor(warm=False)
    try:
        outs = [ex.run(task(site, sentiment_spec, i), threading.Event()) for i in (1, 2)]
    finally:
        ex.close()
    assert all(o.ok for o in outs) and ex.loads == 2


def test_a_spec_the_model_cannot_run_fails_and_the_worker_serves_on(
    site: LabConfig, sentiment_spec: dict[str, Any]
) -> None:
    bad = sentiment_spec | {"method": "probe", "layers": {"indices": [40]}}
    bad["data"] = {"kind": "task_set", "name": "truth", "n": 20}
    ex = executor()
    try:
        failed = ex.run(task(site, bad), threading.Event())
        worker = ex._child
        after = ex.run(task(site, sentiment_spec), threading.Event())
        same = ex._child is worker
    finally:
        ex.close()
    assert failed.status == "failed" and "40" in failed.reason
    assert after.ok and same  # the same worker served the next job
    assert after.details["reused_model"] is True and ex._child is None  # then closed
    assert worker is not None and worker.proc.returncode is not None


def test_timeout_kills_the_worker(site: LabConfig, sentiment_spec: dict[str, Any]) -> None:
    ex = executor(timeout_seconds=0.5)  # loading torch and the model alone takes longer
    try:
        out = ex.run(task(site, sentiment_spec), threading.Event())
        child = ex._child
    finally:
        ex.close()
    assert out.status == "failed" and out.reason == "timed out after 0.5 s (the lab's limit)"
    assert child is None


def test_memory_cap(site: LabConfig, sentiment_spec: dict[str, Any]) -> None:
    ex = executor(memory_mb=60)  # the worker passes 60 MiB while importing torch
    try:
        out = ex.run(task(site, sentiment_spec), threading.Event())
    finally:
        ex.close()
    assert out.status == "failed"
    assert "over the lab's memory cap of 60 MiB" in out.reason


def test_a_crash_fails_the_job_with_the_signal(
    site: LabConfig, sentiment_spec: dict[str, Any]
) -> None:
    ex = executor()
    box: dict[str, Any] = {}

    def go() -> None:
        box["out"] = ex.run(task(site, sentiment_spec), threading.Event())

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 20
    while ex._child is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(ex._child.proc.pid, signal.SIGKILL)
    t.join(30)
    ex.close()
    assert box["out"].status == "failed"
    assert box["out"].reason.startswith("the worker was killed by signal 9")


def test_cancel_stops_the_job(site: LabConfig, sentiment_spec: dict[str, Any]) -> None:
    ex = executor()
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    try:
        out = ex.run(task(site, sentiment_spec), cancel)
    finally:
        ex.close()
    assert out.status == "cancelled" and out.seconds < 5


def test_no_secret_reaches_the_worker(
    site: LabConfig, sentiment_spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    monkeypatch.setenv("ANALOGLAB_QUEUE_TOKEN", "queue-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret")
    ex = executor()
    try:
        assert ex.run(task(site, sentiment_spec), threading.Event()).ok
        assert ex._child is not None
        seen = ex._child.psutil.environ()
    finally:
        ex.close()
    assert not {"JUPYTERHUB_API_TOKEN", "ANALOGLAB_QUEUE_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(
        seen
    )
    assert seen["HF_HUB_OFFLINE"] == "1" and "PATH" in seen
    assert "hub-secret" not in " ".join(seen.values())


def test_scrubbed_env_keeps_only_the_allow_list() -> None:
    env = scrubbed_env({"PATH": "/bin", "GITHUB_TOKEN": "x", "CUDA_VISIBLE_DEVICES": "0"})
    assert env["PATH"] == "/bin" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert "GITHUB_TOKEN" not in env
