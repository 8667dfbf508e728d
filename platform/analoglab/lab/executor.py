"""The executor interface: run one job's spec on one frontier, somewhere the lab controls.

An executor takes a :class:`Task` (the job's spec as submitted, the frontier id and where its
weights live) and returns an :class:`Outcome`; it never raises for a job's own failure (a
crash, a timeout, a spec that cannot run on the model, a result too large): those are
``Outcome(status="failed", reason=...)``, so one bad job never takes the agent down. A set
``cancel`` event asks it to stop the job now (the lease was lost, or the agent is stopping):
it then returns ``status="cancelled"``.

A backend that can run several jobs for one frontier as one batch (their forward passes
shared, :mod:`analoglab.experiments.batching`) is a :class:`BatchRunner` too: the local one.

Two backends implement it: :mod:`analoglab.lab.local` (a child process on this machine) and
:mod:`analoglab.lab.kubernetes` (a ``batch/v1`` Job in the lab's cluster).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Status = Literal["ok", "failed", "cancelled"]

#: The most a worker may hand back (a result's JSON) before the release checks see it; the
#: frontier's policy caps what is released far lower (1 MB by default).
MAX_RESULT_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Task:
    """One job to run: what the queue handed the agent, plus where the weights are."""

    job_id: int
    frontier: str
    spec: dict[str, Any]
    weights: str
    weights_sha256: str | None = None
    #: The site's residual maps folder (for mapped methods; local: a path on this machine,
    #: kubernetes: a path inside the weights volume).
    maps: str | None = None


@dataclass
class Outcome:
    """How a task ended. ``result`` (an ExperimentResult as JSON) is set when ``ok``."""

    status: Status
    result: dict[str, Any] | None = None
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Executor(Protocol):
    """What the agent needs of a backend."""

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        """Run ``task`` to its end (or until ``cancel`` is set); never raise for the job."""
        ...

    def close(self) -> None:
        """Release what the executor holds (warm workers, API clients)."""
        ...


@runtime_checkable
class Preloader(Protocol):
    """A backend that can load a frontier ahead of any job (a warm worker): the agent asks it
    to load and verify each frontier of the site when it starts (:mod:`.local`). A backend
    without it (Kubernetes: one pod per job) verifies at each worker's load instead."""

    def preload(self, task: Task, cancel: threading.Event) -> Outcome:
        """Load ``task``'s frontier and verify its layout; ``ok`` with ``details["layout"]``
        and ``details["summary"]``, or ``failed`` with the reason."""
        ...


@runtime_checkable
class BatchRunner(Protocol):
    """A backend that runs several jobs for one frontier together (:mod:`.local`)."""

    @property
    def batch_tokens(self) -> int:
        """Tokens per shared forward pass; 0 when batched execution is off."""
        ...

    def run_batch(self, tasks: list[Task], cancel: threading.Event) -> list[Outcome]:
        """One outcome per task, in order; never raise for a job (see :class:`Executor`)."""
        ...
