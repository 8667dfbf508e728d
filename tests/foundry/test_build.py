"""The foundry build end to end on the tiny preset: where things land, idempotence, resume,
and the paper's premise (distillation beats scratch training at equal steps)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.errors import FoundryError
from analoglab.foundry.build import BuildResult, FoundryBuild, build
from analoglab.foundry.presets import PRESETS, get_preset
from analoglab.models.catalog import Catalog

from .short import short_tiny


def test_frontier_on_the_lab_site_analogs_in_the_public_store(
    tiny_build: tuple[Settings, BuildResult],
) -> None:
    s, result = tiny_build
    assert result.frontier_path == s.lab_sites_path / "tiny-lab" / "models" / "tiny-frontier"
    assert (result.frontier_path / "model.safetensors").is_file()
    assert (result.frontier_path / "loss.png").is_file()
    log = json.loads((result.frontier_path / "training_log.json").read_text())
    assert log["steps"][-1] == get_preset("tiny").frontier_steps
    from analoglab.lab.config import load_lab_config

    site = load_lab_config(s.lab_sites_path / "tiny-lab" / "lab.toml")
    assert site.models["tiny-frontier"].path == s.lab_sites_path / "tiny-lab" / "models" / (
        "tiny-frontier"
    )
    assert site.release.release_bootstrap  # demo outputs may be public: intervals travel
    # Nothing of the frontier's weights is public: not in the store, not in the catalog.
    assert sorted(p.name for p in s.models_path.iterdir()) == ["tiny-analog-m", "tiny-analog-s"]
    assert not list(s.catalog_path.rglob("*.safetensors"))
    lab = json.loads((s.catalog_path / "labs" / "tiny-lab.json").read_text())
    assert lab["frontiers"][0]["id"] == "tiny-frontier" and "path" not in json.dumps(lab)
    for name, path in result.analog_paths.items():
        assert path == s.models_path / name and (path / "analog.json").is_file()


def test_distillation_beats_scratch_at_equal_steps(
    tiny_build: tuple[Settings, BuildResult],
) -> None:
    fidelity = tiny_build[1].fidelity["students"]
    distilled, scratch = fidelity["tiny-analog-s"], fidelity["tiny-analog-s-scratch"]
    # Closer to the frontier in its outputs and in its residual stream (direction only: the
    # size of the gap is a benchmark figure, benchmarks/foundry.py).
    assert distilled["kl"] < scratch["kl"]
    assert distilled["cka"] > scratch["cka"]
    card = Catalog.load(tiny_build[0]).analog("tiny-analog-s").card
    assert card.fidelity and card.fidelity.scratch_baseline
    assert card.fidelity.kl == pytest.approx(distilled["kl"], abs=1e-4)
    assert card.fidelity.scratch_baseline.kl == pytest.approx(scratch["kl"], abs=1e-4)
    assert card.fidelity.cka == pytest.approx(distilled["cka"], abs=1e-4)
    assert card.fidelity.scratch_baseline.cka == pytest.approx(scratch["cka"], abs=1e-4)
    # CKA at each matched depth (tiny: 2 analog blocks, 2 frontier blocks).
    assert [(c.analog_layer, c.frontier_layer) for c in card.fidelity.cka_layers] == [
        (0, 0),
        (1, 1),
    ]
    assert all(0 < c.cka <= 1 for c in card.fidelity.cka_layers)
    # Behaviour agreement per task set, beside each model's accuracy.
    for task, score in card.fidelity.tasks.items():
        assert score.agreement == distilled["task_agreement"][task]
        assert 0 <= score.agreement <= 1
    # Where both models are always right they always agree.
    assert card.fidelity.tasks["sentiment"].frontier == 1.0
    if card.fidelity.tasks["sentiment"].analog == 1.0:
        assert card.fidelity.tasks["sentiment"].agreement == 1.0
    assert set(card.fidelity.scratch_baseline.task_agreement) == set(card.fidelity.tasks)
    readme = (tiny_build[0].models_path / "tiny-analog-s" / "README.md").read_text()
    assert "linear CKA" in readme and "same choice as the frontier" in readme


def test_cards_without_the_newer_fidelity_fields_still_load(
    tiny_build: tuple[Settings, BuildResult], tmp_path: Path
) -> None:
    from analoglab.models.card import read_card

    src = tiny_build[0].models_path / "tiny-analog-s" / "analog.json"
    card = json.loads(src.read_text())
    for key in ("cka", "cka_layers"):
        del card["fidelity"][key]
    for key in ("cka", "task_agreement"):
        del card["fidelity"]["scratch_baseline"][key]
    for score in card["fidelity"]["tasks"].values():
        del score["agreement"]
    for key in ("lr", "teacher_top_k"):
        del card["distillation"][key]
    (tmp_path / "analog.json").write_text(json.dumps(card))
    old = read_card(tmp_path)
    assert old.fidelity and old.fidelity.cka is None and old.fidelity.cka_layers == []
    assert old.fidelity.tasks["ioi"].agreement is None
    from analoglab.models.card import render_readme

    assert "linear CKA" not in render_readme(old)


def test_a_built_preset_returns_at_once(tiny_home: Settings) -> None:
    t0 = time.perf_counter()
    result = build(get_preset("tiny"), tiny_home, device="cpu")
    assert result.already_built and time.perf_counter() - t0 < 5


def test_an_interrupted_build_resumes(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    preset = short_tiny()

    class Killed(Exception):
        pass

    class KillAt:
        """A reporter that kills the build in the middle of the frontier's training."""

        def note(self, message: str) -> None:
            pass

        def steps(self, description: str, total: int, done: int = 0):  # type: ignore[no-untyped-def]
            def update(steps_done: int, numbers: dict[str, float]) -> None:
                if description == "tiny-frontier" and steps_done == 25:
                    raise Killed

            return update

        def close(self) -> None:
            pass

    with pytest.raises(Killed):
        build(preset, s, device="cpu", reporter=KillAt())
    b = FoundryBuild(preset, s, device="cpu")
    assert not b.is_complete()
    assert (b.work / "frontier" / "checkpoint.pt").is_file()  # saved at step 20
    assert not (b.work / "frontier" / "final").exists()
    assert not s.models_path.exists() or not list(s.models_path.iterdir())
    result = build(preset, s, device="cpu")
    assert not result.already_built and b.is_complete()
    log = json.loads((result.frontier_path / "training_log.json").read_text())
    assert log["steps"] == list(range(1, 31))  # no gap, no repeat


def test_unknown_preset_and_empty_runs_are_refused(home: Settings) -> None:
    with pytest.raises(FoundryError, match="unknown preset 'huge'.*tiny, demo, large"):
        get_preset("huge")
    with pytest.raises(FoundryError, match="at least one training step"):
        build(get_preset("tiny", frontier_steps=0), home)


@pytest.mark.parametrize("name", ["demo", "large"])
def test_analogs_are_at_most_five_percent_of_their_frontier(name: str) -> None:
    # Counted on the meta device: no memory, no training.
    import torch
    from transformers import LlamaForCausalLM

    from analoglab.foundry.presets import llama_config

    class Tok:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self) -> int:
            return PRESETS[name].vocab_size

    preset = PRESETS[name]
    with torch.device("meta"):
        frontier = sum(
            p.numel()
            for p in LlamaForCausalLM(llama_config(preset.frontier, Tok(), 256)).parameters()
        )
        for recipe in preset.analogs:
            analog = sum(
                p.numel()
                for p in LlamaForCausalLM(llama_config(recipe.shape, Tok(), 256)).parameters()
            )
            assert analog / frontier <= 0.05, (recipe.suffix, analog / frontier)
