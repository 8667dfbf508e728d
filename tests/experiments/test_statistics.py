"""The statistics behind a trustworthy verdict, each on a constructed case where the answer is
known: effects read from their own intervals (no effect, one-sided effects, too few items), a
component or layer chosen once on the full data and held fixed in the bootstrap, normalised
patching, flat profiles, and map fits that choose their ridge strength on validation text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from analoglab.experiments.mapping import choose_l2, fit_ridge, map_corpus, r_squared
from analoglab.experiments.methods import ablation, patching, probe
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.transfer import (
    NULL_REACH,
    compare,
    effect_state,
    is_flat,
    verdict_of_effects,
)
from analoglab.experiments.uncertainty import make_replicates, resample_weights

from .synthetic import identity, synthetic_check

# -- effects read from their own intervals ----------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "point", "state"),
    [
        (-0.05, 0.08, 0.01, "absent"),  # below the gate
        (-0.06, 0.22, 0.08, "absent"),  # holds 0, within the null reach
        (-0.4, 0.5, 0.05, "unclear"),  # holds 0 but reaches far: too few items
        (0.2, 0.6, 0.4, "present"),
        (-0.9, -0.5, -0.7, "present"),
        # excludes 0 with the point under the gate, within the null reach: a small effect,
        # nearer to 0 than (-0.06, 0.22), which is absent: absent too
        (0.02, 0.16, 0.09, "absent"),
        (-0.16, -0.003, -0.06, "absent"),
        (0.05, 0.45, 0.09, "unclear"),  # the point under the gate, but it reaches far
        (0.02, 0.16, 0.12, "present"),  # the point reaches the gate
    ],
)
def test_the_state_of_an_effect_from_its_interval(
    low: float, high: float, point: float, state: str
) -> None:
    assert effect_state(low, high, point, floor=0.1) == state


def test_verdicts_the_effects_settle_before_the_score() -> None:
    assert verdict_of_effects("absent", "absent") == "no_effect"
    assert verdict_of_effects("absent", "present") == "does_not_transfer"
    assert verdict_of_effects("present", "absent") == "does_not_transfer"
    assert verdict_of_effects("present", "present") is None
    assert verdict_of_effects("unclear", "absent") is None


def test_a_pair_with_no_effect_is_no_effect_although_the_score_interval_straddles() -> None:
    # Both models at chance on 200 items (a negation task neither has): a few replicates
    # pass the 0.1 gate on both models by chance and score near 1, so the score's interval
    # reaches past 0.3; the effects' own intervals hold 0 and stay within the null reach.
    straddling = no_effect = 0
    seeds = 40
    for seed in range(seeds):
        report = synthetic_check(0.52, 0.49, n=200, seed=seed, stream=5)
        assert report.score_interval is not None and report.effect_intervals is not None
        straddling += report.score_interval.high >= 0.3
        # never inconclusive; in a few seeds one model's draw shows an effect by chance (a
        # 95% interval excludes 0 in 5% of them), and then it does not transfer
        assert report.verdict in ("no_effect", "does_not_transfer"), (seed, report.notes)
        if report.verdict == "no_effect":
            no_effect += 1
            assert report.effect_states == {"analog": "absent", "frontier": "absent"}
            iv = report.effect_intervals["frontier"]
            assert iv.low <= 0.0 <= iv.high and max(-iv.low, iv.high) <= NULL_REACH
            assert any("neither model shows the effect" in note for note in report.notes)
    assert no_effect >= 0.85 * seeds
    assert straddling >= 3  # the score's interval alone would have said inconclusive


def test_too_few_items_at_chance_are_not_called_no_effect() -> None:
    report = synthetic_check(0.5, 0.5, n=10, seed=1, stream=5)
    assert report.effect_states is not None
    assert "unclear" in report.effect_states.values()
    assert report.verdict != "no_effect"


def test_a_behaviour_only_the_frontier_shows_does_not_transfer_from_the_effects() -> None:
    report = synthetic_check(0.5, 0.97, n=200, seed=3, stream=5)
    assert report.effect_states == {"analog": "absent", "frontier": "present"}
    assert report.verdict == "does_not_transfer"
    assert any("only the frontier shows the effect" in note for note in report.notes)


def test_with_both_effects_present_the_gate_does_not_zero_replicates() -> None:
    # The analog has a quarter of the frontier's effect (0.62 vs 0.99 accuracy). Both effects
    # are shown present once on the full data; replicates are not gated at 0.1 again, so the
    # interval is the ratio's own (no pile of zeros dragging the lower bound to 0 and the
    # basic interval's reflection doubling the upper one).
    report = synthetic_check(0.62, 0.99, n=400, seed=4, stream=5)
    assert report.effect_states == {"analog": "present", "frontier": "present"}
    assert report.score_interval is not None
    assert report.score_interval.low > 0.1
    assert report.score_interval.high < 2 * report.score + 1e-9 - 0.05


# -- ablation: the component chosen once ------------------------------------------------------


@dataclass
class FakeContext:
    resamples: int = 400
    bootstrap_seed: int = 0

    def weights(self, n: int, stream: str) -> np.ndarray:
        return resample_weights(n, self.resamples, self.bootstrap_seed, stream)


def test_the_ablated_component_is_chosen_once_and_its_share_bootstrapped_fixed() -> None:
    # One layer of 12 components that each remove the same 20% of a 2-nat behaviour, with
    # item noise. Re-choosing the largest share in each replicate (the old way) sits above
    # the truth; the share of the component chosen on the full data does not.
    rng = np.random.default_rng(0)
    n, comps = 64, 12
    clean = 2.0 + rng.normal(0.0, 0.5, n)
    ablated = clean[None, :] - 0.4 + rng.normal(0.0, 1.0, (comps, n))
    ctx = FakeContext()
    assert ablation.behaviour_shown(ctx, clean)  # type: ignore[arg-type]
    shares = ablation.removed_shares(clean.mean(), ablated.mean(axis=1), True)
    chosen = ablation.chosen_components(shares, [0] * comps, 1)
    assert chosen == [int(np.argmax(shares))]
    reps = ablation._replicates(ctx, clean, ablated, chosen, 0, True)  # type: ignore[arg-type]
    fixed = np.asarray(reps.metrics["effect"])
    assert abs(fixed.mean() - shares[chosen[0]]) < 0.02  # centred on its point estimate
    w = ctx.weights(n, "data")
    rechosen = ablation.removed_shares(w @ clean, w @ ablated.T, True).max(axis=1)
    assert rechosen.mean() > fixed.mean() + 0.02  # the old replicates' upward bias


def test_a_model_without_the_behaviour_has_no_shares_to_remove() -> None:
    rng = np.random.default_rng(1)
    clean = rng.normal(0.0, 1.0, 64)  # no preference between target and foil
    ctx = FakeContext()
    if ablation.behaviour_shown(ctx, clean):  # type: ignore[arg-type]
        pytest.skip("this draw happens to show a preference")  # pragma: no cover
    shares = ablation.removed_shares(clean.mean(), clean[None, :].mean(axis=1) - 0.5, False)
    assert shares.tolist() == [0.0]


# -- patching: the normalised metric ---------------------------------------------------------


def test_patching_effects_are_on_one_scale_whatever_the_logit_scale() -> None:
    # Two models with the same behaviour: one with logits twice the other's. The raw swing
    # differs 2×; the flip share (the effect transfer compares) and the recovery (share of
    # the clean-corrupt difference restored) are the same.
    rng = np.random.default_rng(2)
    n = 64
    clean = 5.0 + rng.normal(0.0, 1.0, n)
    corrupt = -4.0 + rng.normal(0.0, 1.0, n)
    patched = np.stack([corrupt + 0.1 * (clean - corrupt), corrupt + 0.8 * (clean - corrupt)])
    ctx = FakeContext()
    out = []
    for scale in (1.0, 2.0):
        c, k, p = clean * scale, corrupt * scale, patched * scale
        w = ctx.weights(n, "data")
        assert patching.swing_shown(w, c, k)
        reps = patching._replicates(ctx, w, c, k, p, True)  # type: ignore[arg-type]
        out.append((patching.flips(c, k).mean(), np.mean(reps.profiles["recovery"], axis=0)))
    assert out[0][0] == out[1][0] == 1.0
    assert np.allclose(out[0][1], [0.1, 0.8]) and np.allclose(out[1][1], [0.1, 0.8])


def test_patching_with_no_swing_recovers_nothing() -> None:
    rng = np.random.default_rng(3)
    same = rng.normal(0.0, 1.0, 32)
    noise = same + rng.normal(0.0, 0.01, 32)
    ctx = FakeContext()
    w = ctx.weights(32, "data")
    assert not patching.swing_shown(w, same, noise)
    reps = patching._replicates(ctx, w, same, noise, np.stack([same]), False)  # type: ignore[arg-type]
    assert np.all(np.asarray(reps.profiles["recovery"]) == 0.0)
    assert abs(patching.flips(same, noise).mean()) < 0.2


def test_a_nearly_flat_profile_has_no_shape() -> None:
    assert is_flat(np.array([0.51, 0.52, 0.50, 0.53]))  # within 0.05 of a unit scale
    assert not is_flat(np.array([0.1, 0.5, 0.9]))
    assert is_flat(np.array([40.0, 41.0, 40.5]))  # 5% of a norm profile's level
    assert not is_flat(np.array([4.0, 20.0, 40.0]))


# -- probe: the layer chosen without the split it is read on ----------------------------------


def test_the_probe_layer_chosen_on_the_other_splits_is_not_biased_upward() -> None:
    # A shuffled-labels probe: every layer and split at chance (0.5) with test noise. The
    # largest accuracy over layers is biased upward; the accuracy of each split at the layer
    # the other splits chose is not.
    rng = np.random.default_rng(4)
    held, best = [], []
    for _ in range(300):
        per_split = 0.5 + rng.normal(0.0, 0.08, (4, 6))
        layers = probe.held_out_layers(per_split)
        held.append(np.mean([per_split[k, layers[k]] for k in range(4)]))
        best.append(per_split[0].max())
    assert abs(np.mean(held) - 0.5) < 0.01
    assert np.mean(best) > 0.58


# -- maps: ridge strength by validation, corpora ----------------------------------------------


def test_the_ridge_strength_is_chosen_by_validation_r_squared() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 40))
    y = x[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(120, 4))  # 3 of 40 matter
    grid = (1e-6, 1e-3, 1.0, 1e3)
    chosen = choose_l2((x[:80], x[80:]), (y[:80], y[80:]), grid)
    scores = {}
    for l2 in grid:
        w, b = fit_ridge(x[:80], y[:80], l2)
        scores[l2] = r_squared(y[80:], x[80:] @ w + b)
    assert chosen == max(scores, key=lambda k: scores[k])
    assert chosen > 1e-6  # with 40 inputs and 80 rows, no ridge overfits


def test_standardised_ridge_recovers_a_map_whatever_the_input_scales() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 5)) * np.array([100.0, 1.0, 0.01, 10.0, 1.0])
    a = rng.normal(size=(5, 3))
    w, b = fit_ridge(x, x @ a + 1.0, l2=1e-10)
    assert np.allclose(w, a, atol=1e-5) and np.allclose(b, 1.0, atol=1e-5)


def test_map_corpora_are_drawn_apart_and_an_unknown_one_is_refused() -> None:
    from analoglab.experiments.mapping import MapError

    general, neutral = map_corpus("general", 40, 0), map_corpus("neutral", 40, 0)
    assert len(general) == len(neutral) == 40 and general == map_corpus("general", 40, 0)
    assert any(" overall it was " in text for text in general)  # reviews among the mix
    assert not any(" overall it was " in text for text in neutral)
    with pytest.raises(MapError, match="unknown map corpus 'task'"):
        map_corpus("task", 40, 0)


# -- profiles: flatness decided once, centre depths ------------------------------------------


def profiled(name: str, rows: np.ndarray, effect: float = 1.0) -> ExperimentResult:
    """An ablation-like result: ``rows`` ``[B, L]`` replicates of its profile, whose point is
    their mean; the effect is ``effect`` in every replicate."""
    from analoglab.experiments.result import LayerProfile

    n_layers = rows.shape[1]
    depths = [i / max(1, n_layers - 1) for i in range(n_layers)]
    point = rows.mean(axis=0)
    return ExperimentResult(
        method="ablation",
        spec_hash="h",
        spec={},
        model=identity(name),
        device="cpu",
        versions={},
        metrics={"effect": effect},
        profiles={
            "effect": LayerProfile(
                indices=list(range(n_layers)), depths=depths, values=point.tolist()
            )
        },
        bootstrap=make_replicates(
            resamples=rows.shape[0],
            seed=0,
            items={"data": 64},
            metrics={"effect": np.full(rows.shape[0], effect)},
            profiles={"effect": rows},
        ),
    )


def test_a_profile_flat_within_its_noise_has_no_correlation_in_the_score() -> None:
    # A two-layer analog whose layers both remove about all of the behaviour (1.0 and 0.94,
    # each ±0.08 between replicates) against a frontier whose first layer carries it. Read
    # replicate by replicate, the analog's tiny slope tips either way and the correlation
    # jumps between -1 and 1; decided once, the analog is flat: its correlation is undefined
    # and left out, and the depth agreement carries the difference.
    rng = np.random.default_rng(7)
    analog = profiled("a", np.array([1.0, 0.94]) + rng.normal(0.0, 0.08, (200, 2)))
    frontier = profiled("f", np.array([1.0, 0.2, 0.35, 0.2]) + rng.normal(0.0, 0.01, (200, 4)))
    report = compare(analog, frontier)
    names = [p.name for p in report.parts]
    assert "profile_correlation" not in names and "depth_agreement" in names
    assert "profile_correlation" not in report.distribution
    assert any("no shape beyond its noise" in note for note in report.notes)
    depth = {p.name: p for p in report.parts}["depth_agreement"]
    assert report.score == pytest.approx((1 + depth.value) / 2, abs=1e-3)
    assert report.score_interval is not None and report.score_interval.width < 0.1
    # a clearly shaped analog profile (0.2 → 1.0) keeps its (negative, so 0) correlation
    shaped = profiled("s", np.array([0.2, 1.0]) + rng.normal(0.0, 0.02, (200, 2)))
    kept = compare(shaped, frontier)
    assert "profile_correlation" in [p.name for p in kept.parts]


def test_no_shares_of_a_logit_difference_that_cannot_be_told_from_zero() -> None:
    # Above chance by its items (70% right) but by a hair either way: the mean LD (the
    # shares' denominator) has an interval holding 0, so its shares would be unbounded.
    rng = np.random.default_rng(8)
    clean = np.where(rng.random(64) < 0.7, 0.01, -0.03) + rng.normal(0.0, 0.002, 64)
    ctx = FakeContext()
    w = ctx.weights(64, "data")
    assert np.percentile(w @ (clean > 0), 2.5) > 0.5  # the accuracy alone clears chance
    assert not ablation.behaviour_shown(ctx, clean)  # type: ignore[arg-type]
    assert ablation.behaviour_shown(ctx, clean + 1.0)  # type: ignore[arg-type]
