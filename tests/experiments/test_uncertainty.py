"""Intervals: the bootstrap's coverage on a synthetic case with a known effect, verdicts from
intervals (and their edges), the items-to-settle estimate, and old reports still loading."""

from __future__ import annotations

import numpy as np
import pytest

from analoglab.experiments.transfer import (
    Interval,
    TransferError,
    TransferReport,
    compare,
    items_to_settle,
    verdict_of_interval,
)
from analoglab.experiments.uncertainty import (
    bounded_interval,
    headline_rows,
    items_to_narrow,
    percentile_interval,
    resample_weights,
    stream_seed,
)

from .synthetic import evaluation_result, identity, synthetic_check


def test_the_95_percent_interval_covers_a_known_effect_in_about_95_percent_of_seeds() -> None:
    # Effects 0.5 (analog, accuracy 0.75) and 0.8 (frontier, 0.9): effect agreement 0.625.
    truth_score, truth_effect = 0.5 / 0.8, 0.5
    covered_score = covered_effect = 0
    seeds = 200
    for seed in range(seeds):
        report = synthetic_check(0.75, 0.9, n=300, seed=seed)
        assert report.score_interval is not None
        covered_score += report.score_interval.low <= truth_score <= report.score_interval.high
        rng = np.random.default_rng([seed, 7])
        analog = evaluation_result("a", (rng.random(300) < 0.75).astype(float), 200, seed)
        assert analog.bootstrap is not None
        low, high = analog.bootstrap.interval("effect") or (0.0, 0.0)
        covered_effect += low <= truth_effect <= high
    assert 0.90 <= covered_score / seeds <= 0.99, covered_score
    assert 0.90 <= covered_effect / seeds <= 0.99, covered_effect


def test_too_few_items_make_the_verdict_inconclusive() -> None:
    many = synthetic_check(0.85, 0.9, n=2000, seed=3)
    few = synthetic_check(0.85, 0.9, n=12, seed=3)
    assert many.verdict == "transfers" and many.score_interval is not None
    assert many.score_interval.low >= 0.6
    assert few.verdict == "inconclusive" and few.score_interval is not None
    assert few.score_interval.low < 0.6 <= few.score_interval.high
    assert few.items == {"data": 12}
    assert few.items_needed is not None and few.items_needed["data"] > 12
    assert any("items would settle it" in note for note in few.notes)
    assert "inconclusive" in few.summary() and "95% interval" in few.summary()


def test_a_clear_miss_is_decided_from_its_interval() -> None:
    # The analog at chance, the frontier far above: the interval lies under 0.3.
    report = synthetic_check(0.5, 0.95, n=400, seed=1)
    assert report.verdict == "does_not_transfer"
    assert report.score_interval is not None and report.score_interval.high < 0.3
    assert report.items_needed is None


def test_the_intervals_of_the_parts_and_the_bootstrap_distribution() -> None:
    report = synthetic_check(0.8, 0.9, n=200, seed=5, resamples=50)
    assert report.resamples == 50
    assert set(report.distribution) == {"score", "effect_agreement", "accuracy_gap"}
    assert all(len(v) == 50 for v in report.distribution.values())
    for part in report.parts:
        assert part.interval is not None and part.interval.low <= part.interval.high
    # the replicates come paired: the same resamples of the same items on both models; a
    # score's interval is the percentile one widened to the basic one, within [0, 1]
    low, high = percentile_interval(report.distribution["score"])
    basic = (2 * report.score - high, 2 * report.score - low)
    assert report.score_interval is not None
    assert report.score_interval.low == pytest.approx(max(0.0, min(low, basic[0])), abs=1e-4)
    assert report.score_interval.high == pytest.approx(min(1.0, max(high, basic[1])), abs=1e-4)


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [
        (0.6, 0.9, "transfers"),
        (1.0, 1.0, "transfers"),
        (0.59, 0.9, "inconclusive"),
        (0.3, 0.59, "partial"),
        (0.3, 0.6, "inconclusive"),  # the upper bound reaches the cut-off: it may transfer
        (0.1, 0.29, "does_not_transfer"),
        (0.0, 0.0, "does_not_transfer"),
        (0.1, 0.3, "inconclusive"),
        (0.2, 0.7, "inconclusive"),  # straddles both cut-offs
    ],
)
def test_verdict_of_an_interval(low: float, high: float, verdict: str) -> None:
    assert verdict_of_interval(low, high) == verdict


