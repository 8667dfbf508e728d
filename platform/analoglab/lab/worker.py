"""The worker: the process that holds a frontier's weights and runs experiment specs on it.

It runs where the executor puts it (a child process of the agent, a pod in the lab's cluster)
and never sees a hub token: it gets a spec and a weights path, and gives back a result.

Two ways to run it:

- ``python -m analoglab.lab.worker once --frontier ID --weights PATH [--maps DIR] --spec-b64
  ...`` runs one spec and writes the result framed (:mod:`analoglab.lab.framing`) on stdout:
  what a Kubernetes Job runs. Exit 0 with a result, 2 when the spec cannot run on this model
  (the reason on stderr), 1 on anything else.
- ``python -m analoglab.lab.worker serve`` reads one task per line (JSON) on stdin and answers
  one line of JSON each on the stdout it was started with, keeping the model loaded while
  consecutive tasks name the same weights (a warm worker): what the local executor runs.
  Anything libraries print goes to stderr, so it cannot corrupt the answers. A task
  ``{"op": "load", ...}`` only loads the frontier and answers its verified layout: the agent
  sends one per frontier when it starts, before it claims any job. A task ``{"op": "batch",
  "jobs": [{"job_id": ..., "spec": ...}, ...], "batch_tokens": N, ...}`` runs several jobs
  for the frontier at once (:func:`analoglab.experiments.runner.run_batch`: those whose
  methods can share forward passes share them, the others run alone) and answers one line
  per job, in order, each as if the job had run alone (a job that cannot run answers its
  own error; the others still get their results).

Every load verifies the frontier's hook layout (:func:`analoglab.interventions.verify_layout`,
cached per model type and config hash), once per load and never per job; a frontier whose
layout fails is refused with the failing invariant. A ``mapped_steering`` / ``mapped_probe``
spec runs through the site's residual map of (the artifact's analog, this frontier), read
from the site's maps folder (:mod:`analoglab.lab.maps`) and checked against the loaded
weights' hash; without one the job fails naming the command that fits it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from analoglab.errors import AnalogLabError


@dataclass
class _Held:
    weights: str
    sha256: str | None
    device: str
    loaded: Any
    #: a forward pass's fixed cost in tokens, measured at the first batch (packing only)
    pass_tokens: int | None = None


#: The methods that carry an analog's artifact through the site's residual map.
MAPPED_METHODS = frozenset({"mapped_steering", "mapped_probe"})


class LayoutRefused(AnalogLabError):
    """The frontier's hook layout failed its self-test: the site does not serve it."""


