"""The transfer loop: one call from a notebook takes a spec from the analog to the frontier.

:func:`transfer_check` runs the spec on the analog here, logs it to MLflow (a transfer check's
parent run and its analog child, :mod:`analoglab.tracking.transfer`), submits the same spec
to the gated queue for the frontier (linked to the analog run), waits while showing the job's
state as it changes (and, while it is approved and waiting, its place in line among the
frontier's approved jobs and its estimated start, as the queue gives them), fetches the
released frontier result, logs it, computes the
:class:`~analoglab.experiments.transfer.TransferReport`, logs it on the parent run, and returns
it::

    import analoglab
    report = analoglab.transfer_check(
        "steer.yaml", analog="demo-analog-s", frontier="demo-frontier"
    )
    report.verdict, report.score

**Restartable.** Everything it has done is recorded on the parent run (found again by spec
hash, analog and frontier): calling it again with the same spec does not run the analog again,
and resumes the same queue job instead of submitting a new one (the job id is a tag on the
parent, and the submission's idempotency key is the parent run's id, so even a crash between
submitting and recording cannot make two jobs). A finished check returns its report at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tenacity

from analoglab.config import Settings, get_settings
from analoglab.errors import AnalogLabError
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.spec import AnySpec, load_spec, parse_spec, resolve_task_sets
from analoglab.experiments.transfer import TransferReport, compare
from analoglab.queue.client import SETTLED, QueueClient
from analoglab.queue.errors import QueueError


class TransferCheckError(AnalogLabError):
    """The frontier's side of a transfer check ended without a released result."""


def _raw(path: str | Path) -> Any:
    """A spec file's data, or None where it cannot be read (load_spec then says why)."""
    import yaml

    try:
        text = Path(path).read_text()
        return json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _spec(spec: AnySpec | dict[str, Any] | str | Path, settings: Settings | None = None) -> AnySpec:
    """The spec as a model; a mapped spec's artifact given by MLflow reference is inlined
    (:func:`analoglab.tracking.artifacts.inline_artifact`) before it is parsed."""
    from analoglab.tracking.artifacts import inline_artifact

    if isinstance(spec, str | Path):
        data = _raw(spec)
        if not (isinstance(data, dict) and _by_reference(data)):
            return load_spec(spec)
        spec = data
    if isinstance(spec, dict):
        return parse_spec(inline_artifact(spec, settings=settings) if _by_reference(spec) else spec)
    return spec


def _by_reference(data: dict[str, Any]) -> bool:
    from analoglab.tracking.artifacts import is_reference

    art = data.get("artifact")
    return is_reference(art) or (isinstance(art, dict) and "ref" in art)


def _print(message: str) -> None:
    print(message, flush=True)