def test_items_to_settle_and_to_narrow() -> None:
    # reaching 0.2 above 0.5: to stay clear of 0.6 it must reach 0.1, four times the items
    assert items_to_settle({"data": 50}, 0.5, Interval(low=0.3, high=0.7)) == {"data": 200}
    assert items_to_settle({"data": 50}, 0.6, Interval(low=0.4, high=0.8)) is None
    # an interval lopsided toward a cut-off it straddles: its reach on that side counts
    assert items_to_settle({"data": 30}, 0.0, Interval(low=0.0, high=0.33)) == {"data": 37}
    # straddling both cut-offs: the larger of the two factors, for every item set
    both = items_to_settle({"a": 10, "b": 20}, 0.45, Interval(low=0.2, high=0.65))
    assert both == {"a": 28, "b": 56}
    assert items_to_narrow(100, 0.2, 0.1) == 400
    assert items_to_narrow(100, 0.05, 0.1) == 100
    assert items_to_narrow(100, 0.2, 0.0) is None


def test_resamples_are_seeded_per_item_set_and_rows_sum_to_one() -> None:
    a = resample_weights(10, 30, seed=1, stream="data")
    assert a.shape == (30, 10) and np.allclose(a.sum(1), 1.0)
    assert np.array_equal(a, resample_weights(10, 30, seed=1, stream="data"))
    assert not np.array_equal(a, resample_weights(10, 30, seed=2, stream="data"))
    assert not np.array_equal(a, resample_weights(10, 30, seed=1, stream="test"))
    assert list(headline_rows(np.array([[0.1, -0.5], [0.2, 0.2]]))) == [-0.5, 0.2]
    with pytest.raises(ValueError):
        resample_weights(0, 30, seed=1, stream="data")
    # each row is the counts of one draw with replacement (the draw numpy's generator makes)
    rng = np.random.default_rng(stream_seed(1, "data"))
    for row, picks in zip(a, rng.integers(0, 10, size=(30, 10)), strict=True):
        assert np.array_equal(row * 10, np.bincount(picks, minlength=10))
    # kept for the next caller, so nobody may write into it
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_a_control_with_no_effect_stays_no_effect_with_intervals() -> None:
    report = synthetic_check(0.5, 0.5, n=400, seed=2)
    assert report.verdict == "no_effect"


def test_results_and_reports_from_before_intervals_still_load_and_compare() -> None:
    old_report = {
        "method": "evaluation",
        "spec_hash": "h",
        "analog": identity("a").model_dump(),
        "frontier": identity("f").model_dump(),
        "score": 0.9,
        "verdict": "transfers",
        "parts": [{"name": "effect_agreement", "value": 0.9, "analog": 0.9, "frontier": 1.0}],
        "notes": [],
    }
    loaded = TransferReport.model_validate(old_report)
    assert loaded.score_interval is None and loaded.parts[0].interval is None
    assert loaded.summary() == "transfers: score 0.900"
    new = synthetic_check(0.9, 0.95, n=100, seed=0)
    old_a = new.model_copy()  # a report round-trips through JSON with its intervals
    assert TransferReport.model_validate_json(old_a.model_dump_json()) == new
    rng = np.random.default_rng(0)
    a = evaluation_result("a", (rng.random(50) < 0.9).astype(float), 40, 0)
    f = evaluation_result("f", (rng.random(50) < 0.9).astype(float), 40, 0)
    report = compare(a.model_copy(update={"bootstrap": None}), f)
    assert report.score_interval is None and report.verdict in ("transfers", "partial")
    assert any("no interval" in note for note in report.notes)


