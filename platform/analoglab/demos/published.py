"""What researchers and labs published, read from MLflow for the demo (read only).

**Published steering vectors.** A steering result run (``analoglab.kind = analog``,
``analoglab.method = steering``) is shown in the demo once it carries the tag
``analoglab.public = "1"`` — set by whoever may decide it (the researcher who logged it, or
an admin) with :func:`publish` or ``analoglab demo publish RUN_ID``; the demo itself never
writes to MLflow. The vector is rebuilt on the analog named by the run's ``analoglab.model``
from the run's own ``spec.json`` (its contrast pairs, at most :data:`MAX_PAIRS`) at the block
of its ``best_depth`` metric, so what a visitor turns up is exactly the finding the run logged.

**Released transfer checks.** The board shows transfer-check parent runs
(``analoglab.kind = transfer``) that carry a verdict and a queue job: the frontier's side
came through the gated queue and its result was released by the lab. Checks run without the
queue (a laptop holding the frontier itself) are not shown. A row's **layer profiles** (the
analog's and the frontier's, on one relative-depth axis) are read from the check's two child
runs' ``result.json``, and only for a run the board shows.

Every query is cached for :data:`CACHE_SECONDS` (by default), so a busy demo asks MLflow
little; an MLflow that cannot be reached gives an empty list and a sentence saying so, never
an error page.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from analoglab.config import Settings
from analoglab.errors import AnalogLabError
from analoglab.tracking import tags
from analoglab.tracking.store import DEFAULT_EXPERIMENT, TrackingStore

PUBLIC = "analoglab.public"
"""The tag that marks a steering result as published: shown in the public demo."""
MAX_PAIRS = 256
MAX_RUNS = 500
CACHE_SECONDS = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class PublishedSteering:
    """A published steering result: where the demo rebuilds its vector from."""

    run_id: str
    analog: str
    description: str
    best_depth: float
    effect: float | None
    pairs: list[tuple[str, str]]
    spec_hash: str
    url: str | None


@dataclass(frozen=True)
class TransferRow:
    """One released transfer check, as the board shows it."""

    run_id: str
    lab: str
    frontier: str
    analog: str
    method: str
    verdict: str
    score: float | None
    low: float | None
    high: float | None
    parts: dict[str, float]
    spec_hash: str
    url: str | None


@dataclass
class Published:
    """Read-only access to what was published, cached; see the module docstring."""

    settings: Settings
    link_base: str | None = None
    """The MLflow UI as visitors reach it (``https://hub/services/mlflow``); None: no links."""
    experiment: str = DEFAULT_EXPERIMENT
    cache_seconds: float = CACHE_SECONDS
    problem: str = ""
    """Why the last query found nothing it could read (MLflow unreachable), or ''."""
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _store: TrackingStore | None = field(default=None, repr=False)

    def steering(self) -> list[PublishedSteering]:
        """Every published steering result, newest first."""
        return self._cached("steering", self._steering)

    def transfers(self) -> list[TransferRow]:
        """Every released transfer check, newest first."""
        return self._cached("transfers", self._transfers)

    def verdict(self, spec_hash: str, analog: str) -> TransferRow | None:
        """The released transfer check of this finding (spec and analog), if there is one."""
        for row in self.transfers():
            if row.spec_hash == spec_hash and row.analog == analog:
                return row
        return None

    def profiles(self, run_id: str) -> RowProfiles | None:
        """The analog's and the frontier's layer profiles of a released check on the board
        (None for a run the board does not show: nothing else is read)."""
        row = next((r for r in self.transfers() if r.run_id == run_id), None)
        if row is None:
            return None
        found = self._cached(f"profiles:{run_id}", lambda: [self._profiles(row)])
        return found[0] if found else None

    def forget(self) -> None:
        """Drop the cache (the next query asks MLflow again)."""
        with self._lock:
            self._cache.clear()

    # -- querying --------------------------------------------------------------------------

    def _cached(self, key: str, fetch: Callable[[], list[T]]) -> list[T]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.cache_seconds:
                value: list[T] = hit[1]
                return value
        try:
            fresh = fetch()
            self.problem = ""
        except Exception:  # MLflow raises many types; the demo shows a sentence instead
            fresh = []
            self.problem = "the results store cannot be reached right now; try again later"
        with self._lock:
            self._cache[key] = (now, fresh)
        return fresh

    def _runs(self, match: dict[str, str]) -> tuple[str | None, list[Any]]:
        if self._store is None:
            self._store = TrackingStore.open(self.settings)
        client = self._store.client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None, []
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=tags.tag_filter(match),
            max_results=MAX_RUNS,
            order_by=["attributes.start_time DESC"],
        )
        return str(experiment.experiment_id), list(runs)

    def _link(self, experiment_id: str, run_id: str) -> str | None:
        if not self.link_base:
            return None
        return f"{self.link_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def _steering(self) -> list[PublishedSteering]:
        exp_id, runs = self._runs({tags.KIND: "analog", tags.METHOD: "steering", PUBLIC: "1"})
        found: list[PublishedSteering] = []
        for run in runs:
            if run.info.status != "FINISHED":
                continue
            try:
                found.append(self._published(exp_id or "", run))
            except AnalogLabError:
                continue  # a run whose spec cannot be read back is not shown
        return found

    def _published(self, exp_id: str, run: Any) -> PublishedSteering:
        from analoglab.experiments.methods.common import pairs_of
        from analoglab.experiments.spec import SteeringSpec, parse_spec, resolve_task_sets

        assert self._store is not None
        run_id = str(run.info.run_id)
        text = self._store.read_text(run_id, "spec.json")
        if text is None:
            raise AnalogLabError(f"run {run_id} has no spec.json")
        spec = resolve_task_sets(parse_spec(json.loads(text)))
        if not isinstance(spec, SteeringSpec):
            raise AnalogLabError(f"run {run_id} is not a steering result")
        pairs = [(p.positive, p.negative) for p in pairs_of(spec.contrast, "contrast", "steering")]
        metrics = run.data.metrics
        return PublishedSteering(
            run_id=run_id,
            analog=run.data.tags.get(tags.MODEL, ""),
            description=(spec.description or "steering").strip()[:200],
            best_depth=float(metrics.get("best_depth", 0.5)),
            effect=_float(metrics.get("effect")),
            pairs=pairs[:MAX_PAIRS],
            spec_hash=run.data.tags.get(tags.SPEC_HASH, ""),
            url=self._link(exp_id, run_id),
        )

    def _transfers(self) -> list[TransferRow]:
        from analoglab.models.catalog import Catalog

        exp_id, runs = self._runs({tags.KIND: tags.KIND_TRANSFER})
        labs = {f.id: f.lab for f in Catalog.load(self.settings).frontiers()}
        rows: list[TransferRow] = []
        for run in runs:
            t, m = run.data.tags, run.data.metrics
            verdict, job = t.get(tags.VERDICT), t.get(tags.JOB_ID)
            if not verdict or not job:
                continue  # not released through the queue
            parts = {
                k.removeprefix("transfer."): float(v)
                for k, v in m.items()
                if k.startswith("transfer.")
                and k != "transfer.score"
                and not k.endswith((".low", ".high"))
            }
            frontier = t.get(tags.FRONTIER, "")
            rows.append(
                TransferRow(
                    run_id=str(run.info.run_id),
                    lab=labs.get(frontier, "?"),
                    frontier=frontier,
                    analog=t.get(tags.ANALOG, ""),
                    method=t.get(tags.METHOD, ""),
                    verdict=verdict,
                    score=_float(m.get("transfer.score")),
                    low=_float(m.get("transfer.score.low")),
                    high=_float(m.get("transfer.score.high")),
                    parts=parts,
                    spec_hash=t.get(tags.SPEC_HASH, ""),
                    url=self._link(exp_id or "", str(run.info.run_id)),
                )
            )
        return rows

    def _profiles(self, row: TransferRow) -> RowProfiles:
        from analoglab.experiments.result import ExperimentResult
        from analoglab.tracking.results import RESULT_FILE

        assert self._store is not None  # transfers() opened it
        client = self._store.client
        runs = client.search_runs(
            [client.get_run(row.run_id).info.experiment_id],
            filter_string=tags.tag_filter({tags.PARENT_RUN_ID: row.run_id}),
            max_results=20,
            order_by=["attributes.start_time ASC"],
        )
        results: dict[str, ExperimentResult] = {}
        for run in runs:
            kind = run.data.tags.get(tags.KIND)
            if run.info.status != "FINISHED" or kind not in ("analog", "frontier"):
                continue
            if kind in results:
                continue  # the oldest finished child is the one the check compared
            text = self._store.read_text(str(run.info.run_id), RESULT_FILE)
            if text is not None:
                results[kind] = ExperimentResult.model_validate_json(text)
        analog, frontier = results.get("analog"), results.get("frontier")
        profiles: dict[str, tuple[Curve, Curve]] = {}
        if analog is not None and frontier is not None:
            for name in sorted(set(analog.profiles) & set(frontier.profiles)):
                profiles[name] = (_curve(analog.profiles[name]), _curve(frontier.profiles[name]))
        return RowProfiles(row=row, profiles=profiles)


Curve = list[tuple[float, float, int]]
"""A layer profile as (relative depth, value, block index) points."""


@dataclass(frozen=True)
class RowProfiles:
    """A released check's layer profiles: name → (analog, frontier), each a list of
    (relative depth, value, block index)."""

    row: TransferRow
    profiles: dict[str, tuple[Curve, Curve]]


def _curve(profile: Any) -> Curve:
    return [
        (float(d), float(v), int(i))
        for d, v, i in zip(profile.depths, profile.values, profile.indices, strict=True)
    ]


def publish(run_id: str, settings: Settings | None = None, public: bool = True) -> None:
    """Mark a steering result run as published (or withdraw it with ``public=False``)."""
    from analoglab.tracking.errors import TrackingError, mlflow_errors

    store = TrackingStore.open(settings)
    with mlflow_errors(store.uri):
        run = store.client.get_run(run_id)
        t = run.data.tags
        if t.get(tags.KIND) != "analog" or t.get(tags.METHOD) != "steering":
            raise TrackingError(
                f"run {run_id} is not a steering result on an analog; only those can be "
                "published to the demo"
            )
        if public:
            store.client.set_tag(run_id, PUBLIC, "1")
        else:
            store.client.delete_tag(run_id, PUBLIC)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
