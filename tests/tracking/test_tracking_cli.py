"""The commands: ``run --track`` on a tiny model, ``tracking register-analogs``, ``tracking
server`` (whose real process is the session's server)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.spec import AnySpec
from analoglab.tracking import TrackingStore, log_result
from analoglab.tracking.store import quiet

PROBE_SPEC = {
    "method": "probe",
    "data": {"kind": "task_set", "name": "sentiment", "n": 40},
    "layers": {"depths": [0.0, 0.5, 1.0]},
}


def point_at_tiny(monkeypatch: pytest.MonkeyPatch, tiny: Settings, home: Settings) -> None:
    """The tiny foundry's models and catalog, with ``home`` (and its store) as data folder:
    the shared tiny folder is read, never written."""
    monkeypatch.setenv("ANALOGLAB_HOME", str(home.home))
    monkeypatch.setenv("ANALOGLAB_MODEL_STORE", str(tiny.models_path))
    monkeypatch.setenv("ANALOGLAB_CATALOG_DIR", str(tiny.catalog_path))
    monkeypatch.setenv("ANALOGLAB_LAB_SITES_DIR", str(tiny.lab_sites_path))
    if home.mlflow_tracking_uri:
        monkeypatch.setenv("ANALOGLAB_MLFLOW_TRACKING_URI", home.mlflow_tracking_uri)


@pytest.mark.slow
def test_run_track_logs_a_real_experiment(
    backend: Settings, tiny_home: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    point_at_tiny(monkeypatch, tiny_home, backend)
    spec_file = tmp_path / "probe.json"
    spec_file.write_text(json.dumps(PROBE_SPEC))
    result = CliRunner().invoke(
        app,
        ["run", str(spec_file), "--model", "tiny-analog-s", "--json", "--track", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.stderr
    printed = ExperimentResult.model_validate_json(result.stdout)  # stdout: only the JSON
    found = re.search(r"logged to MLflow: run ([0-9a-f]{32}) \((\S+)\)", result.stderr)
    assert found, result.stderr
    run_id, where = found.groups()
    store = TrackingStore.open(Settings())
    if backend.mlflow_tracking_uri:
        exp = store.experiment_id("analoglab")
        assert where == f"{backend.mlflow_tracking_uri}/#/experiments/{exp}/runs/{run_id}"
    else:
        assert where == f"sqlite:///{backend.home / 'mlflow' / 'mlflow.db'}"
    run = store.client.get_run(run_id)
    assert run.data.tags["analoglab.model"] == "tiny-analog-s"
    assert run.data.tags["analoglab.kind"] == "analog"
    assert run.data.tags["analoglab.spec_hash"] == printed.spec_hash
    assert run.data.params["data.name"] == "sentiment"  # the spec as given: a task set
    assert run.data.metrics["effect"] == pytest.approx(printed.metrics["effect"])
    history = store.client.get_metric_history(run_id, "profile.accuracy")
    assert sorted(m.step for m in history) == printed.profiles["accuracy"].indices
    with quiet():
        logged = store.client.download_artifacts(run_id, "result.json", str(tmp_path / "dl"))
    assert ExperimentResult.model_validate_json(Path(logged).read_text()) == printed


@pytest.mark.slow
def test_register_analogs_command_is_idempotent(
    fresh_home: Settings, tiny_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at_tiny(monkeypatch, tiny_home, fresh_home)
    runner = CliRunner()
    first = runner.invoke(app, ["tracking", "register-analogs", "--json"])
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["tracking_uri"].endswith("/mlflow/mlflow.db")
    rows = {r["name"]: r for r in data["analogs"]}
    assert set(rows) == {"tiny-analog-s", "tiny-analog-m"}
    assert {r["status"] for r in rows.values()} == {"registered"}
    assert {r["frontier"] for r in rows.values()} == {"tiny-frontier"}
    second = runner.invoke(app, ["tracking", "register-analogs"])
    assert second.exit_code == 0, second.stderr
    lines = second.stdout.splitlines()
    assert len(lines) == 2 and all("version 1" in x and "unchanged" in x for x in lines)
    client = TrackingStore.open(Settings()).client
    lineage = client.get_registered_model("tiny-frontier").tags["analoglab.analogs"]
    assert lineage == "tiny-analog-m,tiny-analog-s"


def test_server_command_line(home: Settings) -> None:
    result = CliRunner().invoke(
        app,
        [
            "tracking",
            "server",
            "--print-command",
            "--host",
            "0.0.0.0",
            "--port",
            "7001",
            "--allowed-hosts",
            "mlflow.example",
        ],
    )
    assert result.exit_code == 0, result.stderr
    line = result.stdout.strip()
    assert " -m mlflow server " in line
    assert f"--backend-store-uri sqlite:///{home.home / 'mlflow' / 'mlflow.db'}" in line
    assert "--host 0.0.0.0 --port 7001 --workers 1 --allowed-hosts mlflow.example" in line


@pytest.mark.slow
def test_the_server_keeps_its_store_and_served_artifacts_in_its_data_folder(
    mlflow_server: str,
    server_process: Any,
    tmp_path: Path,
    spec: AnySpec,
    make_result: Callable[..., ExperimentResult],
) -> None:
    server_home: Path = server_process.home
    settings = Settings(home=tmp_path / "client", mlflow_tracking_uri=mlflow_server)
    result = make_result(spec, "served")
    run_id = log_result(spec, result, model="served", settings=settings, experiment="served")
    assert (server_home / "mlflow" / "mlflow.db").is_file()
    served = list((server_home / "mlflow" / "artifacts").rglob(f"{run_id}/artifacts/result.json"))
    assert len(served) == 1
    assert ExperimentResult.model_validate_json(served[0].read_text()) == result
    assert not (tmp_path / "client" / "mlflow").exists()  # nothing written on the client side
