"""Transfer metrics on hand-made results: the formulas, the verdicts, and the refusals."""

from __future__ import annotations

import pytest

from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity
from analoglab.experiments.transfer import (
    TransferError,
    compare,
    effect_agreement,
    on_grid,
    profile_correlation,
)


def identity(name: str, layers: int) -> ModelIdentity:
    return ModelIdentity(
        name=name,
        weights_sha256="0" * 64,
        model_type="llama",
        layers=layers,
        hidden_size=8,
        parameters=1,
    )


def profile(values: list[float]) -> LayerProfile:
    n = len(values)
    return LayerProfile(
        indices=list(range(n)), depths=[i / max(1, n - 1) for i in range(n)], values=values
    )


def result(
    name: str,
    values: list[float],
    effect: float | None,
    method: str = "steering",
    spec_hash: str = "h",
    **metrics: float,
) -> ExperimentResult:
    main = {
        "steering": "effect",
        "patching": "recovery",
        "probe": "accuracy",
        "activation_stats": "norm",
        "evaluation": None,
    }[method]
    return ExperimentResult(
        method=method,
        spec_hash=spec_hash,
        spec={},
        model=identity(name, len(values)),
        device="cpu",
        versions={},
        metrics=({"effect": effect} if effect is not None else {}) | metrics,
        profiles={main: profile(values)} if main else {},
    )


def test_a_shared_behaviour_transfers() -> None:
    # A 2-layer analog and a 5-layer frontier whose effect peaks at the same depth.
    report = compare(
        result("analog", [0.2, 0.8], 0.8), result("frontier", [0.1, 0.3, 0.5, 0.8, 1.0], 1.0)
    )
    parts = {p.name: p for p in report.parts}
    assert parts["effect_agreement"].value == pytest.approx(0.8)
    assert parts["profile_correlation"].value > 0.95
    assert parts["peak_agreement"].value == 1.0
    assert report.score == pytest.approx(
        0.8 * (1 + parts["profile_correlation"].value + 1) / 3, abs=1e-4
    )
    assert report.verdict == "transfers"


def test_a_behaviour_only_the_frontier_has_does_not_transfer() -> None:
    report = compare(
        result("analog", [0.01, -0.02], 0.02, method="patching"),
        result("frontier", [0.0, 0.1, 0.9, 1.0], 3.0, method="patching"),
    )
    assert report.score < 0.05 and report.verdict == "does_not_transfer"
    assert "the frontier shows the effect and the analog does not" in report.notes


def test_a_control_with_no_effect_anywhere_scores_zero() -> None:
    report = compare(result("analog", [0.01, 0.02], 0.02), result("frontier", [0.0, 0.03], 0.03))
    assert report.score == 0.0 and report.verdict == "no_effect"


def test_opposite_signs_do_not_transfer() -> None:
    report = compare(result("analog", [0.5, -0.9], -0.9), result("frontier", [0.5, 0.9], 0.9))
    assert report.score == 0.0 and "opposite signs" in report.notes[0]


def test_probe_accuracy_gap_is_shown() -> None:
    a = result("a", [0.6, 0.9], 0.8, method="probe", accuracy=0.9)
    f = result("f", [0.6, 0.8, 0.95], 0.9, method="probe", accuracy=0.95)
    parts = {p.name: p for p in compare(a, f).parts}
    assert parts["accuracy_gap"].value == pytest.approx(0.95)


def test_methods_without_an_effect_compare_profiles() -> None:
    report = compare(
        result("a", [1.0, 2.0, 4.0], None, method="activation_stats"),
        result("f", [1.0, 3.0, 5.0, 9.0], None, method="activation_stats"),
    )
    assert report.score > 0.9 and report.verdict == "transfers"


def test_grid_interpolation_and_flat_profiles() -> None:
    assert list(on_grid(profile([0.0, 1.0]))) == pytest.approx([i / 10 for i in range(11)])
    assert profile_correlation(profile([1.0, 1.0]), profile([0.0, 1.0])) == 0.0
    # Two flat profiles: agreement when at the same level (a probe at 100% everywhere).
    assert profile_correlation(profile([1.0, 1.0]), profile([1.0, 1.0, 1.0])) == 1.0
    assert profile_correlation(profile([1.0, 1.0]), profile([0.6, 0.6, 0.6])) == 0.0
    assert effect_agreement(0.05, 0.05, floor=0.1) == 0.0
    assert effect_agreement(0.05, 1.0, floor=0.1) == 0.0  # only one model shows it
    assert effect_agreement(-1.0, -0.5, floor=0.1) == 0.5


def test_results_of_different_specs_are_refused() -> None:
    with pytest.raises(TransferError, match="different specs"):
        compare(result("a", [1.0], 1.0, spec_hash="x"), result("f", [1.0], 1.0, spec_hash="y"))
    with pytest.raises(TransferError, match="no transfer comparison"):
        compare(
            result("a", [1.0], 1.0, method="evaluation").model_copy(update={"method": "fidelity"}),
            result("f", [1.0], 1.0, method="evaluation").model_copy(update={"method": "fidelity"}),
        )