class Worker:
    """Runs specs on one loaded model at a time, reloading only when the weights change."""

    def __init__(self) -> None:
        self._held: _Held | None = None
        self._maps: dict[tuple[str, float, str], Any] = {}

    def load(
        self, frontier: str, weights: str, device: str = "auto", sha256: str | None = None
    ) -> tuple[Any, bool]:
        """The loaded frontier (kept while the weights stay the same) and whether it was
        reused. A load verifies its layout (once per load, not per job); one that fails its
        self-test raises :class:`LayoutRefused` with the failing invariant."""
        from analoglab.models.loading import load_model

        held = self._held
        if (
            held is not None
            and held.weights == weights
            and held.sha256 == sha256
            and held.device == device
        ):
            held.loaded.name = frontier
            return held.loaded, True
        self._held = None  # drop the old model before loading the next
        loaded = load_model(weights, device=device, name=frontier, expected_sha256=sha256)
        report = loaded.layout
        if report is not None:
            # The frontier's hook layout is verified once per load, not per job: say what it is.
            print(f"{frontier}: {report.summary()}", file=sys.stderr, flush=True)
            if not report.verified:
                try:
                    report.raise_if_refused()
                except AnalogLabError as exc:
                    raise LayoutRefused(str(exc)) from None
                raise LayoutRefused(report.summary())
        self._held = _Held(weights, sha256, device, loaded)
        return loaded, False

    def residual_map(self, maps: str | None, spec: Any, loaded: Any) -> Any:
        """The site's map for a mapped spec (cached while its file is unchanged); else None."""
        from analoglab.lab.maps import load_site_map, map_path

        if spec.method not in MAPPED_METHODS:
            return None
        analog = spec.artifact.analog
        folder = Path(maps) if maps else None
        key = None
        if folder is not None:
            with contextlib.suppress(OSError, AnalogLabError):
                path = map_path(folder, loaded.name, analog)
                key = (str(path), path.stat().st_mtime, loaded.weights_sha256)
        if key is not None and key in self._maps:
            return self._maps[key]
        rmap = load_site_map(
            folder, analog=analog, frontier=loaded.name, frontier_sha256=loaded.weights_sha256
        )
        if key is not None:
            self._maps = {key: rmap}  # one map held at a time: they can be large
        return rmap

    def run_batch(
        self,
        frontier: str,
        weights: str,
        jobs: list[dict[str, Any]],
        device: str = "auto",
        sha256: str | None = None,
        maps: str | None = None,
        batch_tokens: int = 8192,
        memory_mb: int | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Each job's answer (``status`` ``ok`` with its ``result``, or ``failed`` with its
        ``reason``), in order, and the batch's timings. Jobs whose methods can share forward
        passes run together, at most ``batch_tokens`` tokens a pass (fewer where the memory
        left beside the weights under ``memory_mb`` holds fewer), their rows cut into passes
        for the model's measured fixed cost of a pass (:meth:`_pass_tokens`); the others run
        alone."""
        from analoglab.experiments.batching import why_alone
        from analoglab.experiments.runner import run_batch
        from analoglab.experiments.spec import parse_spec

        start = time.perf_counter()
        loaded, reused = self.load(frontier, weights, device=device, sha256=sha256)
        loaded_at = time.perf_counter()
        answers: list[dict[str, Any] | None] = [None] * len(jobs)
        shared: list[tuple[int, Any]] = []
        for i, job in enumerate(jobs):
            job_id = job.get("job_id")
            try:
                parsed = parse_spec(job["spec"])
                if why_alone({"method": parsed.method}) is None:
                    shared.append((i, parsed))
                    continue
                result, _ = self.run(frontier, weights, job["spec"], device, sha256, maps)
                answers[i] = {"job_id": job_id, "status": "ok", "result": result}
            except Exception as exc:
                answers[i] = {"job_id": job_id, **_failure(exc)}
        bound = min(batch_tokens, _memory_tokens(loaded, memory_mb))
        pass_tokens = self._pass_tokens(loaded, bound) if len(shared) > 1 else None
        results = (
            run_batch([p for _, p in shared], loaded, batch_tokens=bound, pass_tokens=pass_tokens)
            if shared
            else []
        )
        for (i, _), res in zip(shared, results, strict=True):
            job_id = jobs[i].get("job_id")
            if isinstance(res, Exception):
                answers[i] = {"job_id": job_id, **_failure(res)}
            else:
                answers[i] = {
                    "job_id": job_id,
                    "status": "ok",
                    "result": res.model_dump(mode="json"),
                }
        timings = {
            "load_seconds": round(loaded_at - start, 4),
            "run_seconds": round(time.perf_counter() - loaded_at, 4),
            "reused_model": reused,
            "batched_with": len(shared),
            "batch_tokens": bound,
            "pass_tokens": pass_tokens,
        }
        return [a for a in answers if a is not None], timings

    def _pass_tokens(self, loaded: Any, bound: int) -> int:
        """The loaded model's fixed cost of a forward pass in tokens, measured once per load
        (:func:`~analoglab.experiments.packed.measure_pass_tokens`), at most ``bound``."""
        from analoglab.experiments.packed import measure_pass_tokens

        held = self._held
        assert held is not None and held.loaded is loaded  # run_batch loaded it just before
        if held.pass_tokens is None:
            held.pass_tokens = measure_pass_tokens(loaded.model, 1 << 30)
        return min(bound, held.pass_tokens)

    def run(
        self,
        frontier: str,
        weights: str,
        spec: dict[str, Any],
        device: str = "auto",
        sha256: str | None = None,
        maps: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The result of ``spec`` on the frontier, and timings (load, run, whether reused).
        ``maps``: the site's maps folder, for the mapped methods."""
        from analoglab.experiments.runner import run
        from analoglab.experiments.spec import FidelitySpec, parse_spec

        parsed = parse_spec(spec)
        if isinstance(parsed, FidelitySpec):
            raise AnalogLabError(
                "fidelity compares an analog with its frontier; it is measured when an analog "
                "is published, not run as a job on the frontier itself"
            )
        start = time.perf_counter()
        loaded, reused = self.load(frontier, weights, device=device, sha256=sha256)
        rmap = self.residual_map(maps, parsed, loaded)
        loaded_at = time.perf_counter()
        result = run(parsed, loaded, residual_map=rmap)
        done = time.perf_counter()
        timings = {
            "load_seconds": round(loaded_at - start, 4),
            "run_seconds": round(done - loaded_at, 4),
            "reused_model": reused,
        }
        return result.model_dump(mode="json"), timings


