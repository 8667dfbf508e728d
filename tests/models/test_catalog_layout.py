"""Publishing a frontier's verified hook layout into the catalog (``analoglab models layout``):
the report a lab site writes from the real model goes in, the queue's vetting then refuses a
job needing a site that model cannot run, and anything that is not that frontier's layout
report is refused in one line with the catalog left as it was."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.errors import CorruptModelError
from analoglab.experiments.spec import parse_spec
from analoglab.interventions import verify_layout
from analoglab.models.card import Architecture
from analoglab.models.catalog import Catalog, FrontierModel, Lab, publish_layout, save_lab
from analoglab.queue.vetting import VettingLimits, vet

from ..interventions.test_inference import build

JAMBA = Architecture(model_type="jamba", layers=3, hidden_size=32, heads=4, vocab_size=100)


@pytest.fixture
def lab(home: Settings) -> Settings:
    frontiers = [
        FrontierModel(
            id=fid, lab="hybrid-lab", architecture=JAMBA, parameters=1, trained=dt.date(2026, 1, 1)
        )
        for fid in ("hybrid-frontier", "other-frontier")
    ]
    save_lab(Lab(id="hybrid-lab", name="Hybrid lab", frontiers=frontiers), home)
    return home


@pytest.fixture(scope="module")
def jamba_report() -> dict[str, Any]:
    """What the lab site's self-test says of a real (tiny, random) Jamba: attention sites only
    at its attention block 1, router sites only at its MoE block 1."""
    report = verify_layout(build("jamba")).to_dict()
    assert report["verified"]
    return report


def ablation(block: int) -> Any:
    items = [{"prompt": f"Question {i}:", "target": " yes", "foil": " no"} for i in range(4)]
    return parse_spec(
        {
            "method": "ablation",
            "data": {"kind": "choices", "items": items},
            "components": "heads",
            "layers": {"indices": [block]},
        }
    )


def findings(settings: Settings, block: int) -> list[str]:
    frontier = Catalog.load(settings).frontier("hybrid-frontier")
    return [
        f"{f.code}: {f.message}"
        for f in vet(ablation(block), frontier, frontier.policy, VettingLimits())
    ]


def test_a_real_models_layout_published_makes_vetting_refuse_its_missing_sites(
    lab: Settings, jamba_report: dict[str, Any], tmp_path: Path
) -> None:
    assert findings(lab, 0) == []  # nothing published: vetting says nothing of sites
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(jamba_report))
    res = CliRunner().invoke(app, ["models", "layout", "hybrid-frontier", "--file", str(path)])
    assert res.exit_code == 0, res.output
    assert "published hybrid-frontier's layout" in res.output
    assert "attn.hook_z refused at 0,2" in res.output
    refused = findings(lab, 0)
    assert len(refused) == 1 and refused[0].startswith("site_not_supported")
    assert "attn.hook_z at block 0" in refused[0] and "has no attention" in refused[0]
    assert findings(lab, 1) == []  # the attention block runs
    other = Catalog.load(lab).frontier("other-frontier")
    assert other.layout is None  # only the named frontier changed
    shown = CliRunner().invoke(app, ["models", "show", "hybrid-frontier"])
    assert "layout: 3 blocks" in shown.output and "hook_resid_post" in shown.output


def test_stdin_and_json_output(lab: Settings, jamba_report: dict[str, Any]) -> None:
    res = CliRunner().invoke(
        app,
        ["models", "layout", "hybrid-frontier", "--file", "-", "--json"],
        input=json.dumps(jamba_report),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["frontier"] == "hybrid-frontier" and data["layout"]["n_layers"] == 3


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "not a layout report: expected a JSON object"),
        ('{"model_type": "jamba"}', "not a layout report (missing 'n_layers')"),
        ('{"model_type": "jamba", "n_layers": 3, "sites": 7}', "not a layout report"),
    ],
)
def test_what_is_not_a_layout_report_is_refused_in_one_line(
    lab: Settings, tmp_path: Path, content: str, says: str
) -> None:
    before = (lab.catalog_path / "labs" / "hybrid-lab.json").read_bytes()
    path = tmp_path / "bad.json"
    path.write_text(content)
    res = CliRunner().invoke(app, ["models", "layout", "hybrid-frontier", "--file", str(path)])
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1 and says in res.output, res.output
    assert (lab.catalog_path / "labs" / "hybrid-lab.json").read_bytes() == before


def test_a_layout_of_another_model_or_frontier_is_refused(
    lab: Settings, jamba_report: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(CorruptModelError, match="2-block jamba; hybrid-frontier is a 3-block"):
        publish_layout("hybrid-frontier", {**jamba_report, "n_layers": 2}, lab)
    with pytest.raises(CorruptModelError, match="of a 3-block llama"):
        publish_layout("hybrid-frontier", {**jamba_report, "model_type": "llama"}, lab)
    over = {**jamba_report, "sites": {f"site_{i}": {"blocks": [0]} for i in range(40)}}
    with pytest.raises(CorruptModelError, match="not a layout report"):
        publish_layout("hybrid-frontier", over, lab)
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(jamba_report))
    res = CliRunner().invoke(app, ["models", "layout", "nope", "--file", str(path)])
    assert res.exit_code == 1 and "no frontier model 'nope'" in res.output
    res = CliRunner().invoke(app, ["models", "layout", "hybrid-frontier", "--file", "/no/such"])
    assert res.exit_code == 1 and "cannot read /no/such" in res.output
    assert Catalog.load(lab).frontier("hybrid-frontier").layout is None
