"""A transfer check on the tiny foundry: the real method against its control, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.experiments.runner import run
from analoglab.experiments.spec import parse_spec
from analoglab.experiments.transfer import compare
from analoglab.models.loading import load_any

STEER = {
    "method": "steering",
    "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 32},
    "evaluate": {"kind": "task_set", "name": "neutral", "n": 32},
    "target": " good",
    "foil": " bad",
    "layers": {"depths": [0.0, 0.5, 1.0]},
    "scales": [0, 4],
}


@pytest.fixture(autouse=True)
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_steering_transfers_and_its_random_control_does_not(tiny_home: Settings) -> None:
    analog = load_any("tiny-analog-m", device="cpu", settings=tiny_home)
    frontier = load_any("tiny-frontier", device="cpu", settings=tiny_home)
    real = parse_spec(STEER)
    control = parse_spec({**STEER, "control": "random_vector"})
    real_report = compare(run(real, analog), run(real, frontier))
    control_report = compare(run(control, analog), run(control, frontier))
    # the real vector carries over at least partly: its interval lies above the 0.3 cut
    # (the analog steers harder than the frontier, so whether it reaches 0.6 varies by build)
    assert real_report.score_interval is not None and real_report.score_interval.low >= 0.3
    assert real_report.verdict in ("transfers", "partial", "inconclusive")
    assert real_report.score >= control_report.score + 0.3
    # On 32 prompts and 4 random directions the control's interval may reach a cut-off (a
    # random direction sometimes steers both models alike): never a transfer, and its
    # interval lies below the real vector's.
    assert control_report.verdict in ("does_not_transfer", "no_effect", "inconclusive")
    assert real_report.score_interval is not None and control_report.score_interval is not None
    assert control_report.score_interval.high < real_report.score_interval.low
    one_direction = parse_spec({**STEER, "control": "random_vector", "random_draws": 1})
    assert compare(run(one_direction, analog), run(one_direction, frontier)).verdict in (
        "does_not_transfer",
        "no_effect",
    )


def test_transfer_command_reports_json(use_tiny_home: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "steer.yaml"
    spec.write_text(yaml.safe_dump(STEER))
    result = CliRunner().invoke(
        app,
        [
            "transfer",
            "--spec",
            str(spec),
            "--analog",
            "tiny-analog-m",
            "--frontier",
            "tiny-frontier",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["report"]["analog"]["name"] == "tiny-analog-m"
    assert data["report"]["frontier"]["name"] == "tiny-frontier"
    assert data["analog_result"]["spec_hash"] == data["frontier_result"]["spec_hash"]
    assert 0.0 <= data["report"]["score"] <= 1.0
    interval = data["report"]["score_interval"]
    assert interval["low"] <= interval["high"] and interval["level"] == 0.95
    assert len(data["report"]["distribution"]["score"]) == data["report"]["resamples"] == 200
    assert len(data["analog_result"]["bootstrap"]["metrics"]["effect"]) == 200


def test_transfer_command_shows_the_intervals(use_tiny_home: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "steer.yaml"
    spec.write_text(yaml.safe_dump({**STEER, "bootstrap": {"resamples": 50}}))
    args = ["--analog", "tiny-analog-m", "--frontier", "tiny-frontier", "--device", "cpu"]
    result = CliRunner().invoke(app, ["transfer", "--spec", str(spec), *args])
    assert result.exit_code == 0, result.stderr
    assert "transfer score" in result.stdout and "95% interval [" in result.stdout
    assert "intervals: 50 paired bootstrap resamples over evaluate 32, contrast 32" in (
        " ".join(result.stdout.split())
    )
    shown = CliRunner().invoke(app, ["run", str(spec), "--model", "tiny-frontier"])
    assert shown.exit_code == 0, shown.stderr
    assert "95% [" in shown.stdout and "50 bootstrap resamples" in shown.stdout


def test_run_command_writes_a_result(use_tiny_home: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "eval.json"
    spec.write_text(
        json.dumps(
            {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 20}}
        )
    )
    out = tmp_path / "result.json"
    result = CliRunner().invoke(
        app, ["run", str(spec), "--model", "tiny-frontier", "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["method"] == "evaluation" and saved["model"]["name"] == "tiny-frontier"
    assert saved["size_bytes"] == len(out.read_text().strip().encode()) or saved["size_bytes"] > 0
    bad = CliRunner().invoke(app, ["run", str(spec), "--model", "nope"])
    assert bad.exit_code == 1 and "no model 'nope'" in bad.stderr
    (tmp_path / "bad.yaml").write_text("method: steering\n")
    bad = CliRunner().invoke(app, ["run", str(tmp_path / "bad.yaml"), "--model", "tiny-frontier"])
    assert bad.exit_code == 1 and "contrast: Field required" in bad.stderr
