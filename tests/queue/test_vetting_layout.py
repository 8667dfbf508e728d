"""Vetting against the frontier's published layout: a job needing a hook site the frontier's
verified layout refuses is refused at submission, naming the site, the block and the reason;
a catalog without a layout, and a job at offered sites, are unaffected."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from analoglab.config import Settings
from analoglab.experiments.spec import parse_spec
from analoglab.interventions import ALL_SITES
from analoglab.models.catalog import Catalog, FrontierLayout, FrontierModel, Lab, save_lab
from analoglab.queue.db import make_engine
from analoglab.queue.errors import Invalid
from analoglab.queue.jobs import CatalogFrontiers, JobQueue, QueueSettings
from analoglab.queue.migrate import upgrade
from analoglab.queue.vetting import VettingLimits, needed_blocks, vet

from .conftest import ARCH, Clock

NO_ROUTER = "block 0's MLP is not a mixture of experts with a router"
Z_REASON = "hook_z_projection at block 3: FAILED (off by 0.42)"


def report(n: int = 8, refused: dict[str, tuple[list[int], str]] | None = None) -> dict[str, Any]:
    """A ``LayoutReport.to_dict()`` of a dense model of ``n`` blocks; ``refused`` maps a site
    to the blocks that do not offer it and the reason."""
    refused = {
        "mlp.hook_router_logits": (list(range(n)), NO_ROUTER),
        "mlp.hook_experts": (list(range(n)), NO_ROUTER),
        **(refused or {}),
    }
    sites = {}
    for site in ALL_SITES:
        off, reason = refused.get(site, ([], ""))
        sites[site] = {"blocks": [b for b in range(n) if b not in off], "reason": reason}
    return {
        "model_type": "llama",
        "config_hash": "0123456789abcdef",
        "n_layers": n,
        "verified": not refused,
        "refused": "",
        "sites": sites,
        "failures": [],
    }


def frontier(layout: FrontierLayout | None) -> FrontierModel:
    return FrontierModel(
        id="f",
        lab="l",
        architecture=ARCH,  # 8 blocks
        parameters=1,
        trained=dt.date(2026, 1, 1),
        layout=layout,
    )


NO_Z_AT_3 = FrontierLayout.from_report(report(refused={"attn.hook_z": ([2, 3], Z_REASON)}))


def ablation(components: str = "heads", **layers: Any) -> dict[str, Any]:
    items = [{"prompt": f"Question {i}:", "target": " yes", "foil": " no"} for i in range(4)]
    return {
        "method": "ablation",
        "data": {"kind": "choices", "items": items},
        "components": components,
        "layers": layers or {"indices": [3]},
    }


def steering(depths: list[float]) -> dict[str, Any]:
    return {
        "method": "steering",
        "contrast": {"kind": "pairs", "pairs": [{"positive": "good", "negative": "bad"}] * 2},
        "evaluate": {"kind": "prompts", "prompts": ["The film was"] * 2},
        "target": " good",
        "foil": " bad",
        "layers": {"depths": depths},
        "scales": [2.0],
    }


def findings(spec: dict[str, Any], f: FrontierModel) -> list[tuple[str, str]]:
    out = vet(parse_spec(spec), f, f.policy, VettingLimits())
    return [(x.code, x.message) for x in out]


def test_from_report_keeps_what_vetting_needs_and_nothing_more() -> None:
    assert NO_Z_AT_3.n_layers == 8
    assert NO_Z_AT_3.supported == [
        "hook_resid_pre",
        "hook_attn_out",
        "hook_mlp_out",
        "hook_resid_post",
    ]
    assert [(r.site, r.blocks) for r in NO_Z_AT_3.refusals] == [
        ("attn.hook_z", [2, 3]),
        ("mlp.hook_router_logits", list(range(8))),
        ("mlp.hook_experts", list(range(8))),
    ]
    assert NO_Z_AT_3.refused_at("attn.hook_z", [0, 3, 5]) == ([3], Z_REASON)
    assert NO_Z_AT_3.refused_at("hook_resid_post", list(range(8))) == ([], "")
    long = FrontierLayout.from_report(report(refused={"attn.hook_z": ([1], "x" * 5000)}))
    assert len(long.refusals[0].reason) == 500 and long.refusals[0].reason.endswith("…")


def test_the_layout_is_strict() -> None:
    with pytest.raises(ValidationError):
        FrontierLayout(model_type="llama", n_layers=2, supported=["blocks.0.hook_z; rm"])
    with pytest.raises(ValidationError):
        FrontierLayout(model_type="llama", n_layers=2, unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        FrontierLayout.model_validate(
            {"model_type": "llama", "n_layers": 2, "refusals": [{"site": "x", "blocks": [-1]}]}
        )


def test_head_ablation_at_a_refused_block_is_refused_naming_site_block_and_reason() -> None:
    f = frontier(NO_Z_AT_3)
    assert findings(ablation(), f) == [
        ("site_not_supported", f"f's layout does not support attn.hook_z at block 3: {Z_REASON}")
    ]
    ((code, message),) = findings(ablation("both", depths=[0.0, 0.3, 0.4]), f)  # blocks 0, 2, 3
    assert code == "site_not_supported" and "attn.hook_z at blocks 2, 3:" in message
    # Every block (no layers given) includes the refused ones.
    assert findings(ablation() | {"layers": {}}, f)[0][0] == "site_not_supported"


def test_jobs_at_offered_sites_or_blocks_pass() -> None:
    f = frontier(NO_Z_AT_3)
    assert findings(ablation("heads", indices=[0, 1, -1]), f) == []
    assert findings(ablation("mlp"), f) == []  # hook_mlp_out is offered everywhere
    assert findings(steering([0.0, 0.5, 1.0]), f) == []
    assert (
        findings({"method": "evaluation", "data": {"kind": "prompts", "prompts": ["hi"]}}, f) == []
    )


def test_a_frontier_without_layout_data_is_unaffected() -> None:
    assert findings(ablation(), frontier(None)) == []
    assert findings(ablation("both", depths=[0.4]), frontier(None)) == []


def test_steering_at_a_refused_residual_site_is_refused() -> None:
    layout = FrontierLayout.from_report(
        report(refused={"hook_resid_post": ([7], "resid_post disagrees")})
    )
    assert findings(steering([0.5, 1.0]), frontier(layout)) == [  # blocks 4 and 7
        (
            "site_not_supported",
            "f's layout does not support hook_resid_post at block 7: resid_post disagrees",
        )
    ]
    assert findings(steering([0.0, 0.5]), frontier(layout)) == []


def test_a_layout_of_another_size_refuses_only_what_no_block_offers() -> None:
    partial = FrontierLayout.from_report(report(4, {"attn.hook_z": ([3], Z_REASON)}))
    assert findings(ablation(), frontier(partial)) == []  # block 3 of 4 is not block 3 of 8
    nowhere = FrontierLayout.from_report(report(4, {"attn.hook_z": ([0, 1, 2, 3], "no o_proj")}))
    assert findings(ablation(indices=[0]), frontier(nowhere)) == [
        ("site_not_supported", "f's layout does not support attn.hook_z at any block: no o_proj")
    ]


def test_a_refused_layout_refuses_every_job_that_hooks() -> None:
    refused = report()
    refused["refused"] = "the llama layout cannot be verified: hidden_states at block 1: FAILED"
    f = frontier(FrontierLayout.from_report(refused))
    ((code, message),) = findings(steering([0.5]), f)
    assert code == "site_not_supported" and "hook_resid_post" in message
    assert message.endswith("hidden_states at block 1: FAILED")
    assert (
        findings({"method": "evaluation", "data": {"kind": "prompts", "prompts": ["hi"]}}, f) == []
    )


def test_blocks_resolve_as_the_lab_site_resolves_them() -> None:
    spec = parse_spec(ablation(depths=[0.0, 0.35, 0.5, 1.0]))
    assert needed_blocks(spec, 8) == [0, 2, 4, 7]  # floor(d * 7 + 0.5)
    assert needed_blocks(parse_spec(ablation(indices=[-1, 9])), 8) == [7]  # 9: the run refuses


def test_submission_to_a_frontier_refusing_hook_z_is_a_422_naming_the_site(
    home: Settings, sqlite_url: str
) -> None:
    save_lab(Lab(id="l", name="L", frontiers=[frontier(NO_Z_AT_3)]), home)
    save_lab(
        Lab(id="old", name="Old", frontiers=[frontier(None).model_copy(update={"id": "g"})]), home
    )
    assert Catalog.load(home).frontier("f").layout == NO_Z_AT_3  # round-trips through the JSON
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        queue = JobQueue(engine, CatalogFrontiers(home), QueueSettings(), Clock())
        with pytest.raises(Invalid) as err:
            queue.submit("alice", "f", ablation())
        assert err.value.status == 422
        assert "f's layout does not support attn.hook_z at block 3" in str(err.value)
        assert [x["code"] for x in err.value.detail["findings"]] == ["site_not_supported"]
        assert queue.submit("alice", "f", steering([0.5])).state == "awaiting_review"
        assert queue.submit("alice", "g", ablation()).frontier == "g"  # no layout: unaffected
    finally:
        engine.dispose()
