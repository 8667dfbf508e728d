"""Analog cards in MLflow: a run per card and a registered model per analog, with lineage.

:func:`register_analogs` goes through the analogs of the catalog. For each one:

- a **registered model** named after the analog, its description the card's README, its tags
  the lineage: ``analoglab.kind=analog``, ``analoglab.frontier``, ``analoglab.lab``, sizes
  and fidelity headline;
- when no version of it has the card's weights hash yet: a **run** in the experiment
  ``analoglab-analogs`` logging the card (params: architecture, distillation, sizes; metrics:
  fidelity KL, top-1 agreement, task accuracies of both models; artifacts ``card/analog.json``
  and ``card/README.md``), and a **model version** whose source is that run's ``card``
  folder, tagged with the weights hash, the frontier and the lab. The weights stay in the
  model store (``analoglab.path`` tells where); the registry records the card.

The frontier of each analog gets a registered model too (``analoglab.kind=frontier``, its lab,
its analogs), without versions: frontier weights never leave the lab. So the Models page of
the MLflow UI lists each frontier next to its analogs.

Rerunning is safe: an analog whose weights hash is already registered gets no new version
(its registered model's description and tags are brought up to date). A card run that a
crash left without its model version is found again by its tags (``analoglab.kind=card``,
``analoglab.model``, ``analoglab.weights_sha256``) and reused when FINISHED (deleted and
logged again when not), so a rerun never logs a second card run for the same weights.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from analoglab.config import Settings
from analoglab.models.card import CARD_FILE, README_FILE, AnalogCard, render_readme
from analoglab.models.catalog import AnalogEntry, Catalog, FrontierModel
from analoglab.tracking import tags
from analoglab.tracking.errors import mlflow_errors
from analoglab.tracking.mapping import MetricValue, flatten, log_batch
from analoglab.tracking.store import TrackingStore

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

CARDS_EXPERIMENT = "analoglab-analogs"
CARD_FOLDER = "card"

Status = Literal["registered", "new_version", "unchanged"]


@dataclass(frozen=True)
class AnalogRegistration:
    """What :func:`register_analogs` did for one analog."""

    name: str
    frontier: str
    lab: str
    version: str
    run_id: str
    status: Status
    weights_sha256: str

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "frontier": self.frontier,
            "lab": self.lab,
            "version": self.version,
            "run_id": self.run_id,
            "status": self.status,
            "weights_sha256": self.weights_sha256,
        }


def card_params(card: AnalogCard) -> dict[str, str]:
    d = card.distillation
    params = flatten(card.architecture.model_dump(mode="json"), prefix="architecture.")
    params.update(
        flatten(
            {
                "name": card.name,
                "lab": card.lab,
                "frontier": card.frontier,
                "parameters": card.parameters,
                "frontier_parameters": card.frontier_parameters,
                "license": card.license,
                "weights_sha256": card.weights_sha256,
                "release": card.release.model_dump(mode="json"),
                "distillation": d.model_dump(mode="json", exclude={"matched_layers"}),
            }
        )
    )
    return params


def card_metrics(card: AnalogCard) -> list[MetricValue]:
    metrics = [MetricValue("parameter_ratio", card.parameter_ratio)]
    f = card.fidelity
    if f is None:
        return metrics
    metrics += [
        MetricValue("fidelity.kl", f.kl),
        MetricValue("fidelity.top1_agreement", f.top1_agreement),
        MetricValue("fidelity.heldout_tokens", float(f.heldout_tokens)),
    ]
    for task, score in f.tasks.items():
        metrics += [
            MetricValue(f"fidelity.task.{task}.analog", score.analog),
            MetricValue(f"fidelity.task.{task}.frontier", score.frontier),
        ]
    if f.scratch_baseline:
        metrics += [
            MetricValue("fidelity.scratch.kl", f.scratch_baseline.kl),
            MetricValue("fidelity.scratch.top1_agreement", f.scratch_baseline.top1_agreement),
        ]
    return metrics


def model_tags(card: AnalogCard, path: Path) -> dict[str, str]:
    """The registered model's tags: its lineage and headline numbers."""
    out = {
        tags.KIND: "analog",
        tags.FRONTIER: card.frontier,
        tags.LAB: card.lab,
        "analoglab.parameters": str(card.parameters),
        "analoglab.parameter_ratio": f"{card.parameter_ratio:.4f}",
        "analoglab.path": str(path),
        "analoglab.license": card.license,
    }
    if card.fidelity:
        out["analoglab.fidelity.kl"] = f"{card.fidelity.kl:.4f}"
        out["analoglab.fidelity.top1_agreement"] = f"{card.fidelity.top1_agreement:.4f}"
    return out


def _ensure_registered_model(
    store: TrackingStore, name: str, description: str, model_tags: dict[str, str]
) -> None:
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        current = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, tags=model_tags, description=description)
        return
    if (current.description or "") != description:
        client.update_registered_model(name, description=description)
    for key, value in model_tags.items():
        if current.tags.get(key) != value:
            client.set_registered_model_tag(name, key, value)


