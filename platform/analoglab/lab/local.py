"""The local executor: jobs run in a child process on the lab agent's own machine.

The child is :mod:`analoglab.lab.worker` in ``serve`` mode, started with a scrubbed
environment (:func:`scrubbed_env`: no hub token, no ``ANALOGLAB_*`` setting, nothing but what
Python, torch and the offline Hugging Face libraries need), so experiment code cannot reach the
hub or the agent's credentials. The executor enforces, from outside the child:

- a wall-clock timeout per job,
- a memory cap on the child's resident memory (sampled with psutil, the child's own children
  included),
- that a crash (a signal, an exit) fails the job's attempt with the reason, not the agent.

In any of these cases the child is killed and the next job starts a fresh one. Otherwise the
child stays up between jobs and keeps its model loaded while jobs name the same weights (a
warm worker): consecutive jobs for one frontier pay the load once.

:meth:`LocalExecutor.run_batch` sends several jobs for one frontier as one batch task (their
forward passes shared where their methods allow, at most ``batch_tokens`` tokens a pass) and
gives back one outcome per job. The batch as a whole gets one job's wall-clock limit and the
memory cap; if it breaks them, or the worker dies, the jobs it had not answered yet run again
one by one, each under its own limits, so the job at fault fails alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from analoglab.lab.config import LocalExecutorConfig
from analoglab.lab.executor import MAX_RESULT_BYTES, Outcome, Task

#: Environment variables a worker keeps; everything else is dropped.
KEEP_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
_POLL = 0.1


def scrubbed_env(
    source: Mapping[str, str] | None = None, passthrough: Sequence[str] = ()
) -> dict[str, str]:
    """The environment a worker runs with: the allow-listed variables (and the lab's own
    ``passthrough`` names, e.g. ``LD_LIBRARY_PATH`` for a CUDA install), offline flags."""
    source = os.environ if source is None else source
    env = {k: source[k] for k in (*KEEP_ENV, *passthrough) if k in source}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": env.get("TMPDIR", "/tmp"),
        }
    )
    return env


#: The longest answer line the agent reads from a worker: a result and its timings.
MAX_ANSWER_BYTES = MAX_RESULT_BYTES + 2**16


class _Child:
    """One worker process and a thread reading its answers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.workdir = tempfile.TemporaryDirectory(prefix="analoglab-worker-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "analoglab.lab.worker", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env | {"TMPDIR": self.workdir.name, "HOME": self.workdir.name},
            cwd=self.workdir.name,  # not the agent's folder (python -m puts cwd on sys.path)
            start_new_session=True,
        )
        self.answers: queue.Queue[str | None] = queue.Queue()
        self.stderr_tail: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_answers, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.psutil = psutil.Process(self.proc.pid)

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline(MAX_ANSWER_BYTES)
            if not line:
                break
            if not line.endswith("\n"):  # over the limit (or cut short): not an answer
                self.answers.put(
                    '{"status": "failed", "reason": "the worker\'s answer is too '
                    'large or truncated"}\n'
                )
                self.kill()
                break
            self.answers.put(line)
        self.answers.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip())
            del self.stderr_tail[:-20]

    def send(self, task: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()

    def rss_bytes(self) -> int:
        """Resident memory of the worker and its children (a process gone mid-scan is 0)."""
        try:
            procs = [self.psutil, *self.psutil.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        with contextlib.suppress(OSError):
            self.workdir.cleanup()

    def death(self) -> str:
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
        tail = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        return f"the worker {how}" + (f": {tail}" if tail else "")


class LocalExecutor:
    """Runs tasks in a (warm) worker process; see the module docstring."""

    def __init__(
        self, cfg: LocalExecutorConfig | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.cfg = cfg or LocalExecutorConfig()
        self.env = scrubbed_env(env, self.cfg.env_passthrough)
        if self.cfg.threads:
            self.env["OMP_NUM_THREADS"] = str(self.cfg.threads)
        self._child: _Child | None = None
        self.loads = 0

    def _worker(self) -> _Child:
        if self._child is None or not self._child.alive():
            if self._child is not None:
                self._child.kill()
            self._child = _Child(self.env)
        return self._child

    def _drop(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        return self._exchange(
            {
                "job_id": task.job_id,
                "frontier": task.frontier,
                "weights": task.weights,
                "weights_sha256": task.weights_sha256,
                "maps": task.maps,
                "spec": task.spec,
                "device": self.cfg.device,
                "threads": self.cfg.threads,
            },
            cancel,
        )

    @property
    def batch_tokens(self) -> int:
        """Tokens per shared forward pass (0: batched execution off)."""
        return self.cfg.batch_tokens

    def run_batch(self, tasks: list[Task], cancel: threading.Event) -> list[Outcome]:
        """Each task's outcome, the tasks (all for one frontier) run as one batch; see the
        module docstring."""
        if len(tasks) <= 1 or self.cfg.batch_tokens <= 0:
            return [self.run(t, cancel) for t in tasks]
        first = tasks[0]
        payload = {
            "op": "batch",
            "frontier": first.frontier,
            "weights": first.weights,
            "weights_sha256": first.weights_sha256,
            "maps": first.maps,
            "jobs": [{"job_id": t.job_id, "spec": t.spec} for t in tasks],
            "device": self.cfg.device,
            "threads": self.cfg.threads,
            "batch_tokens": self.cfg.batch_tokens,
            "memory_mb": self.cfg.memory_mb,
        }
        answered, broke = self._exchange_many(payload, len(tasks), cancel)
        outcomes = list(answered)
        for task in tasks[len(answered) :]:
            if broke is not None and broke.status == "cancelled":
                outcomes.append(broke)
            else:  # the batch broke a limit or the worker died: the rest alone
                outcomes.append(self.run(task, cancel))
        return outcomes

    def preload(self, task: Task, cancel: threading.Event) -> Outcome:
        """Load ``task``'s frontier in the warm worker and verify its layout, running nothing:
        what the agent does for each frontier when it starts, before it claims any job.
        ``ok`` with ``details["layout"]`` (the LayoutReport as JSON) and ``details["summary"]``;
        ``failed`` with the reason (the failing invariant) otherwise. The same limits apply."""
        return self._exchange(
            {
                "op": "load",
                "frontier": task.frontier,
                "weights": task.weights,
                "weights_sha256": task.weights_sha256,
                "device": self.cfg.device,
                "threads": self.cfg.threads,
            },
            cancel,
        )

    def _exchange(self, payload: dict[str, Any], cancel: threading.Event) -> Outcome:
        """Send one task to the worker and wait for its answer, within the lab's limits."""
        answered, broke = self._exchange_many(payload, 1, cancel)
        if answered:
            return answered[0]
        assert broke is not None
        return broke

    def _exchange_many(
        self, payload: dict[str, Any], n: int, cancel: threading.Event
    ) -> tuple[list[Outcome], Outcome | None]:
        """Send one task and read its ``n`` answers within the lab's limits: the outcomes of
        those answered, and how the exchange broke off before the rest (None if it did not)."""
        start = time.monotonic()
        if cancel.is_set():
            return [], Outcome("cancelled", reason="cancelled before it started")
        try:
            child = self._worker()
        except (OSError, psutil.Error) as exc:
            self._drop()
            return [], Outcome("failed", reason=f"the lab could not start a worker: {exc}")
        try:
            child.send(payload)
        except OSError:
            self._drop()
            return [], Outcome("failed", reason=child.death(), seconds=time.monotonic() - start)
        answered: list[Outcome] = []
        broke = self._await(child, start, n, answered, cancel)
        if broke is None and not self.cfg.warm:
            self._drop()
        return answered, broke

    def _await(
        self,
        child: _Child,
        start: float,
        n: int,
        answered: list[Outcome],
        cancel: threading.Event,
    ) -> Outcome | None:
        cap = self.cfg.memory_mb * 2**20
        peak = 0
        while len(answered) < n:
            elapsed = time.monotonic() - start
            try:
                line = child.answers.get(timeout=_POLL)
            except queue.Empty:
                line = ""
            if line is None:  # the worker's stdout closed: it died
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=10)
                reason = child.death()
                self._drop()
                return Outcome("failed", reason=reason, seconds=elapsed)
            if line:
                outcome = self._answered(line, start, peak)
                answered.append(outcome)
                if outcome.details.get("garbage"):
                    return outcome
                continue
            if cancel.is_set():
                self._drop()
                return Outcome("cancelled", reason="cancelled by the agent", seconds=elapsed)
            if elapsed > self.cfg.timeout_seconds:
                self._drop()
                return Outcome(
                    "failed",
                    reason=f"timed out after {self.cfg.timeout_seconds:g} s (the lab's limit)",
                    seconds=elapsed,
                )
            rss = child.rss_bytes()
            peak = max(peak, rss)
            if rss > cap:
                self._drop()
                return Outcome(
                    "failed",
                    reason=(
                        f"used {rss / 2**20:.0f} MiB, over the lab's memory cap of "
                        f"{self.cfg.memory_mb} MiB"
                    ),
                    seconds=elapsed,
                )
        return None

    def _answered(self, line: str, start: float, peak: int) -> Outcome:
        seconds = time.monotonic() - start
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            self._drop()
            return Outcome(
                "failed",
                reason="the worker answered garbage",
                seconds=seconds,
                details={"garbage": True},
            )
        details = {
            k: answer[k]
            for k in (
                "load_seconds",
                "run_seconds",
                "reused_model",
                "layout",
                "summary",
                "layout_refused",
                "batched_with",
                "batch_index",
                "batch_size",
                "batch_tokens",
            )
            if k in answer
        }
        details["peak_rss_mb"] = round(peak / 2**20, 1)
        if answer.get("reused_model") is False and answer.get("batch_index", 0) == 0:
            self.loads += 1
        if answer.get("status") == "ok" and isinstance(answer.get("result"), dict):
            return Outcome("ok", result=answer["result"], seconds=seconds, details=details)
        if answer.get("status") == "ok" and "layout" in answer:  # a preload's answer
            return Outcome("ok", seconds=seconds, details=details)
        return Outcome(
            "failed",
            reason=str(answer.get("reason", "no reason")),
            seconds=seconds,
            details=details,
        )

    def close(self) -> None:
        if self._child is not None and self._child.alive() and self._child.proc.stdin:
            try:
                self._child.proc.stdin.close()  # the worker ends when its input does
                self._child.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._drop()
