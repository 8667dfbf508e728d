"""Transfer metrics on hand-made results: the formulas, the verdicts, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity
from analoglab.experiments.transfer import (
    TransferError,
    compare,
    draw_averaged,
    effect_agreement,
    on_grid,
    profile_correlation,
)
from analoglab.experiments.uncertainty import make_replicates


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
    # the profiles' centre depths (magnitude-weighted): 0.62 and 0.67
    assert parts["depth_agreement"].value == pytest.approx(1 - (0.6723 - 0.62), abs=1e-3)
    assert report.score == pytest.approx(
        0.8 * (1 + parts["profile_correlation"].value + parts["depth_agreement"].value) / 3,
        abs=1e-4,
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


# -- random draws and controls ----------------------------------------------------------------


def drawn(
    name: str,
    method: str,
    spec: dict[str, object],
    per_draw: dict[str, list[float]],
    resamples: int = 200,
    noise: float = 0.02,
) -> ExperimentResult:
    """A result whose replicate ``b`` uses draw ``b mod K`` (``per_draw[metric][k]``, with
    item noise); its point estimate is draw 0's. No profiles: the score is ``s_e``."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    draws = len(next(iter(per_draw.values())))
    reps = {
        k: [v[b % draws] + float(rng.normal(0.0, noise)) for b in range(resamples)]
        for k, v in per_draw.items()
    }
    return ExperimentResult(
        method=method,
        spec_hash="h",
        spec=spec,
        model=identity(name, 2),
        device="cpu",
        versions={},
        metrics={k: v[0] for k, v in per_draw.items()},
        bootstrap=make_replicates(
            resamples=resamples,
            seed=0,
            items={"evaluate": 64, "contrast": 32},
            metrics={k: np.asarray(v) for k, v in reps.items()},
        ),
    )


RANDOM_CONTROL = {"method": "steering", "control": "random_vector"}


def test_a_clearly_small_random_control_does_not_transfer() -> None:
    # Four random draws: one agrees by chance on both models (0.3 and 0.25), three do not
    # (opposite signs, or an effect under the floor on one model).
    a = drawn("a", "steering", RANDOM_CONTROL, {"effect": [0.19, 0.3, -0.2, 0.02]})
    f = drawn("f", "steering", RANDOM_CONTROL, {"effect": [-0.05, 0.25, 0.05, -0.15]})
    report = compare(a, f)
    # over the mixture of draws the interval reaches from 0 to the lucky draw's 0.83 ...
    assert report.score_interval is not None and report.score_interval.high > 0.6
    # ... and averaged over the draws (what a control's verdict reads) it is small
    assert report.draws == 4 and report.draw_mean_interval is not None
    assert report.draw_mean_interval.high < 0.3
    # each model's effect averaged over its draws (0.08 and 0.025) is small, but two pairs of
    # directions that far apart cannot tell what random directions do: both unclear, and the
    # score averaged over the draws decides
    assert report.effect_states == {"analog": "unclear", "frontier": "unclear"}
    assert report.verdict == "does_not_transfer" and report.items_needed is None
    assert any("averaged over the draws" in note for note in report.notes)
    assert "averaged over 4 draws" in report.summary()


def test_a_random_control_reads_each_models_effect_averaged_over_its_draws() -> None:
    # Every direction moves the analog one way (a systematic effect of random perturbations
    # of that norm); the frontier's draws cancel in pairs: only the analog shows the effect.
    a = drawn("a", "steering", RANDOM_CONTROL, {"effect": [0.4, 0.35, 0.45, 0.4]})
    f = drawn("f", "steering", RANDOM_CONTROL, {"effect": [0.4, -0.4, 0.3, -0.3]})
    report = compare(a, f)
    assert report.effect_states == {"analog": "present", "frontier": "absent"}
    assert report.effect_intervals is not None
    assert abs(report.effect_intervals["frontier"].high) < 0.1
    assert report.verdict == "does_not_transfer"


def test_a_random_controls_interval_carries_the_spread_of_its_directions() -> None:
    # Eight pairs of directions whose means spread (sd 0.2) around 0.1, on little item
    # noise: the items alone would make a mean of 0.1 an effect; the directions' own margin,
    # t(7) · 0.2 / √8 ≈ 0.17, leaves it within the null reach: absent
    rng = np.random.default_rng(3)
    z = rng.standard_normal(8)
    pair_means = 0.1 + 0.2 * (z - z.mean()) / z.std(ddof=1)
    per_draw = [float(m + d) for m in pair_means for d in (0.05, -0.05)]
    a = drawn(
        "a", "steering", {**RANDOM_CONTROL, "random_draws": 16}, {"effect": per_draw}, noise=0.002
    )
    f = drawn(
        "f", "steering", {**RANDOM_CONTROL, "random_draws": 16}, {"effect": [0.0] * 16}, noise=0.002
    )
    report = compare(a, f)
    assert report.effect_intervals is not None
    low, high = report.effect_intervals["analog"].low, report.effect_intervals["analog"].high
    spread = float(pair_means.std(ddof=1))
    assert high - low == pytest.approx(2 * 2.365 * spread / np.sqrt(8), rel=0.1)
    assert low < 0.0 < high and report.effect_states["analog"] == "absent"
    # held fixed, the same directions' item-only interval would exclude 0
    items_only = np.percentile(draw_averaged(a.bootstrap.metrics["effect"], 16), [2.5, 97.5])
    assert items_only[0] > 0.05


