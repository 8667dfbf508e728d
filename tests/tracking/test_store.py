"""Where results go, and how values fit MLflow's limits (no server needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.tracking import TrackingError, TrackingStore, tracking_uri
from analoglab.tracking.mapping import (
    PARAM_VALUE_LIMIT,
    MetricValue,
    clip,
    flatten,
    log_batch,
    safe_key,
)
from analoglab.tracking.server import ServerOptions, backend_store_uri, server_command
from analoglab.tracking.store import quiet


def test_default_uri_is_sqlite_in_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert tracking_uri(settings) == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    remote = Settings(home=tmp_path / "home", mlflow_tracking_uri="http://mlflow.example:5000")
    assert tracking_uri(remote) == "http://mlflow.example:5000"
    for bad in ("file:///tmp/mlruns", "/tmp/mlruns"):
        with pytest.raises(TrackingError, match="file store"):
            tracking_uri(Settings(home=tmp_path, mlflow_tracking_uri=bad))


def test_the_environment_setting_is_read(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALOGLAB_MLFLOW_TRACKING_URI", "https://mlflow.example")
    assert tracking_uri() == "https://mlflow.example"


def test_experiments_keep_artifacts_in_the_data_folder_and_no_global_uri_leaks(
    tmp_path: Path, migrated_db: Path
) -> None:
    import mlflow

    before = mlflow.get_tracking_uri()
    for name in ("one", "two"):  # two empty stores (copies of one migrated database)
        (tmp_path / name / "mlflow").mkdir(parents=True)
        shutil.copyfile(migrated_db, tmp_path / name / "mlflow" / "mlflow.db")
    one = TrackingStore.open(Settings(home=tmp_path / "one"))
    two = TrackingStore.open(Settings(home=tmp_path / "two"))
    exp = one.experiment_id("ours")
    assert one.experiment_id("ours") == exp  # found again, not created twice
    location = one.client.get_experiment(exp).artifact_location
    assert location == (tmp_path / "one" / "mlflow" / "artifacts" / "ours").as_uri()
    assert two.client.get_experiment_by_name("ours") is None  # two stores, two worlds
    assert (tmp_path / "one" / "mlflow" / "mlflow.db").is_file()
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ
    # A deleted experiment is restored rather than refused.
    one.client.delete_experiment(exp)
    fresh = TrackingStore.open(Settings(home=tmp_path / "one"))
    assert fresh.experiment_id("ours") == exp
    assert fresh.client.get_experiment(exp).lifecycle_stage == "active"


def test_quiet_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    with quiet():
        assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"  # the user's
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ


def test_quiet_holds_while_another_thread_is_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[str | None] = []

    def first() -> None:
        with quiet():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with quiet():
            second_in.set()
            first_out.wait(5)  # the first thread has left its block: we are still inside
            seen.append(os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == ["true"]
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ  # the last one out


def test_flatten_clip_and_keys() -> None:
    params = flatten(
        {
            "method": "probe",
            "seed": 0,
            "name": None,
            "flag": True,
            "layers": {"depths": [0.0, 0.5], "indices": None},
            "data": {"kind": "labelled", "items": [{"text": "x" * 40, "label": 1}] * 30},
        }
    )
    assert params["method"] == "probe" and params["seed"] == "0"
    assert params["name"] == "null" and params["flag"] == "true"
    assert params["layers.depths"] == "[0.0,0.5]" and params["layers.indices"] == "null"
    items = params["data.items"]
    assert items.startswith("[30 items] [{") and len(items) == PARAM_VALUE_LIMIT
    assert items.endswith("…")
    assert clip("short") == "short"
    assert safe_key("accuracy.pos/neg?") == "accuracy.pos_neg_"
    assert safe_key("..up") == "_..up" and safe_key("") == "_"
    assert safe_key("ok-key_1.x y") == "ok-key_1.x y"


def test_log_batch_splits_what_mlflow_would_refuse(fresh_home: Settings) -> None:
    store = TrackingStore.open(fresh_home)
    run = store.client.create_run(store.experiment_id("batches"))
    run_id = run.info.run_id
    params = {f"p{i}": "v" * 700 for i in range(230)}
    metrics = [MetricValue("curve", float(i), step=i) for i in range(2500)]
    metrics.append(MetricValue("nan", float("nan")))
    log_batch(store.client, run_id, params=params, metrics=metrics, tags={"t": "x"})
    data = store.client.get_run(run_id).data
    assert len(data.params) == 230
    assert all(len(v) == PARAM_VALUE_LIMIT for v in data.params.values())
    history = store.client.get_metric_history(run_id, "curve")
    assert sorted(m.step for m in history) == list(range(2500))
    assert "nan" not in data.metrics and data.tags["t"] == "x"


def test_server_command_uses_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    cmd = server_command(settings, ServerOptions(port=5999, extra=["--allowed-hosts", "x"]))
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    joined = " ".join(cmd)
    assert f"--backend-store-uri sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}" in joined
    assert f"--artifacts-destination {tmp_path / 'home' / 'mlflow' / 'artifacts'}" in joined
    assert "--port 5999" in joined and joined.endswith("--allowed-hosts x")
    pg = Settings(home=tmp_path, mlflow_tracking_uri="postgresql://db/mlflow")
    assert backend_store_uri(pg) == "postgresql://db/mlflow"
    served = Settings(home=tmp_path, mlflow_tracking_uri="http://127.0.0.1:5000")
    assert backend_store_uri(served).startswith("sqlite:///")


def test_importing_analoglab_and_its_cli_imports_no_mlflow() -> None:
    code = (
        "import sys, analoglab, analoglab.cli, analoglab.tracking\n"
        "heavy = [m for m in ('mlflow', 'torch', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""