def test_the_interval_of_a_score_at_its_bound_covers_it_in_about_95_percent_of_seeds() -> None:
    # Both models right on 90% of items: both effects are 0.8, so the true effect agreement
    # (min/max of the two true effects) and the score are exactly 1, the bound. The truth
    # comes from the two accuracies alone, not from the code under test.
    truth = min(0.8, 0.8) / max(0.8, 0.8)
    seeds, covered, percentile_covered = 200, 0, 0
    for seed in range(seeds):
        report = synthetic_check(0.9, 0.9, n=300, seed=seed)
        assert report.score_interval is not None and report.score_interval.low >= 0.0
        assert report.score_interval.high <= 1.0
        covered += report.score_interval.low <= truth <= report.score_interval.high
        low, high = percentile_interval(report.distribution["score"])
        percentile_covered += low <= truth <= high
    assert 0.90 <= covered / seeds <= 0.99, covered
    # what the percentile interval alone did: replicates of min/max never exceed 1
    assert percentile_covered / seeds < 0.8, percentile_covered


def test_a_bounded_interval_is_the_percentile_one_widened_and_clipped() -> None:
    values = np.linspace(0.80, 1.0, 101)
    low, high = percentile_interval(values)
    assert bounded_interval(values, 0.99) == (pytest.approx(low), 1.0)
    assert bounded_interval(values, 0.9) == (pytest.approx(low), pytest.approx(high))
    near_zero = np.linspace(0.0, 0.1, 101)
    assert bounded_interval(near_zero, 0.0)[0] == 0.0
    assert bounded_interval(near_zero, 0.0)[1] == pytest.approx(percentile_interval(near_zero)[1])


def test_results_drawn_differently_are_refused_not_truncated() -> None:
    rng = np.random.default_rng(0)
    a = evaluation_result("a", (rng.random(50) < 0.9).astype(float), 40, 0)
    f = evaluation_result("f", (rng.random(50) < 0.9).astype(float), 40, 0)
    assert f.bootstrap is not None
    other_seed = f.model_copy(update={"bootstrap": f.bootstrap.model_copy(update={"seed": 9})})
    with pytest.raises(TransferError, match="drawn differently.*seed 0.*seed 9"):
        compare(a, other_seed)
    fewer = evaluation_result("f", (rng.random(50) < 0.9).astype(float), 30, 0)
    with pytest.raises(TransferError, match="40 resamples.*30"):
        compare(a, fewer)
    other_items = evaluation_result("f", (rng.random(60) < 0.9).astype(float), 40, 0)
    with pytest.raises(TransferError, match="different items"):
        compare(a, other_items)
    # a damaged bootstrap (a replicate list cut short) is refused, never zipped short
    cut = f.bootstrap.model_copy(
        update={"metrics": f.bootstrap.metrics | {"effect": f.bootstrap.metrics["effect"][:25]}}
    )
    with pytest.raises(TransferError, match="other than 40 replicates of effect"):
        compare(a, f.model_copy(update={"bootstrap": cut}))


def test_pairing_the_replicates_narrows_the_interval_of_correlated_models() -> None:
    # The frontier gets an item right wherever the analog does, and 10% more: a resample with
    # many hard items lowers both effects together, and their ratio moves little. Unpaired
    # (the frontier's replicates shuffled against the analog's) they move apart.
    difficulty = np.random.default_rng(4).random(200)
    analog = (difficulty < 0.75).astype(float)
    frontier = (difficulty < 0.85).astype(float)
    a = evaluation_result("a", analog, 400, 1)
    f = evaluation_result("f", frontier, 400, 1)
    paired = compare(a, f)
    assert f.bootstrap is not None
    order = np.random.default_rng(0).permutation(400)
    shuffled = {k: [v[i] for i in order] for k, v in f.bootstrap.metrics.items()}
    unpaired = compare(
        a, f.model_copy(update={"bootstrap": f.bootstrap.model_copy(update={"metrics": shuffled})})
    )
    assert paired.score == unpaired.score
    assert paired.score_interval is not None and unpaired.score_interval is not None
    assert paired.score_interval.width < 0.75 * unpaired.score_interval.width