def test_a_control_that_every_draw_carries_is_not_hidden() -> None:
    # every random direction moves both models the same way: the control itself transfers
    a = drawn("a", "steering", RANDOM_CONTROL, {"effect": [0.5, 0.45, 0.55, 0.5]})
    f = drawn("f", "steering", RANDOM_CONTROL, {"effect": [0.48, 0.5, 0.5, 0.52]})
    report = compare(a, f)
    assert report.draw_mean_interval is not None and report.draw_mean_interval.low > 0.6
    assert report.verdict == "transfers"


def test_where_the_draws_spread_dominates_the_advice_names_draws_not_items() -> None:
    # a probe whose four splits disagree: the spread between splits, not the items, makes
    # the interval straddle 0.6
    a = drawn("a", "probe", {}, {"effect": [0.7, 0.4, 0.8, 0.5], "accuracy": [0.85] * 4})
    f = drawn("f", "probe", {}, {"effect": [0.75, 0.75, 0.75, 0.75], "accuracy": [0.9] * 4})
    report = compare(a, f)
    assert report.verdict == "inconclusive" and report.items_needed is None
    (note,) = [n for n in report.notes if "straddles" in n]
    assert "more items will not narrow it" in note and "splits" in note
    # the same spread from the items instead: items are the advice
    g = drawn("g", "probe", {}, {"effect": [0.6] * 4, "accuracy": [0.85] * 4}, noise=0.15)
    items = compare(g, f)
    assert items.verdict == "inconclusive" and items.items_needed is not None


# -- mapped checks ----------------------------------------------------------------------------


def mapped(
    name: str,
    effect: float,
    native: float,
    random: float,
    method: str = "mapped_steering",
    noise: float = 0.02,
) -> ExperimentResult:
    per_draw = {
        "effect": [effect] * 4,
        "native_effect": [native] * 4,
        # the random control's four draws: spread around ``random``
        "random_effect": [random * native * s for s in (1.0, -0.5, 0.5, 1.5)],
    }
    res = drawn(name, method, {"method": method}, per_draw, noise=noise)
    assert res.bootstrap is not None
    reps = res.bootstrap.metrics
    ratio = [e / n for e, n in zip(reps["effect"], reps["native_effect"], strict=True)]
    rand = [r / n for r, n in zip(reps["random_effect"], reps["native_effect"], strict=True)]
    boot = res.bootstrap.model_copy(
        update={"metrics": reps | {"ratio_to_native": ratio, "random_ratio": rand}}
    )
    metrics = res.metrics | {
        "ratio_to_native": effect / native,
        "random_ratio": random,
        "map_r2": 0.9,
    }
    return res.model_copy(update={"metrics": metrics, "bootstrap": boot})


def test_a_carried_vector_that_works_transfers() -> None:
    report = compare(mapped("a", 0.6, 0.7, 0.05), mapped("f", 0.5, 0.6, 0.04))
    parts = {p.name: p for p in report.parts}
    assert list(parts) == ["effect_agreement", "ratio_to_native", "random_control"]
    assert parts["effect_agreement"].analog == 0.6 and parts["effect_agreement"].frontier == 0.5
    assert parts["effect_agreement"].value == pytest.approx(0.5 / 0.6)
    assert parts["ratio_to_native"].frontier == pytest.approx(0.5 / 0.6)
    assert parts["ratio_to_native"].analog == pytest.approx(0.6 / 0.7)
    assert report.score == pytest.approx(0.5 / 0.6, abs=1e-4)
    assert all(p.interval is not None for p in parts.values())
    assert report.score_interval is not None and report.score_interval.low >= 0.6
    assert report.verdict == "transfers"
    assert any("held-out R²" in n for n in report.notes)


def test_a_carried_vector_no_better_than_a_random_one_does_not_transfer() -> None:
    report = compare(mapped("a", 0.6, 0.7, 0.6), mapped("f", 0.5, 0.6, 0.9))
    parts = {p.name: p for p in report.parts}
    assert parts["random_control"].interval is not None
    assert parts["random_control"].interval.low >= 0.3
    assert report.verdict == "does_not_transfer"
    assert any("is not the artifact's" in n for n in report.notes)
    # a random control straddling the cut: inconclusive, and items are not the advice
    unsure = compare(mapped("a", 0.6, 0.7, 0.2), mapped("f", 0.5, 0.6, 0.2))
    assert unsure.verdict == "inconclusive" and unsure.items_needed is None
    assert any("random control's 95% interval" in n for n in unsure.notes)


def test_an_artifact_for_a_behaviour_the_analog_lacks_does_nothing() -> None:
    # IOI: the analog lacks it, so its artifact does nothing there, nor mapped on the frontier
    report = compare(
        mapped("a", 0.02, 0.03, 0.0, "mapped_probe"), mapped("f", 0.01, 0.9, 0.02, "mapped_probe")
    )
    assert report.score < 0.1 and report.verdict == "no_effect"
    assert report.method == "mapped_probe"


def test_a_mapped_check_without_replicates_reads_the_point_estimates() -> None:
    a, f = mapped("a", 0.6, 0.7, 0.05), mapped("f", 0.5, 0.6, 0.04)
    report = compare(a, f.model_copy(update={"bootstrap": None}))
    assert report.score_interval is None and report.verdict == "transfers"
    assert any("no interval" in n for n in report.notes)
