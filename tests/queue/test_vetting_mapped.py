"""Vetting covers what the transfer-science specs added: a mapped steering scale is bounded like
a sweep's, a job's bootstrap cannot ask for more resamples than the frontier's policy lets the
lab compute, and the cost estimate counts random draws and a mapped method's extra passes; and
a catalog file changed on disk (a layout or policy published) reaches the next submission."""

from __future__ import annotations

import datetime as dt
from typing import Any

from analoglab.config import Settings
from analoglab.experiments.spec import parse_spec
from analoglab.models.catalog import FrontierModel, FrontierPolicy, Lab, save_lab
from analoglab.queue.jobs import CatalogFrontiers
from analoglab.queue.vetting import VettingLimits, estimated_cost, settings_count, vet

from .conftest import ARCH

FRONTIER = FrontierModel(
    id="f", lab="l", architecture=ARCH, parameters=1, trained=dt.date(2026, 1, 1)
)
LIMITS = VettingLimits(max_abs_scale=8, max_cost=10_000)


def mapped_steering(scale: float, n: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "method": "mapped_steering",
        "artifact": {
            "kind": "steering_vector",
            "analog": "a",
            "depth": 0.5,
            "width": 4,
            "values": [0.1, 0.2, 0.3, 0.4],
        },
        "contrast": {"kind": "pairs", "pairs": [{"positive": "good", "negative": "bad"}] * n},
        "evaluate": {"kind": "prompts", "prompts": ["The film was"] * n},
        "target": " good",
        "foil": " bad",
        "scale": scale,
        **extra,
    }


def steering(scales: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "method": "steering",
        "contrast": {"kind": "pairs", "pairs": [{"positive": "good", "negative": "bad"}] * 2},
        "evaluate": {"kind": "prompts", "prompts": ["The film was"] * 2},
        "target": " good",
        "foil": " bad",
        "layers": {"depths": [0.5]},
        "scales": scales,
        **extra,
    }


def codes(spec: dict[str, Any], policy: FrontierPolicy | None = None) -> list[str]:
    allowed = FrontierPolicy(allowed_methods=["steering", "mapped_steering", "probe"])
    return [f.code for f in vet(parse_spec(spec), FRONTIER, policy or allowed, LIMITS)]


def test_a_mapped_steering_scale_is_bounded_like_a_sweeps() -> None:
    assert codes(mapped_steering(8.0)) == []
    assert codes(mapped_steering(-8.5)) == ["scale_out_of_bounds"]
    assert codes(steering([1.0, 9.0])) == ["scale_out_of_bounds"]


def test_bootstrap_resamples_over_the_policys_cap_are_refused() -> None:
    capped = FrontierPolicy(allowed_methods=["steering", "mapped_steering"], max_bootstrap=300)
    spec = steering([1.0], bootstrap={"resamples": 301, "seed": 0})
    findings = vet(parse_spec(spec), FRONTIER, capped, LIMITS)
    assert [f.code for f in findings] == ["bootstrap_over_cap"]
    assert "301" in findings[0].message and "300" in findings[0].message
    assert codes(steering([1.0], bootstrap={"resamples": 300, "seed": 0}), capped) == []
    assert FrontierPolicy().max_bootstrap == 1000  # the lab's release cap by default


def test_the_cost_counts_random_draws_and_mapped_passes() -> None:
    plain = parse_spec(steering([1.0, 2.0, 4.0]))
    assert settings_count(plain) == 3
    drawn = parse_spec(steering([1.0, 2.0, 4.0], control="random_vector", random_draws=5))
    assert settings_count(drawn) == 3 + 4  # the sweep, then each further draw at the top scale
    assert estimated_cost(drawn, FRONTIER) == 4 * 1 * 7  # prompts × layers × settings
    mapped = parse_spec(mapped_steering(4.0, n=3))
    # every prompt runs unsteered, mapped, native and with each of 4 random directions
    assert settings_count(mapped) == 7
    assert estimated_cost(mapped, FRONTIER) == 6 * 1 * 7


def test_a_changed_catalog_file_reaches_the_next_lookup(home: Settings) -> None:
    save_lab(Lab(id="l", name="L", frontiers=[FRONTIER]), home)
    frontiers = CatalogFrontiers(home)
    assert frontiers("f").policy.max_prompts == 512
    stricter = FRONTIER.model_copy(update={"policy": FrontierPolicy(max_prompts=7)})
    path = save_lab(Lab(id="l", name="L", frontiers=[stricter]), home)
    assert frontiers("f").policy.max_prompts == 7, path
