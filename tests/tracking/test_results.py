"""log_result: what one run holds, read back through MlflowClient, on both kinds of store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.spec import AnySpec, parse_spec, spec_to_dict
from analoglab.models.card import Architecture
from analoglab.models.catalog import FrontierModel, Lab, save_lab
from analoglab.tracking import TrackingError, TrackingStore, log_result

MakeResult = Callable[..., ExperimentResult]
PNG = b"\x89PNG\r\n\x1a\n"


def download(store: TrackingStore, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(store.client.download_artifacts(run_id, path, dst_path=str(tmp_path)))


def test_a_result_is_logged_in_full(
    backend: Settings,
    experiment: str,
    spec: AnySpec,
    make_result: MakeResult,
    tmp_path: Path,
) -> None:
    result = make_result(spec, "tiny-analog", values=[0.5, 0.9, 0.7])
    run_id = log_result(
        spec, result, model="tiny-analog", job_id="job-7", settings=backend, experiment=experiment
    )
    store = TrackingStore.open(backend)
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.info.experiment_id == store.experiment_id(experiment)
    tags = run.data.tags
    assert tags["analoglab.model"] == "tiny-analog"
    assert tags["analoglab.method"] == "probe"
    assert tags["analoglab.job_id"] == "job-7"
    assert tags["analoglab.spec_hash"] == result.spec_hash
    assert tags["analoglab.kind"] == "analog"
    assert "mlflow.parentRunId" not in tags
    params = run.data.params
    assert params["method"] == "probe" and params["layers.depths"] == "[0.0,0.5,1.0]"
    assert params["data.kind"] == "labelled" and params["data.items"].startswith("[8 items]")
    assert params["model.weights_sha256"] == "a" * 64 and params["model.layers"] == "3"
    assert params["device"] == "cpu" and params["version.analoglab"] == "test"
    metrics = run.data.metrics
    assert metrics["effect"] == pytest.approx(0.6) and metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["accuracy.pos_neg_"] == pytest.approx(0.75)  # a name MLflow refuses, mended
    assert metrics["profile.accuracy.peak_depth"] == pytest.approx(0.5)
    assert metrics["timing.total_seconds"] == pytest.approx(0.25)
    assert metrics["result.size_bytes"] == result.size_bytes
    history = store.client.get_metric_history(run_id, "profile.accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.9), (2, 0.7)]
    # Artifacts: the spec and the result as JSON, a PNG per profile.
    names = {f.path for f in store.client.list_artifacts(run_id)}
    assert names == {"spec.json", "result.json", "plots"}
    spec_back = json.loads(download(store, run_id, "spec.json", tmp_path).read_text())
    assert parse_spec(spec_back) == spec
    result_back = download(store, run_id, "result.json", tmp_path).read_text()
    assert ExperimentResult.model_validate_json(result_back) == result
    plots = [f.path for f in store.client.list_artifacts(run_id, "plots")]
    assert plots == ["plots/accuracy.png"]
    png = download(store, run_id, "plots/accuracy.png", tmp_path).read_bytes()
    assert png.startswith(PNG) and len(png) > 5000
    if backend.mlflow_tracking_uri is None:  # the embedded store keeps them in the data folder
        assert (backend.home / "mlflow" / "artifacts" / experiment).is_dir()


def test_kind_parent_and_long_values(
    backend: Settings, experiment: str, spec: AnySpec, make_result: MakeResult, tmp_path: Path
) -> None:
    save_lab(
        Lab(
            id="lab",
            name="Lab",
            frontiers=[
                FrontierModel(
                    id="big-frontier",
                    lab="lab",
                    architecture=Architecture(
                        model_type="llama", layers=8, hidden_size=64, heads=4, vocab_size=512
                    ),
                    parameters=10_000,
                    trained=dt.date(2026, 1, 1),
                )
            ],
        ),
        backend,
    )
    long_spec = parse_spec({**spec_to_dict(spec), "description": "why " * 600})
    parent = log_result(
        spec, make_result(spec, "a"), model="a", settings=backend, experiment=experiment
    )
    child = log_result(
        long_spec,
        make_result(long_spec, "big-frontier"),
        model="big-frontier",
        parent_run_id=parent,
        settings=backend,
        experiment=experiment,
    )
    store = TrackingStore.open(backend)
    run = store.client.get_run(child)
    assert run.data.tags["analoglab.kind"] == "frontier"  # a frontier id of the catalog
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert "analoglab.job_id" not in run.data.tags
    description = run.data.params["description"]
    assert len(description) == 500 and description.endswith("…")
    full = json.loads(download(store, child, "spec.json", tmp_path).read_text())
    assert full["description"] == "why " * 600


def test_a_result_of_another_spec_is_refused(
    backend: Settings, experiment: str, spec: AnySpec, make_result: MakeResult
) -> None:
    other = parse_spec({**spec_to_dict(spec), "seed": 99})
    with pytest.raises(TrackingError, match="not produced by this spec"):
        log_result(
            other, make_result(spec, "a"), model="a", settings=backend, experiment=experiment
        )
    store = TrackingStore.open(backend)
    exp = store.client.get_experiment_by_name(experiment)
    assert exp is None or not store.client.search_runs([exp.experiment_id])


def test_an_unreachable_server_is_one_error(
    tmp_path: Path, spec: AnySpec, make_result: MakeResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri="http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="MLflow at http://127.0.0.1:9"):
        log_result(spec, make_result(spec, "a"), model="a", settings=settings)
