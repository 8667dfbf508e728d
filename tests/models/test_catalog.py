"""The catalog: frontiers (metadata only) and analogs with their cards; damage is reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.errors import ModelNotFoundError
from analoglab.models.card import AnalogCard, read_card, render_readme
from analoglab.models.catalog import AnalogEntry, Catalog


def test_empty_catalog_says_how_to_fill_it(home: Settings) -> None:
    cat = Catalog.load(home)
    assert cat.analogs == [] and cat.frontiers() == [] and cat.problems == []
    with pytest.raises(ModelNotFoundError, match="models build"):
        cat.analog("demo-analog-s")


def test_tiny_catalog_links_analogs_to_their_frontier(tiny_home: Settings) -> None:
    cat = Catalog.load(tiny_home)
    assert [f.id for f in cat.frontiers()] == ["tiny-frontier"]
    assert sorted(a.name for a in cat.analogs_of("tiny-frontier")) == [
        "tiny-analog-m",
        "tiny-analog-s",
    ]
    frontier = cat.frontier("tiny-frontier")
    assert frontier.lab == "tiny-lab" and set(frontier.capabilities) == {
        "sentiment",
        "ioi",
        "facts",
        "truth",
    }
    assert "steering" in frontier.policy.allowed_methods
    assert isinstance(cat.resolve("tiny-frontier"), type(frontier))
    assert isinstance(cat.resolve("tiny-analog-s"), AnalogEntry)
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'.*tiny-analog-m"):
        cat.resolve("nope")
    with pytest.raises(ModelNotFoundError, match="no frontier model 'x'.*tiny-frontier"):
        cat.frontier("x")


def test_cards_are_complete(tiny_home: Settings) -> None:
    card = read_card(tiny_home.models_path / "tiny-analog-m")
    assert card.lab == "tiny-lab" and card.frontier == "tiny-frontier"
    assert card.parameter_ratio == pytest.approx(
        card.parameters / card.frontier_parameters, rel=1e-3
    )
    assert card.distillation.method == "logit-kl+hidden" and card.distillation.matched_layers
    assert card.distillation.data_sha256 and card.distillation.steps > 0
    assert card.release.lag_days == (card.release.date - card.release.frontier_date).days
    assert card.fidelity and set(card.fidelity.tasks) == {"sentiment", "ioi", "facts", "truth"}
    readme = (tiny_home.models_path / "tiny-analog-m" / "README.md").read_text()
    assert readme == render_readme(card) and "tiny-frontier" in readme and "Fidelity" in readme


def test_a_damaged_card_is_reported_not_fatal(tiny_home: Settings, tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    shutil.copytree(tiny_home.home, s.home)
    (s.models_path / "tiny-analog-s" / "analog.json").write_text("{ not json")
    (s.models_path / "stray-folder").mkdir()
    cat = Catalog.load(s)
    assert [a.name for a in cat.analogs] == ["tiny-analog-m"]
    reasons = {p.path.name: p.reason for p in cat.problems}
    assert "not a valid analog card" in reasons["tiny-analog-s"]
    assert "no analog.json" in reasons["stray-folder"]


def test_card_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        AnalogCard.model_validate({"name": "../evil"})