def transfer_check(
    spec: AnySpec | dict[str, Any] | str | Path,
    *,
    analog: str,
    frontier: str,
    queue_url: str | None = None,
    token: str | None = None,
    settings: Settings | None = None,
    experiment: str | None = None,
    device: str | None = None,
    poll: float = 2.0,
    timeout: float | None = None,
    show: Callable[[str], None] | None = _print,
) -> TransferReport:
    """Check whether ``spec``'s finding on ``analog`` transfers to ``frontier``.

    ``spec``: a spec model, its dict, or a YAML/JSON file; a mapped spec's ``artifact`` may be
    an MLflow reference (``"mlflow:runs/<run id>/artifacts/<path>"``), inlined here before
    anything runs (``source`` records the reference). ``queue_url`` defaults to the
    ``queue_url`` setting and ``token`` to ``$JUPYTERHUB_API_TOKEN`` / ``$ANALOGLAB_QUEUE_TOKEN``.
    ``show`` receives one line per step and per state change (``None``: quiet). ``timeout``
    bounds the wait for the frontier (seconds; ``None`` waits for as long as review takes:
    call again later to resume). Raises :class:`TransferCheckError` when the job ends
    rejected, withheld, failed, cancelled, or with changes requested.
    """
    from analoglab.models.loading import load_any
    from analoglab.tracking import DEFAULT_EXPERIMENT, TransferCheckRun
    from analoglab.tracking.artifacts import log_steering_vector

    settings = settings or get_settings()
    say = show or (lambda _m: None)
    url = queue_url or settings.queue_url
    if not url:
        raise AnalogLabError(
            "no queue to send the frontier run to: pass queue_url= or set ANALOGLAB_QUEUE_URL"
        )
    # The spec as the frontier will run it (task sets inlined): both results share its hash.
    resolved = resolve_task_sets(_spec(spec, settings))
    check = TransferCheckRun.open(
        resolved,
        analog=analog,
        frontier=frontier,
        settings=settings,
        experiment=experiment or DEFAULT_EXPERIMENT,
    )
    where = f" ({check.url})" if check.url else ""
    say(f"transfer check {check.run_id}{where}: {resolved.method}, {analog} → {frontier}")
    done = check.report()
    if done is not None:
        say(f"already checked: {done.summary()}")
        return done

    from analoglab.experiments.runner import run

    analog_result = check.analog_result()
    if analog_result is None:
        say(f"running on {analog} here...")
        start = time.monotonic()
        loaded = load_any(analog, device=device, settings=settings)
        analog_result = run(resolved, loaded)
        run_id = check.log_analog(analog_result)
        say(f"analog result logged ({time.monotonic() - start:.1f} s)")
        # A steering finding is kept as an artifact too, so a mapped spec can carry it later.
        try:
            vector = log_steering_vector(resolved, analog_result, loaded, run_id, settings=settings)
        except AnalogLabError as exc:  # the check itself does not need it
            say(f"its steering vector was not logged: {exc}")
        else:
            if vector is not None:
                say(f"its steering vector: {vector}")
    else:
        say("analog result already logged")

    with QueueClient(url, token) as client:
        if check.job_id is None:
            ref = check.analog_run_id()
            job = client.submit(
                resolved,
                frontier,
                idempotency_key=f"transfer-check-{check.run_id}",
                analog_result_ref=f"mlflow-run:{ref}" if ref else None,
            )
            check.set_job(str(job["id"]))
            say(f"submitted as job {job['id']} to {url}")
        job_id = int(str(check.job_id))
        start = time.monotonic()

        def changed(job: dict[str, Any]) -> None:
            say(progress_line(job_id, job, time.monotonic() - start))

        frontier_result = check.frontier_result()
        if frontier_result is None:
            job = _wait(client, job_id, poll, timeout, changed, say)
            if job["state"] != "released":
                raise TransferCheckError(
                    f"job {job_id} on {frontier} ended {job['state']}{_why(job)}; the analog "
                    f"run is logged in transfer check {check.run_id}"
                )
            frontier_result = ExperimentResult.model_validate(client.result(job_id))
            check.log_frontier(frontier_result, str(job_id))
    report = compare(analog_result, frontier_result)
    check.log_report(report)
    say(f"{report.summary()}; logged on run {check.run_id}")
    return report


def _wait(
    client: QueueClient,
    job_id: int,
    poll: float,
    timeout: float | None,
    changed: Callable[[dict[str, Any]], None],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """``client.wait``, riding out the hub's restarts and blips (review can take days).

    Unreachable or failing (5xx) is retried with waits doubling from ``poll`` to 60 s
    (tenacity) until ``timeout``; any other refusal is raised at once."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def unreachable(exc: BaseException) -> bool:
        return (
            isinstance(exc, QueueError)
            and (exc.status == 0 or exc.status >= 500)
            and (deadline is None or time.monotonic() < deadline)
        )

    def tell(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        say(f"the queue is unreachable ({exc}); retrying in {delay:.0f} s")

    def wait_once() -> dict[str, Any]:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return _follow(client, job_id, poll, left, changed)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(unreachable),
        wait=tenacity.wait_exponential(multiplier=poll, max=60.0),
        before_sleep=tell,
        reraise=True,
    )
    job: dict[str, Any] = retrying(wait_once)
    return job


def _follow(
    client: QueueClient,
    job_id: int,
    poll: float,
    timeout: float | None,
    changed: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Poll until the job is settled (as ``QueueClient.wait``); ``changed`` sees each new
    state and, while the job waits approved, each move of its place in line."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: tuple[str, Any] | None = None
    while True:
        job = client.get(job_id)
        place = job.get("place") or {}
        seen = (str(job["state"]), place.get("position"))
        if seen != last:
            last = seen
            changed(job)
        if job["state"] in SETTLED:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise QueueError(f"job {job_id} is still {job['state']} after {timeout} s", status=408)
        time.sleep(poll)


def progress_line(job_id: int, job: dict[str, Any], seconds: float) -> str:
    """One line of the wait: the job's state, and while it waits approved its place in line
    and estimated start (``analoglab queue show``'s "in line")."""
    from analoglab.queue.commands import place_text

    line = f"job {job_id}: {job['state']} ({seconds:.0f} s)"
    if job.get("place"):
        line += f"; in line: {place_text(job['place'])}"
    return line


def _why(job: dict[str, Any]) -> str:
    if job.get("release_reason"):
        return f": {job['release_reason']}"
    reviews = job.get("reviews") or []
    if reviews and reviews[-1].get("comment"):
        return f": {reviews[-1]['comment']}"
    return ""