def _memory_tokens(loaded: Any, memory_mb: int | None) -> int:
    """Tokens a packed pass may hold in the memory the lab allows beside the weights: on a
    CUDA device the free device memory, else ``memory_mb`` less the weights (no cap when
    neither is known)."""
    from analoglab.experiments.batching import tokens_within_memory

    model = loaded.model
    params = list(model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    dtype_bytes = params[0].element_size() if params else 4
    if str(loaded.device).startswith("cuda"):
        import torch

        free = int(torch.cuda.mem_get_info(loaded.device)[0])
    elif memory_mb:
        free = memory_mb * 2**20 - 2 * weight_bytes  # the weights, and the process around them
    else:
        return 2**31
    cfg = model.config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 1))
    inner = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 1))
    return tokens_within_memory(max(free // 2, 0), hidden, inner, layers, dtype_bytes)


def _failure(exc: BaseException) -> dict[str, Any]:
    """A job's failure as its answer (the reason, and whether the layout was refused)."""
    if isinstance(exc, LayoutRefused):
        return {"status": "failed", "reason": str(exc), "layout_refused": True}
    if isinstance(exc, AnalogLabError):
        return {"status": "failed", "reason": str(exc)}
    if isinstance(exc, KeyError | ValueError | TypeError):
        return {"status": "failed", "reason": f"bad task: {type(exc).__name__}: {exc}"}
    return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _die_with_parent(interval: float = 0.5) -> None:
    """Exit as soon as the agent that started us is gone (killed with -9, say), even in the
    middle of a job: its lease will go to another agent, and this run is nobody's now."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(inp: IO[str], out: IO[str]) -> int:
    """Answer tasks from ``inp`` on ``out`` until ``inp`` closes."""
    worker = Worker()
    for line in inp:
        if not line.strip():
            continue
        answer: dict[str, Any]
        try:
            task = json.loads(line)
            _threads(task.get("threads"))
            if task.get("op") == "batch":
                for each in _batch(worker, task):
                    out.write(json.dumps(each) + "\n")
                    out.flush()
                continue
            if task.get("op") == "load":
                answer = _load(worker, task)
            else:
                result, timings = worker.run(
                    task["frontier"],
                    task["weights"],
                    task["spec"],
                    device=task.get("device", "auto"),
                    sha256=task.get("weights_sha256"),
                    maps=task.get("maps"),
                )
                answer = {"job_id": task.get("job_id"), "status": "ok", "result": result, **timings}
        except LayoutRefused as exc:
            answer = {"status": "failed", "reason": str(exc), "layout_refused": True}
        except AnalogLabError as exc:
            answer = {"status": "failed", "reason": str(exc)}
        except (KeyError, ValueError, TypeError) as exc:
            answer = {"status": "failed", "reason": f"bad task: {type(exc).__name__}: {exc}"}
        except Exception as exc:  # a bug or a model that breaks: report it, keep serving
            answer = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


def _batch(worker: Worker, task: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch task's answers: one per job, in order, each with the batch's timings (or, where
    the batch as a whole cannot run, e.g. the weights fail to load, each with that reason)."""
    jobs = task.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        return [{"status": "failed", "reason": "bad task: a batch names no jobs"}]
    try:
        answers, timings = worker.run_batch(
            task["frontier"],
            task["weights"],
            jobs,
            device=task.get("device", "auto"),
            sha256=task.get("weights_sha256"),
            maps=task.get("maps"),
            batch_tokens=int(task.get("batch_tokens", 8192)),
            memory_mb=task.get("memory_mb"),
        )
    except Exception as exc:
        return [
            {"job_id": j.get("job_id") if isinstance(j, dict) else None, **_failure(exc)}
            for j in jobs
        ]
    return [
        {**a, **timings, "batch_index": i, "batch_size": len(jobs)} for i, a in enumerate(answers)
    ]


def _load(worker: Worker, task: dict[str, Any]) -> dict[str, Any]:
    """Load (and verify) a frontier without running anything: its layout report as JSON."""
    start = time.perf_counter()
    loaded, reused = worker.load(
        task["frontier"],
        task["weights"],
        device=task.get("device", "auto"),
        sha256=task.get("weights_sha256"),
    )
    report = loaded.layout
    return {
        "status": "ok",
        "layout": None if report is None else report.to_dict(),
        "summary": None if report is None else report.summary(),
        "load_seconds": round(time.perf_counter() - start, 4),
        "reused_model": reused,
    }


def once(args: argparse.Namespace) -> int:
    from analoglab.lab.framing import frame

    try:
        if args.spec_file:
            spec = json.loads(Path(args.spec_file).read_text())
        else:
            spec = json.loads(base64.b64decode(args.spec_b64))
        _threads(args.threads)
        result, _ = Worker().run(
            args.frontier,
            args.weights,
            spec,
            device=args.device,
            sha256=args.sha256,
            maps=args.maps,
        )
    except AnalogLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the spec: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(frame(result))
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analoglab.lab.worker")
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("once", help="run one spec and print the framed result")
    one.add_argument("--frontier", required=True)
    one.add_argument("--weights", required=True)
    one.add_argument("--sha256")
    one.add_argument("--maps", help="the site's residual maps folder (for mapped methods)")
    one.add_argument("--device", default="auto")
    one.add_argument("--threads", type=int)
    given = one.add_mutually_exclusive_group(required=True)
    given.add_argument("--spec-b64", help="the spec as base64 of its JSON")
    given.add_argument("--spec-file", help="a file holding the spec as JSON")
    sub.add_parser("serve", help="answer tasks (JSON lines) on stdin")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.mode == "once":
        return once(args)
    _die_with_parent()
    # Answers go to the stdout we were given; everything else printed goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(sys.stdin, answers)


if __name__ == "__main__":
    raise SystemExit(main())
