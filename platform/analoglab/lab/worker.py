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
  sends one per frontier when it starts, before it claims any job.

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
