"""A transfer check in MLflow: a parent run, a child run per model, the report on the parent.

::

    check = TransferCheckRun.open(spec, analog="demo-analog-s", frontier="demo-frontier")
    if check.analog_run_id() is None:
        check.log_analog(run(spec, analog_model))      # child run, kind=analog
    if check.job_id is None:
        check.set_job(queue.submit(...).id)            # tag on the parent
    ...                                                # wait for the frontier result
    check.log_frontier(frontier_result)                # child run, kind=frontier, job id tag
    check.log_report(compare(check.analog_result(), check.frontier_result()))

**Restartable.** The parent is found again by its tags: ``analoglab.kind=transfer``, the spec
hash, ``analoglab.analog`` and ``analoglab.frontier``. :meth:`TransferCheckRun.open` with the
same spec and models returns the same parent run (the oldest, should two processes have raced
to create one), with the job id it was given. ``log_analog`` / ``log_frontier`` reuse the child
already logged for that model: a FINISHED child is kept as it is (the first result stands;
another result for different weights is refused) and a child left unfinished by a crash is
logged into again. What was logged reads back with :meth:`analog_result`,
:meth:`frontier_result` and :meth:`report`, so a restarted process need not run anything
twice.

Open the check with the spec as it goes to the frontier (self-contained, see
``experiments.spec.resolve_task_sets``): both results must carry that spec's hash, as
``experiments.transfer.compare`` requires.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult, LayerProfile
from analoglab.experiments.spec import AnySpec, spec_hash, spec_to_dict
from analoglab.experiments.transfer import TransferReport
from analoglab.tracking import tags
from analoglab.tracking.errors import TrackingError, mlflow_errors
from analoglab.tracking.mapping import MetricValue, flatten, log_batch, safe_key
from analoglab.tracking.plots import plot_overlay
from analoglab.tracking.results import RESULT_FILE, SPEC_FILE, fill_run, result_tags, run_name
from analoglab.tracking.store import DEFAULT_EXPERIMENT, TrackingStore, quiet

if TYPE_CHECKING:
    from mlflow.entities import Run

REPORT_FILE = "transfer_report.json"
BOOTSTRAP_FILE = "transfer_bootstrap.json"


@dataclass
class TransferCheckRun:
    """The MLflow parent run of one transfer check (spec × analog × frontier).

    Build it with :meth:`open`. Attributes: ``run_id`` (the parent's), ``experiment_id``,
    ``spec_hash``, ``analog``, ``frontier``, ``store`` (the tracking store it logs to).
    """

    store: TrackingStore
    experiment_id: str
    run_id: str
    spec: AnySpec
    spec_hash: str
    analog: str
    frontier: str
    _job_id: str | None = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        spec: AnySpec,
        *,
        analog: str,
        frontier: str,
        settings: Settings | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> TransferCheckRun:
        """The transfer check of ``spec`` from ``analog`` to ``frontier``: the existing parent
        run with those tags, or a new one (params: the spec; artifact: ``spec.json``)."""
        store = TrackingStore.open(settings)
        digest = spec_hash(spec)
        key = {
            tags.KIND: tags.KIND_TRANSFER,
            tags.SPEC_HASH: digest,
            tags.ANALOG: analog,
            tags.FRONTIER: frontier,
        }
        with mlflow_errors(store.uri):
            exp_id = store.experiment_id(experiment)
            found = _search(store, exp_id, key)
            if found:
                parent = found[0]
            else:
                parent = store.client.create_run(
                    exp_id,
                    tags={tags.METHOD: spec.method, **key},
                    run_name=f"transfer · {spec.method} · {analog} → {frontier}",
                )
            if parent.data.tags.get(tags.READY) != "1":
                # New, or left by a crash while being set up: (re)log the spec, which is the
                # same spec (its hash is in the tags), and mark the parent ready last.
                log_batch(store.client, parent.info.run_id, params=flatten(spec_to_dict(spec)))
                with quiet():
                    store.client.log_text(
                        parent.info.run_id,
                        json.dumps(spec_to_dict(spec), indent=2) + "\n",
                        SPEC_FILE,
                    )
                store.client.set_tag(parent.info.run_id, tags.READY, "1")
        return cls(
            store=store,
            experiment_id=exp_id,
            run_id=str(parent.info.run_id),
            spec=spec,
            spec_hash=digest,
            analog=analog,
            frontier=frontier,
            _job_id=parent.data.tags.get(tags.JOB_ID),
        )

    @property
    def url(self) -> str | None:
        """The parent run's page in the MLflow UI (where the tracking URI is a server's)."""
        return self.store.run_url(self.experiment_id, self.run_id)

    # -- the queue job -----------------------------------------------------------------------

    @property
    def job_id(self) -> str | None:
        """The queue job of the frontier run (the parent's ``analoglab.job_id`` tag), if set."""
        return self._job_id

    def set_job(self, job_id: str) -> None:
        """Record the frontier's queue job on the parent (replacing an earlier one)."""
        with mlflow_errors(self.store.uri):
            self.store.client.set_tag(self.run_id, tags.JOB_ID, job_id)
        self._job_id = job_id

    # -- children ----------------------------------------------------------------------------

    def log_analog(self, result: ExperimentResult, *, model: str | None = None) -> str:
        """Log the analog's result as a child run (``model`` defaults to the check's analog;
        give another name to add a second analog). Returns the child's run id; see the
        module's docstring for reruns."""
        return self._log_child(result, model=model or self.analog, kind="analog", job_id=None)

    def log_frontier(self, result: ExperimentResult, job_id: str | None = None) -> str:
        """Log the frontier's released result as a child run tagged with its queue job
        (default: :attr:`job_id`). Returns the child's run id."""
        return self._log_child(
            result, model=self.frontier, kind="frontier", job_id=job_id or self._job_id
        )

    def analog_run_id(self, model: str | None = None) -> str | None:
        """The child run of the analog (default: the check's analog), if one was logged."""
        run = self._child(model or self.analog, "analog")
        return None if run is None else str(run.info.run_id)

    def frontier_run_id(self) -> str | None:
        run = self._child(self.frontier, "frontier")
        return None if run is None else str(run.info.run_id)

    def analog_result(self, model: str | None = None) -> ExperimentResult | None:
        """The analog's result as logged (read back from MLflow), or None; only a FINISHED
        child counts."""
        return self._child_result(model or self.analog, "analog")

    def frontier_result(self) -> ExperimentResult | None:
        """The frontier's result as logged, or None."""
        return self._child_result(self.frontier, "frontier")

    # -- the report --------------------------------------------------------------------------

    def log_report(self, report: TransferReport) -> None:
        """The report on the parent: metrics ``transfer.score`` and ``transfer.<part>`` (with
        ``.low`` and ``.high``, the bounds of their 95% intervals, where the report has them),
        the tag ``analoglab.verdict``, the artifacts ``transfer_report.json`` and
        ``transfer_bootstrap.json`` (the bootstrap distribution of the score and of each part),
        an overlay plot of the compared profiles where both children have them; then the
        parent is FINISHED. Logging the same report again changes nothing."""
        if report.spec_hash != self.spec_hash:
            raise TrackingError(
                f"the transfer report is of spec {report.spec_hash[:12]}, this check's spec is "
                f"{self.spec_hash[:12]}"
            )
        if self.report() == report:
            return
        metrics = [MetricValue("transfer.score", report.score)]
        metrics += [MetricValue(f"transfer.{p.name}", p.value) for p in report.parts]
        bounds = [("score", report.score_interval)] + [(p.name, p.interval) for p in report.parts]
        for name, interval in bounds:
            if interval is not None:
                metrics.append(MetricValue(f"transfer.{name}.low", interval.low))
                metrics.append(MetricValue(f"transfer.{name}.high", interval.high))
        with mlflow_errors(self.store.uri):
            log_batch(
                self.store.client,
                self.run_id,
                metrics=metrics,
                tags={tags.VERDICT: report.verdict},
            )
            with tempfile.TemporaryDirectory(prefix="analoglab-mlflow-") as tmp:
                folder = Path(tmp)
                (folder / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
                if report.distribution:
                    boot = {
                        "resamples": report.resamples,
                        "items": report.items,
                        "distribution": report.distribution,
                    }
                    (folder / BOOTSTRAP_FILE).write_text(json.dumps(boot) + "\n")
                self._plot_overlays(folder)
                self.store.upload(self.run_id, folder)
            self.store.finish(self.run_id)

    def report(self) -> TransferReport | None:
        """The report logged on the parent, or None."""
        text = self.store.read_text(self.run_id, REPORT_FILE)
        if text is None:
            return None
        try:
            return TransferReport.model_validate_json(text)
        except ValueError as exc:  # a pydantic ValidationError: a damaged report
            raise TrackingError(
                f"transfer check {self.run_id} holds a damaged {REPORT_FILE} "
                f"({_first_line(exc)}); log the report again"
            ) from exc

    # -- internals ---------------------------------------------------------------------------

    def _log_child(
        self, result: ExperimentResult, *, model: str, kind: tags.ResultKind, job_id: str | None
    ) -> str:
        if result.spec_hash != self.spec_hash:
            raise TrackingError(
                f"the {kind} result of {model} is of spec {result.spec_hash[:12]}, but this "
                f"transfer check's spec is {self.spec_hash[:12]}: run the spec the check was "
                "opened with (self-contained, as submitted to the queue)"
            )
        with mlflow_errors(self.store.uri):
            runs = self._children(model, kind)
            finished = [r for r in runs if r.info.status == "FINISHED"]
            if finished:
                existing = finished[0]
                logged = existing.data.params.get("model.weights_sha256")
                if logged is not None and logged != result.model.weights_sha256:
                    raise TrackingError(
                        f"transfer check {self.run_id} already holds a {kind} run of "
                        f"{model} with other weights ({logged[:12]}); open a check in "
                        "another experiment, or delete that run, to log this one"
                    )
                return str(existing.info.run_id)
            # A child left unfinished (or FAILED) by a crash is deleted, not logged into
            # again: its metrics would be logged twice, and MLflow refuses a param (device,
            # versions) whose value changed. A fresh child takes its place.
            for stale in runs:
                self.store.client.delete_run(stale.info.run_id)
            first_tags = result_tags(result, model=model, kind=kind, job_id=job_id)
            first_tags[tags.PARENT_RUN_ID] = self.run_id
            child = self.store.client.create_run(
                self.experiment_id, tags=first_tags, run_name=run_name(result, model)
            )
            run_id = str(child.info.run_id)
            fill_run(
                self.store,
                run_id,
                self.spec,
                result,
                model=model,
                kind=kind,
                job_id=job_id,
            )
        return run_id

    def _children(self, model: str, kind: tags.ResultKind) -> list[Run]:
        """The active child runs of ``model`` and ``kind``, oldest first."""
        with mlflow_errors(self.store.uri):
            runs = _search(
                self.store,
                self.experiment_id,
                {tags.PARENT_RUN_ID: self.run_id, tags.KIND: kind},
            )
        return [r for r in runs if r.data.tags.get(tags.MODEL) == model]

    def _child(self, model: str, kind: tags.ResultKind) -> Run | None:
        """The child of ``model``: the oldest FINISHED one, else the oldest left unfinished."""
        runs = self._children(model, kind)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        first = finished or runs
        return first[0] if first else None

    def _child_result(self, model: str, kind: tags.ResultKind) -> ExperimentResult | None:
        run = self._child(model, kind)
        if run is None or run.info.status != "FINISHED":
            return None
        run_id = str(run.info.run_id)
        text = self.store.read_text(run_id, RESULT_FILE)
        if text is None:
            return None
        try:
            return ExperimentResult.model_validate_json(text)
        except ValueError as exc:  # a pydantic ValidationError: a damaged result.json
            raise TrackingError(
                f"the {kind} run {run_id} of {model} holds a damaged {RESULT_FILE} "
                f"({_first_line(exc)}); delete that run and log the result again"
            ) from exc

    def _plot_overlays(self, folder: Path) -> None:
        analog, frontier = self.analog_result(), self.frontier_result()
        if analog is None or frontier is None:
            return
        for name in sorted(set(analog.profiles) & set(frontier.profiles)):
            profiles: dict[str, LayerProfile] = {
                f"{self.analog} (analog)": analog.profiles[name],
                f"{self.frontier} (frontier)": frontier.profiles[name],
            }
            if all(p.values for p in profiles.values()):
                plot_overlay(
                    profiles,
                    name=name,
                    title=f"{self.spec.method}: {name}, {self.analog} vs {self.frontier}",
                    path=folder / "plots" / f"{safe_key(name)}.png",
                )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _search(store: TrackingStore, experiment_id: str, match: dict[str, str]) -> list[Run]:
    """Active runs with these exact tags, oldest first (values with quotes are compared here,
    not in MLflow's filter)."""
    quotable = {k: v for k, v in match.items() if "'" not in v and "\\" not in v}
    runs = store.client.search_runs(
        [experiment_id],
        filter_string=tags.tag_filter(quotable),
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in match.items())]
