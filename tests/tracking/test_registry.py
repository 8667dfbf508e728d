"""register_analogs: each analog card in the model registry with its lineage, once per weights."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.models.card import (
    AnalogCard,
    Architecture,
    Distillation,
    Fidelity,
    Release,
    TaskScore,
    read_card,
    write_card,
)
from analoglab.models.catalog import Catalog, FrontierModel, Lab, save_lab
from analoglab.tracking import TrackingStore, register_analogs


def card(name: str, frontier: str, lab: str, weights: str) -> AnalogCard:
    return AnalogCard(
        name=name,
        lab=lab,
        frontier=frontier,
        description="A test analog.",
        architecture=Architecture(
            model_type="llama", layers=2, hidden_size=32, heads=2, vocab_size=512
        ),
        parameters=20_000,
        frontier_parameters=100_000,
        parameter_ratio=0.2,
        distillation=Distillation(
            method="logit-kl+hidden",
            teacher=frontier,
            matched_layers=[(0, 1), (1, 3)],
            data="toy corpus",
            steps=100,
            batch_size=8,
            seq_len=32,
            tokens_seen=25_600,
            seed=1,
        ),
        fidelity=Fidelity(
            heldout_tokens=4096,
            kl=0.125,
            top1_agreement=0.875,
            tasks={"sentiment": TaskScore(frontier=0.9, analog=0.8, items=64)},
        ),
        release=Release(date=dt.date(2026, 11, 1), frontier_date=dt.date(2026, 10, 1), lag_days=31),
        weights_sha256=weights * 64,
    )


def make_catalog(settings: Settings, suffix: str) -> tuple[str, str, str]:
    """A lab with a frontier and two analogs (names made unique: the server is shared)."""
    lab, frontier = f"lab-{suffix}", f"frontier-{suffix}"
    small, medium = f"analog-s-{suffix}", f"analog-m-{suffix}"
    save_lab(
        Lab(
            id=lab,
            name="Test lab",
            frontiers=[
                FrontierModel(
                    id=frontier,
                    lab=lab,
                    description="The lab's frontier.",
                    architecture=Architecture(
                        model_type="llama", layers=4, hidden_size=64, heads=4, vocab_size=512
                    ),
                    parameters=100_000,
                    trained=dt.date(2026, 10, 1),
                )
            ],
        ),
        settings,
    )
    for name, weights in ((small, "1"), (medium, "2")):
        folder = settings.models_path / name
        folder.mkdir(parents=True)
        write_card(folder, card(name, frontier, lab, weights))
    return frontier, small, medium


def test_analogs_are_registered_with_lineage_once_per_weights(
    backend: Settings, experiment: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    frontier, small, medium = make_catalog(backend, suffix)
    first = register_analogs(settings=backend, experiment=experiment)
    assert {(r.name, r.status, r.version) for r in first} == {
        (small, "registered", "1"),
        (medium, "registered", "1"),
    }
    store = TrackingStore.open(backend)
    client = store.client
    for name in (small, medium):
        model = client.get_registered_model(name)
        assert model.tags["analoglab.kind"] == "analog"
        assert model.tags["analoglab.frontier"] == frontier
        assert model.tags["analoglab.lab"] == f"lab-{suffix}"
        assert model.tags["analoglab.fidelity.kl"] == "0.1250"
        assert f"An analog of **{frontier}**" in (model.description or "")
        (version,) = client.search_model_versions(f"name = '{name}'")
        weights = read_card(backend.models_path / name).weights_sha256
        assert version.tags["analoglab.weights_sha256"] == weights
        assert version.tags["analoglab.frontier"] == frontier
        run = client.get_run(version.run_id)
        assert run.data.tags["analoglab.kind"] == "card"
        assert run.data.metrics["fidelity.kl"] == 0.125
        assert run.data.metrics["fidelity.task.sentiment.analog"] == 0.8
        assert run.data.params["distillation.teacher"] == frontier
        files = {f.path for f in client.list_artifacts(run.info.run_id, "card")}
        assert files == {"card/analog.json", "card/README.md"}
        # The version's source is the logged card: it downloads and parses as the card.
        local = Path(client.download_artifacts(run.info.run_id, "card", str(tmp_path / name)))
        assert read_card(local) == read_card(backend.models_path / name)
        assert version.source.rstrip("/").endswith(f"{run.info.run_id}/artifacts/card")
    front = client.get_registered_model(frontier)
    assert front.tags["analoglab.kind"] == "frontier"
    assert front.tags["analoglab.analogs"] == ",".join(sorted([small, medium]))
    assert "The lab's frontier." in (front.description or "")
    assert not client.search_model_versions(f"name = '{frontier}'")  # weights stay at the lab

    # Rerun: nothing new. New weights for one analog: a second version of it only.
    again = register_analogs(Catalog.load(backend), settings=backend, experiment=experiment)
    assert {r.status for r in again} == {"unchanged"}
    assert {r.run_id for r in again} == {r.run_id for r in first}
    rebuilt = read_card(backend.models_path / small).model_copy(update={"weights_sha256": "9" * 64})
    write_card(backend.models_path / small, rebuilt)
    third = {r.name: r for r in register_analogs(settings=backend, experiment=experiment)}
    assert (third[small].status, third[small].version) == ("new_version", "2")
    assert third[medium].status == "unchanged"
    assert len(client.search_model_versions(f"name = '{small}'")) == 2
    assert len(client.search_model_versions(f"name = '{medium}'")) == 1
    cards = client.search_runs(
        [store.experiment_id(experiment)], filter_string="tags.`analoglab.kind` = 'card'"
    )
    assert len(cards) == 3


def test_an_empty_store_registers_nothing(fresh_home: Settings) -> None:
    assert register_analogs(settings=fresh_home) == []


def test_a_card_run_left_without_its_version_is_reused(
    fresh_home: Settings, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    _, small, medium = make_catalog(fresh_home, uuid.uuid4().hex[:8])

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies after the card run, before the version

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "create_model_version", killed)
        with pytest.raises(KeyboardInterrupt):
            register_analogs(settings=fresh_home, experiment=experiment)
    store = TrackingStore.open(fresh_home)
    exp = store.experiment_id(experiment)
    (logged,) = store.client.search_runs([exp], filter_string="tags.`analoglab.kind` = 'card'")
    assert logged.info.status == "FINISHED"

    done = {r.name: r for r in register_analogs(settings=fresh_home, experiment=experiment)}
    first = done[logged.data.tags["analoglab.model"]]
    assert (first.status, first.version, first.run_id) == ("registered", "1", logged.info.run_id)
    cards = store.client.search_runs([exp], filter_string="tags.`analoglab.kind` = 'card'")
    assert sorted(r.data.tags["analoglab.model"] for r in cards) == sorted([small, medium])
    for name in (small, medium):
        assert len(store.client.search_model_versions(f"name = '{name}'")) == 1
    (logged_metric,) = store.client.get_metric_history(logged.info.run_id, "fidelity.kl")
    assert logged_metric.value == 0.125  # the reused run was not logged into twice
