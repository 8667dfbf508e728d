"""``analoglab lab map fit`` / ``map list`` / ``layout`` on the tiny build's lab site (a copy of
its lab.toml whose maps go to tmp, so the build's own maps are never touched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.lab.maps import load_site_map
from analoglab.models.loading import weights_sha256

pytestmark = pytest.mark.slow


@pytest.fixture
def site_toml(use_tiny_home: Settings, tmp_path: Path) -> Path:
    weights = use_tiny_home.lab_sites_path / "tiny-lab" / "models" / "tiny-frontier"
    path = tmp_path / "site" / "lab.toml"
    path.parent.mkdir()
    path.write_text(
        f'lab = "tiny-lab"\nmaps = "my-maps"\n[models."tiny-frontier"]\npath = "{weights}"\n'
    )
    return path


def test_map_fit_stores_the_map_at_the_site_and_list_shows_it(site_toml: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "lab", "map", "fit", "--config", str(site_toml), "--frontier", "tiny-frontier",
            "--analog", "tiny-analog-s", "--depth", "0", "--depth", "1", "--texts", "24",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stored = site_toml.parent / "my-maps" / "tiny-frontier" / "tiny-analog-s.npz"
    assert f"stored at {stored}" in " ".join(res.output.split())
    assert "depth 0.00: blocks 0 → 0, held-out R²" in res.output
    assert "depth 1.00: blocks 1 → 1, held-out R²" in res.output
    weights = Path(site_toml.read_text().split('path = "')[1].split('"')[0])
    rmap = load_site_map(
        site_toml.parent / "my-maps",
        analog="tiny-analog-s",
        frontier="tiny-frontier",
        frontier_sha256=weights_sha256(weights),
    )
    assert [layer.depth for layer in rmap.layers] == [0.0, 1.0]
    listed = runner.invoke(app, ["lab", "map", "list", "--config", str(site_toml), "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)["maps"]
    assert entry["analog"] == "tiny-analog-s" and entry["frontier"] == "tiny-frontier"
    assert "forward" not in entry and entry["problem"] is None
    shown = runner.invoke(app, ["lab", "map", "list", "--config", str(site_toml)])
    assert "tiny-frontier ← tiny-analog-s:" in shown.output


def test_map_fit_names_its_corpus_and_refuses_an_unknown_one(site_toml: Path) -> None:
    runner = CliRunner()
    base = [
        "lab", "map", "fit", "--config", str(site_toml), "--frontier", "tiny-frontier",
        "--analog", "tiny-analog-s", "--depth", "0.5", "--texts", "24",
    ]  # fmt: skip
    stored = site_toml.parent / "my-maps" / "tiny-frontier" / "tiny-analog-s.npz"
    bad = runner.invoke(app, [*base, "--corpus", "reviews"])
    assert bad.exit_code == 1
    assert "unknown map corpus 'reviews'" in bad.output and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert not stored.exists() and not (site_toml.parent / "my-maps").exists()
    res = runner.invoke(app, [*base, "--corpus", "neutral", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["corpus"] == "neutral" and summary["texts"] == 24
    assert summary["l2"] is None  # chosen per direction by validation R²
    (layer,) = summary["layers"]
    assert layer["l2_forward"] > 0 and layer["l2_backward"] > 0
    listed = runner.invoke(app, ["lab", "map", "list", "--config", str(site_toml), "--json"])
    assert json.loads(listed.output)["maps"][0]["corpus"] == "neutral"
    default = runner.invoke(app, base)
    assert default.exit_code == 0 and "on the general corpus (24 texts)" in default.output


def test_map_fit_refuses_a_frontier_the_site_does_not_serve(site_toml: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "lab", "map", "fit", "--config", str(site_toml), "--frontier", "other",
            "--analog", "tiny-analog-s",
        ],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "no weights for 'other'" in res.output


def test_layout_prints_or_writes_the_verified_report(site_toml: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "layout.json"
    res = runner.invoke(
        app,
        [
            "lab",
            "layout",
            "--config",
            str(site_toml),
            "--frontier",
            "tiny-frontier",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["verified"] is True and report["n_layers"] == 2
    assert report["model_type"] == "llama" and report["sites"]["hook_resid_post"]["blocks"] == [
        0,
        1,
    ]
    printed = runner.invoke(
        app, ["lab", "layout", "--config", str(site_toml), "--frontier", "tiny-frontier"]
    )
    assert printed.exit_code == 0
    assert json.loads(printed.stdout) == report
    assert "tiny-frontier: llama layout (2 blocks) verified" in printed.output
