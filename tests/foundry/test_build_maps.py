"""The foundry build's last stage: the residual map of each demo analog into the demo lab
site, where the site's worker finds it for mapped jobs; idempotent, and run alone for a build
made before the stage existed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import MAP_DEPTHS, STAGES, FoundryBuild, build
from analoglab.foundry.presets import get_preset
from analoglab.lab.config import load_lab_config
from analoglab.lab.maps import list_maps, load_site_map
from analoglab.models.loading import weights_sha256

pytestmark = pytest.mark.slow


def test_the_build_fits_a_map_per_analog_into_the_lab_site(tiny_home: Settings) -> None:
    assert STAGES[-1] == "maps"
    site = load_lab_config(tiny_home.lab_sites_path / "tiny-lab" / "lab.toml")
    assert site.maps == tiny_home.lab_sites_path / "tiny-lab" / "maps"
    frontier = site.models["tiny-frontier"].path
    found = {m.analog: m for m in list_maps(site.maps)}
    assert sorted(found) == ["tiny-analog-m", "tiny-analog-s"]
    for name, m in found.items():
        assert m.frontier == "tiny-frontier" and not m.problem
        rmap = load_site_map(
            site.maps,
            analog=name,
            frontier="tiny-frontier",
            frontier_sha256=weights_sha256(frontier),
        )
        assert [layer.depth for layer in rmap.layers] == list(MAP_DEPTHS)
        assert rmap.analog_weights_sha256 == weights_sha256(tiny_home.models_path / name)
        assert all(layer.r2_forward > 0.3 for layer in rmap.layers)  # a fit, not noise
    # nothing of a map is public: not in the store, not in the catalog
    assert not list(tiny_home.models_path.rglob("*.npz"))
    assert not list(tiny_home.catalog_path.rglob("*.npz"))


def test_the_maps_stage_keeps_maps_fitted_on_these_weights(tiny_home: Settings) -> None:
    maps = tiny_home.lab_sites_path / "tiny-lab" / "maps" / "tiny-frontier"
    before = {p.name: p.stat().st_mtime_ns for p in maps.iterdir()}
    FoundryBuild(get_preset("tiny"), tiny_home, device="cpu").stage_maps()
    assert {p.name: p.stat().st_mtime_ns for p in maps.iterdir()} == before


def test_a_build_made_before_the_maps_stage_fits_them_alone(
    tiny_home: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(tiny_home.home, home, ignore=shutil.ignore_patterns("checkpoint.pt"))
    settings = Settings(home=home)
    maps = settings.lab_sites_path / "tiny-lab" / "maps"
    shutil.rmtree(maps)  # as a build of the day before left it
    t0 = time.perf_counter()
    result = build(get_preset("tiny"), settings, device="cpu")
    assert not result.already_built and "maps" in result.stage_seconds
    assert time.perf_counter() - t0 < 600
    assert sorted(m.analog for m in list_maps(maps)) == ["tiny-analog-m", "tiny-analog-s"]
    again = build(get_preset("tiny"), settings, device="cpu")
    assert again.already_built
