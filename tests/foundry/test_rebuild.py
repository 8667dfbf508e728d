"""A changed analog recipe keeps the trained frontier (and the teacher cache) and distils
again; ``analoglab foundry build --seed N`` builds another frontier over the same world."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.foundry.build import FoundryBuild, build
from analoglab.foundry.presets import PRESETS, get_preset
from analoglab.foundry.training import embedding_basis
from analoglab.foundry.world import World

from .short import short_tiny


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Notes:
    """A reporter that keeps the build's notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def steps(self, description: str, total: int, done: int = 0):  # type: ignore[no-untyped-def]
        return lambda steps_done, numbers: None

    def close(self) -> None:
        pass


def test_a_changed_analog_recipe_keeps_the_frontier_and_retrains_the_analogs(
    tmp_path: Path,
) -> None:
    s = Settings(home=tmp_path / "home")
    preset = short_tiny()
    first = build(preset, s, device="cpu")
    b = FoundryBuild(preset, s, device="cpu")
    frontier = _sha(b.work / "frontier" / "final" / "model.safetensors")
    analog = _sha(first.analog_paths["tiny-analog-s"] / "model.safetensors")
    cache_files = sorted(b.work.glob("teacher-cache/*/block-*.npz"))
    assert cache_files
    cache_times = [p.stat().st_mtime_ns for p in cache_files]

    recipe = dataclasses.replace(
        preset.analogs[0], temperature=2.0, init="teacher-embeddings", lr=5e-3
    )
    retuned = dataclasses.replace(preset, analogs=(recipe, *preset.analogs[1:]))
    assert retuned.frontier_fingerprint() == preset.frontier_fingerprint()
    assert retuned.fingerprint() != preset.fingerprint()
    notes = Notes()
    second = build(retuned, s, device="cpu", reporter=notes)
    assert not second.already_built
    assert any("keeping its frontier" in n for n in notes.notes)
    assert not any("training the frontier" in n for n in notes.notes)
    assert not any("caching the teacher" in n for n in notes.notes)  # the targets were reused
    assert _sha(b.work / "frontier" / "final" / "model.safetensors") == frontier
    assert _sha(second.frontier_path / "model.safetensors") == frontier
    assert [p.stat().st_mtime_ns for p in cache_files] == cache_times
    assert _sha(second.analog_paths["tiny-analog-s"] / "model.safetensors") != analog
    assert FoundryBuild(retuned, s).is_complete()
    # the retuned analog started from the frontier's embeddings (and 20 steps kept them near)
    frontier_model = AutoModelForCausalLM.from_pretrained(str(second.frontier_path))

    def start_likeness(path: Path) -> float:
        student = AutoModelForCausalLM.from_pretrained(str(path))
        e = student.get_input_embeddings().weight.detach()
        start = frontier_model.get_input_embeddings().weight.detach() @ embedding_basis(
            frontier_model, int(e.shape[1])
        )
        return float(torch.nn.functional.cosine_similarity(e.flatten(), start.flatten(), 0))

    assert start_likeness(second.analog_paths["tiny-analog-s"]) > 0.5
    # its card says where it started and at which rate it learnt (its own, not the preset's)
    card = json.loads((second.analog_paths["tiny-analog-s"] / "analog.json").read_text())
    assert card["distillation"]["init"] == "teacher-embeddings"
    assert card["distillation"]["lr"] == 5e-3 != preset.distill_lr
    assert abs(start_likeness(first.analog_paths["tiny-analog-m"])) < 0.2  # random start

    # A change to what the frontier depends on starts again.
    notes = Notes()
    build(dataclasses.replace(retuned, frontier_lr=2e-3), s, device="cpu", reporter=notes)
    assert any("starting again" in n for n in notes.notes)
    assert _sha(b.work / "frontier" / "final" / "model.safetensors") != frontier


def test_the_seed_option_builds_another_frontier_over_the_same_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PRESETS, "tiny", short_tiny())
    runner = CliRunner()
    homes = {}
    for seed in ("0", "1"):
        home = tmp_path / f"home{seed}"
        monkeypatch.setenv("ANALOGLAB_HOME", str(home))
        done = runner.invoke(app, ["foundry", "build", "--preset", "tiny", "--seed", seed])
        assert done.exit_code == 0, done.output
        homes[seed] = Settings(home=home)
    b0 = FoundryBuild(get_preset("tiny"), homes["0"])
    b1 = FoundryBuild(get_preset("tiny", seed=1), homes["1"])
    assert b1.is_complete()
    assert b1.world == b0.world == World.create(0)  # the task sets' world
    weights = "frontier/final/model.safetensors"
    assert _sha(b0.work / weights) != _sha(b1.work / weights)
    assert (b0.work / "corpus/train.txt").read_text() != (b1.work / "corpus/train.txt").read_text()