def _versions(store: TrackingStore, name: str) -> list[ModelVersion]:
    found = store.client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def _card_run(
    store: TrackingStore, exp_id: str, card: AnalogCard, versions: list[ModelVersion]
) -> Run | None:
    """The card run of these weights that a crash left without its model version: the
    oldest FINISHED one, reused. Card runs of these weights left unfinished are deleted
    (their card is logged again in a fresh run)."""
    runs = store.client.search_runs(
        [exp_id],
        filter_string=tags.tag_filter(
            {tags.KIND: tags.KIND_CARD, tags.WEIGHTS_SHA256: card.weights_sha256}
        ),
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    taken = {str(v.run_id) for v in versions if v.run_id}
    mine = [
        r
        for r in runs
        if r.data.tags.get(tags.MODEL) == card.name and str(r.info.run_id) not in taken
    ]
    finished = [r for r in mine if r.info.status == "FINISHED"]
    if finished:
        return finished[0]
    for stale in mine:
        store.client.delete_run(stale.info.run_id)
    return None


def register_analog(
    entry: AnalogEntry, store: TrackingStore, *, experiment: str = CARDS_EXPERIMENT
) -> AnalogRegistration:
    """Register one analog (see the module's docstring); idempotent on its weights hash."""
    card = entry.card
    base = {
        "name": card.name,
        "frontier": card.frontier,
        "lab": card.lab,
        "weights_sha256": card.weights_sha256,
    }
    with mlflow_errors(store.uri):
        _ensure_registered_model(
            store, card.name, render_readme(card), model_tags(card, entry.path)
        )
        versions = _versions(store, card.name)
        for version in versions:
            if version.tags.get(tags.WEIGHTS_SHA256) == card.weights_sha256:
                return AnalogRegistration(
                    **base,
                    version=str(version.version),
                    run_id=str(version.run_id or ""),
                    status="unchanged",
                )
        exp_id = store.experiment_id(experiment)
        run = _card_run(store, exp_id, card, versions)
        if run is None:
            run = store.client.create_run(
                exp_id,
                tags={
                    tags.KIND: tags.KIND_CARD,
                    tags.MODEL: card.name,
                    tags.FRONTIER: card.frontier,
                    tags.LAB: card.lab,
                    tags.WEIGHTS_SHA256: card.weights_sha256,
                },
                run_name=f"card · {card.name}",
            )
            run_id = str(run.info.run_id)
            log_batch(store.client, run_id, params=card_params(card), metrics=card_metrics(card))
            with tempfile.TemporaryDirectory(prefix="analoglab-mlflow-") as tmp:
                folder = Path(tmp)
                (folder / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
                (folder / README_FILE).write_text(render_readme(card))
                store.upload(run_id, folder, artifact_path=CARD_FOLDER)
            store.finish(run_id)
        run_id = str(run.info.run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{CARD_FOLDER}"
        version = store.client.create_model_version(
            card.name,
            source,
            run_id=run_id,
            tags={
                tags.WEIGHTS_SHA256: card.weights_sha256,
                tags.FRONTIER: card.frontier,
                tags.LAB: card.lab,
            },
            description=(
                f"{card.name}: analog of {card.frontier} ({card.lab}), weights "
                f"{card.weights_sha256[:12]}, released {card.release.date}"
            ),
            run_link=store.run_url(exp_id, run_id),
            await_creation_for=0,
        )
    return AnalogRegistration(
        **base,
        version=str(version.version),
        run_id=run_id,
        status="new_version" if versions else "registered",
    )


def register_frontier(
    frontier_id: str,
    store: TrackingStore,
    *,
    analogs: list[str],
    lab: str,
    entry: FrontierModel | None = None,
) -> None:
    """A registered model without versions for a frontier: its lab and its analogs."""
    lines = [
        f"# {frontier_id}",
        "",
        f"Frontier model of **{lab}**. Its weights stay at the lab: this entry has no "
        "versions. Its analogs: " + ", ".join(f"**{a}**" for a in analogs) + ".",
    ]
    frontier_tags = {
        tags.KIND: "frontier",
        tags.LAB: lab,
        tags.ANALOGS: ",".join(analogs),
    }
    if entry is not None:
        if entry.description:
            lines += ["", entry.description]
        frontier_tags["analoglab.parameters"] = str(entry.parameters)
    with mlflow_errors(store.uri):
        _ensure_registered_model(store, frontier_id, "\n".join(lines) + "\n", frontier_tags)


def register_analogs(
    catalog: Catalog | None = None,
    *,
    settings: Settings | None = None,
    experiment: str = CARDS_EXPERIMENT,
) -> list[AnalogRegistration]:
    """Register every analog of ``catalog`` (default: the catalog of ``settings``) and their
    frontiers in the MLflow model registry; return what was done for each analog."""
    store = TrackingStore.open(settings)
    catalog = catalog or Catalog.load(store.settings)
    done = [register_analog(entry, store, experiment=experiment) for entry in catalog.analogs]
    known = {f.id: f for f in catalog.frontiers()}
    lineage: dict[str, tuple[str, list[str]]] = {}
    for entry in catalog.analogs:
        lab, names = lineage.setdefault(entry.card.frontier, (entry.card.lab, []))
        names.append(entry.name)
    for frontier_id, (lab, names) in sorted(lineage.items()):
        register_frontier(
            frontier_id, store, analogs=sorted(names), lab=lab, entry=known.get(frontier_id)
        )
    return done
