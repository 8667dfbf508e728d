"""The tiny build publishes its frontier's verified layout in the catalog, and the queue's
vetting reads it: a llama frontier offers every dense site at every block."""

from __future__ import annotations

from analoglab.config import Settings
from analoglab.experiments.spec import parse_spec
from analoglab.foundry.build import BuildResult
from analoglab.foundry.presets import get_preset
from analoglab.models.catalog import Catalog
from analoglab.queue.vetting import VettingLimits, vet


def test_the_catalog_carries_the_frontiers_verified_layout(
    tiny_build: tuple[Settings, BuildResult],
) -> None:
    settings, _ = tiny_build
    frontier = Catalog.load(settings).frontier(get_preset("tiny").frontier_name)
    layout = frontier.layout
    assert layout is not None and layout.model_type == "llama" and not layout.refused
    assert layout.n_layers == frontier.architecture.layers
    dense = ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]
    assert layout.supported == dense
    # A dense MLP has no router: those sites are refused at every block, with the reason.
    assert {r.site: r.blocks for r in layout.refusals} == {
        "mlp.hook_router_logits": list(range(layout.n_layers)),
        "mlp.hook_experts": list(range(layout.n_layers)),
    }
    assert all("router" in r.reason for r in layout.refusals)
    items = [{"prompt": f"Q{i}:", "target": " a", "foil": " b"} for i in range(4)]
    spec = parse_spec({"method": "ablation", "data": {"kind": "choices", "items": items}})
    assert vet(spec, frontier, frontier.policy, VettingLimits()) == []
