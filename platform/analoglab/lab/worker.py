"""The worker: the process that holds a frontier's weights and runs experiment specs on it.

It runs where the executor puts it (a child process of the agent, a pod in the lab's cluster)
and never sees a hub token: it gets a spec and a weights path, and gives back a result.

Two ways to run it:

- ``python -m analoglab.lab.worker once --frontier ID --weights PATH --spec-b64 ...`` runs one
  spec and writes the result framed (:mod:`analoglab.lab.framing`) on stdout: what a
  Kubernetes Job runs. Exit 0 with a result, 2 when the spec cannot run on this model (the
  reason on stderr), 1 on anything else.
- ``python -m analoglab.lab.worker serve`` reads one task per line (JSON) on stdin and answers
  one line of JSON each on the stdout it was started with, keeping the model loaded while
  consecutive tasks name the same weights (a warm worker): what the local executor runs.
  Anything libraries print goes to stderr, so it cannot corrupt the answers.
"""

from __future__ import annotations

import argparse
import base64
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


class Worker:
    """Runs specs on one loaded model at a time, reloading only when the weights change."""

    def __init__(self) -> None:
        self._held: _Held | None = None

    def run(
        self,
        frontier: str,
        weights: str,
        spec: dict[str, Any],
        device: str = "auto",
        sha256: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The result of ``spec`` on the frontier, and timings (load, run, whether reused)."""
        from analoglab.experiments.runner import run
        from analoglab.experiments.spec import FidelitySpec, parse_spec
        from analoglab.models.loading import load_model

        parsed = parse_spec(spec)
        if isinstance(parsed, FidelitySpec):
            raise AnalogLabError(
                "fidelity compares an analog with its frontier; it is measured when an analog "
                "is published, not run as a job on the frontier itself"
            )
        start = time.perf_counter()
        held = self._held
        reused = (
            held is not None
            and held.weights == weights
            and held.sha256 == sha256
            and held.device == device
        )
        if not reused:
            self._held = None  # drop the old model before loading the next
            loaded = load_model(weights, device=device, name=frontier, expected_sha256=sha256)
            # The frontier's hook layout is verified once per load, not per job: say what it is.
            if loaded.layout is not None:
                print(f"{frontier}: {loaded.layout.summary()}", file=sys.stderr, flush=True)
            self._held = _Held(weights, sha256, device, loaded)
        assert self._held is not None
        loaded_at = time.perf_counter()
        self._held.loaded.name = frontier
        result = run(parsed, self._held.loaded)
        done = time.perf_counter()
        timings = {
            "load_seconds": round(loaded_at - start, 4),
            "run_seconds": round(done - loaded_at, 4),
            "reused_model": reused,
        }
        return result.model_dump(mode="json"), timings


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
            result, timings = worker.run(
                task["frontier"],
                task["weights"],
                task["spec"],
                device=task.get("device", "auto"),
                sha256=task.get("weights_sha256"),
            )
            answer = {"job_id": task.get("job_id"), "status": "ok", "result": result, **timings}
        except AnalogLabError as exc:
            answer = {"status": "failed", "reason": str(exc)}
        except (KeyError, ValueError, TypeError) as exc:
            answer = {"status": "failed", "reason": f"bad task: {type(exc).__name__}: {exc}"}
        except Exception as exc:  # a bug or a model that breaks: report it, keep serving
            answer = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


def once(args: argparse.Namespace) -> int:
    from analoglab.lab.framing import frame

    try:
        if args.spec_file:
            spec = json.loads(Path(args.spec_file).read_text())
        else:
            spec = json.loads(base64.b64decode(args.spec_b64))
        _threads(args.threads)
        result, _ = Worker().run(
            args.frontier, args.weights, spec, device=args.device, sha256=args.sha256
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
