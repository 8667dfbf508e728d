"""The ``analoglab`` command: JSON output with stable keys, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analoglab import __version__
from analoglab.cli import app
from analoglab.config import Settings
from analoglab.models.catalog import Catalog

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version_and_help_as_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "analoglab", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"analoglab {__version__}"
    code, out, _ = run("models", "--help")
    assert code == 0 and all(c in out for c in ("list", "show", "build", "pack", "install"))


def test_doctor_passes_on_a_writable_home(home: Settings) -> None:
    code, out, _ = run("doctor", "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    names = {c["name"]: c for c in data["checks"]}
    assert {"python", "torch", "gpu", "transformers", "data folder", "models"} <= set(names)
    assert set(names["torch"]) == {"name", "status", "detail", "required"}
    assert "cpu" in names["torch"]["detail"]


def test_doctor_fails_on_an_unwritable_home_and_unreachable_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("ANALOGLAB_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setenv("ANALOGLAB_QUEUE_URL", "http://127.0.0.1:9")  # nothing listens there
    code, out, _ = run("doctor")
    assert code == 1
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["data"].startswith("FAIL") and "not writable" in lines["data"]
    assert lines["queue"].startswith("FAIL") and "not reachable" in lines["queue"]


def test_config_show_json_has_values_and_sources(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALOGLAB_DEVICE", "cpu")
    code, out, _ = run("config", "show", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["device"] == {
        "value": "cpu",
        "source": "env ANALOGLAB_DEVICE",
        "description": data["device"]["description"],
    }
    assert data["home"]["value"] == str(home.home)
    code, out, _ = run("config", "show")
    assert code == 0 and "ANALOGLAB_DEVICE" in out


def test_models_list_and_show(use_tiny_home: Settings) -> None:
    code, out, _ = run("models", "list", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"labs", "frontiers", "analogs", "problems"}
    assert data["frontiers"][0]["analogs"] == ["tiny-analog-m", "tiny-analog-s"]
    assert {a["name"] for a in data["analogs"]} == {"tiny-analog-m", "tiny-analog-s"}
    assert all(0 < a["parameter_ratio"] < 1 for a in data["analogs"])
    assert all(0 < a["cka"] <= 1 for a in data["analogs"])  # the build's fidelity stage
    code, out, _ = run("models", "list")
    assert code == 0 and "tiny-frontier" in out and "tiny-analog-s" in out and "CKA" in out
    code, out, _ = run("models", "show", "tiny-analog-s", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["kind"] == "analog" and shown["card"]["frontier"] == "tiny-frontier"
    code, out, _ = run("models", "show", "tiny-frontier", "--json")
    assert code == 0 and json.loads(out)["frontier"]["policy"]["human_review"] is True
    code, out, _ = run("models", "show", "tiny-analog-s")
    assert code == 0 and "Fidelity" in out


def test_errors_are_one_line_and_exit_one(use_tiny_home: Settings, tmp_path: Path) -> None:
    for args, message in [
        (("models", "show", "nope"), "no model named 'nope'"),
        (("models", "pack", "nope"), "no analog named 'nope'"),
        (("models", "install", str(tmp_path / "absent.tar")), "no bundle file"),
        (("foundry", "build", "--preset", "huge"), "unknown preset 'huge'"),
        (("foundry", "tasks", "iio"), "unknown task set 'iio'"),
    ]:
        code, out, err = run(*args)
        assert code == 1, args
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert "Traceback" not in out + err


def test_pack_and_install_through_the_cli(
    use_tiny_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run("models", "pack", "tiny-analog-m", "--out", str(tmp_path))
    assert code == 0 and "sha256" in out
    bundle = tmp_path / "tiny-analog-m.analog.tar"
    lab_key = Catalog.load(use_tiny_home).lab("tiny-lab").public_key
    assert lab_key is not None
    monkeypatch.setenv("ANALOGLAB_HOME", str(tmp_path / "hub"))
    # A hub that does not know the lab cannot check its signature: refused, nothing installed.
    code, _, err = run("models", "install", str(bundle))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--public-key" in err
    assert not (tmp_path / "hub" / "models" / "tiny-analog-m").exists()
    code, out, _ = run("models", "install", str(bundle), "--public-key", lab_key)
    assert code == 0 and (tmp_path / "hub" / "models" / "tiny-analog-m" / "analog.json").is_file()
    code, _, err = run("models", "install", str(bundle), "--public-key", lab_key)
    assert code == 1 and "already installed" in err


def test_foundry_listings(home: Settings) -> None:
    code, out, _ = run("foundry", "presets", "--json")
    assert code == 0 and set(json.loads(out)) == {"tiny", "demo", "large"}
    code, out, _ = run("foundry", "tasks", "ioi", "-n", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["kind"] == "choice" and len(data["items"]) == 3
    assert set(data["items"][0]) == {"prompt", "target", "foil", "label"}
    code, out, _ = run("foundry", "corpus", "-n", "4", "--seed", "1")
    assert code == 0 and len(out.splitlines()) == 4
    code, js, _ = run("foundry", "corpus", "-n", "4", "--seed", "1", "--json")
    assert code == 0 and json.loads(js)["documents"] == out.splitlines()


def test_models_list_on_an_empty_home(home: Settings) -> None:
    code, out, _ = run("models", "list")
    assert code == 0 and "models build" in out


def test_the_light_core_imports_no_torch() -> None:
    # Hub-side services use the catalog and the CLI's entry point; torch must stay out of them.
    code = (
        "import sys, analoglab, analoglab.cli, analoglab.models.catalog, analoglab.models.bundle;"
        "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_config_show_and_doctor_mask_passwords(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALOGLAB_MLFLOW_TRACKING_URI", "postgresql://ml:hunter2@127.0.0.1:9/ml")
    monkeypatch.setenv("ANALOGLAB_QUEUE_URL", "http://bot:hunter3@127.0.0.1:9")  # nothing there
    monkeypatch.setenv("ANALOGLAB_QUEUE_PAGE_SECRET", "the-page-secret-of-the-replicas")
    for args in (("config", "show"), ("config", "show", "--json")):
        code, out, _ = run(*args)
        assert code == 0 and "postgresql://ml:***@127.0.0.1:9/ml" in out
        assert "hunter" not in out and "the-page-secret" not in out
    for args in (("doctor",), ("doctor", "--json")):
        code, out, err = run(*args)
        assert code == 1  # the queue does not answer
        assert "http://bot:***@127.0.0.1:9" in out and "postgresql://ml:***@" in out
        assert "hunter" not in out + err


def test_error_messages_mask_passwords(home: Settings) -> None:
    code, out, err = run("queue", "list", "--url", "http://u:hunter5@127.0.0.1:9", "--token", "x")
    assert code == 1 and "http://u:***@127.0.0.1:9" in err
    assert "hunter5" not in out + err
