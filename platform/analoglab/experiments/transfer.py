"""Transfer metrics: does what a spec found on an analog hold on the frontier?

:func:`compare` takes the results of one spec on an analog and on its frontier and returns a
:class:`TransferReport`: parts, each a number in [0, 1] with what it was computed from, and a
transfer score in [0, 1] combining them. The formulas (see ``docs/transfer.md``):

- **effect agreement** ``s_e``: each result's headline ``effect`` (in units comparable across
  models: a share of the behaviour's full swing, accuracy above chance, ...). Unless both
  models show an effect of at least ``floor`` with the same sign, nothing transferred and
  ``s_e = 0``; otherwise ``s_e = min(|a|, |f|) / max(|a|, |f|)``.
- **profile correlation** ``s_r = max(0, r)``: Pearson's r of the method's layer profiles,
  both interpolated onto a common grid of relative depths (two flat profiles at the same
  level count as r = 1). Where exactly one profile is flat, r is undefined and the part is
  left out of the score (:func:`correlation_defined`). With replicates, whether a profile is
  flat is decided once, from its bootstrap (:func:`shaped_beyond_noise`).
- **depth agreement** ``s_d = 1 − |centre depth(a) − centre depth(f)|``, the centre depth
  being the profile's magnitude-weighted mean relative depth (:func:`centre_depth`; 1 for two
  flat profiles). A profile is flat when its spread is within :data:`FLAT` of
  ``max(1, its largest magnitude)``.
- **score** ``= s_e · (1 + s_r + s_d) / 3`` where the method has a profile (``s_e · (1 +
  s_d) / 2`` where the correlation is left out), else ``s_e``; methods without a headline
  effect (activation statistics) score the mean of their shape parts.

**Intervals.** Where both results carry their bootstrap (``result.bootstrap``: replicates
``b = 1..B`` drawn over the same items on both models, a paired bootstrap; see
:mod:`.uncertainty`), every part and the score are computed again on each replicate pair,
and each gets its 95% interval (:func:`~analoglab.experiments.uncertainty.bounded_interval`:
the percentile interval widened to the basic one, within [0, 1]). Two bootstraps drawn
differently (resamples, seed or items) are refused (:class:`TransferError`).

**Verdicts.** First each model's effect is read from its own 95% interval (of the effect
averaged over its draws, for a probe's splits and a random steering control's directions;
:func:`effect_states`, :func:`effect_state`): *absent* (below the gate ``floor``, or holding
0 within :data:`NULL_REACH`), *present* (excluding 0, the point reaching the gate) or
*unclear*. Neither present (both absent) → ``no_effect``; one present, the other absent →
``does_not_transfer`` (:func:`verdict_of_effects`). Only otherwise is the score's interval
read (:func:`verdict_of_interval`): ``transfers`` when its lower bound is at least 0.6,
``partial`` within [0.3, 0.6), ``does_not_transfer`` under 0.3, ``inconclusive`` when it
straddles a cut-off. Where both effects are present, the gate is not applied again inside
each replicate (the decision was made once, on the full data): a replicate's effect
agreement needs only the same sign, so the score's interval is the ratio's own and not a
pile of zeros from replicates that dipped under the gate. An inconclusive report says how
many items would settle it (:func:`items_to_settle`), or, where the spread between a
method's random draws dominates the width (:func:`draw_spread`), that items will not and
draws would. A **control** (a random steering vector, shuffled probe labels) whose effects
do not settle it is decided on the score averaged over its draws (:func:`draw_averaged`).
Results without a bootstrap (made before intervals) get the point verdict, as before:
``transfers`` (score ≥ 0.6), ``partial`` (≥ 0.3), ``does_not_transfer``, ``no_effect``.

**Mapped methods** (``mapped_steering``, ``mapped_probe``; :func:`compare_mapped`): the
analog's result is the artifact on its own analog, the frontier's the artifact through the
map. Parts: effect agreement (as above, of the two ``effect``s), ``ratio_to_native`` (the
frontier's mapped effect over its native effect, within [0, 1], 0 where the native effect is
under the floor; the score) and ``random_control`` (``|random / native|`` on the frontier,
at most 1). The verdict is the score interval's band where the random control's interval
lies below :data:`CONTROL_CUT`; a control reaching it makes it ``does_not_transfer``, one
straddling it ``inconclusive`` (:func:`verdict_of_mapped`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from analoglab.errors import AnalogLabError
from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity
from analoglab.experiments.spec import MAPPED_RANDOM_DRAWS
from analoglab.experiments.uncertainty import (
    LEVEL,
    bounded_interval,
    items_to_narrow,
    percentile_interval,
)

GRID = np.linspace(0.0, 1.0, 11)
DEFAULT_FLOOR = 0.1
TRANSFERS, PARTIAL = 0.6, 0.3
CUTOFFS = (PARTIAL, TRANSFERS)
#: An effect the items cannot tell apart from none (its 95% interval holds 0) counts as
#: absent only where that interval also stays within this reach of 0 (in units of the
#: behaviour's full swing, like every ``effect``); a wider one is unclear: too few items.
NULL_REACH = 0.3
#: A profile is flat (no shape to compare) when its spread is within this share of
#: ``max(1, its largest magnitude)``: 0.05 of the full swing for the unit-scale profiles
#: (recovery, shares, accuracies, steering effects), 5% for norm profiles.
FLAT = 0.05
#: A mapped check's random control (|random / native effect| on the frontier) must stay
#: below this for the check to transfer: no control above ``partial``.
CONTROL_CUT = PARTIAL
#: The methods that carry an analog's artifact (compared by :func:`compare_mapped`).
MAPPED = ("mapped_steering", "mapped_probe")
#: The random directions a mapped method draws.
MAPPED_DRAWS = MAPPED_RANDOM_DRAWS

Verdict = Literal["transfers", "partial", "does_not_transfer", "no_effect", "inconclusive"]
EffectState = Literal["present", "absent", "unclear"]

# The layer profile each method is compared on (None: the method has no layer profile).
MAIN_PROFILE: dict[str, str | None] = {
    "activation_stats": "norm",
    "steering": "effect",
    "probe": "accuracy",
    "ablation": "effect",
    "patching": "recovery",
    "evaluation": None,
}


class TransferError(AnalogLabError):
    """Two results that cannot be compared (different specs, a method with no transfer)."""


class Interval(BaseModel):
    """A percentile interval of the bootstrap replicates (``level``: 0.95 for 95%)."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    level: float = LEVEL

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"


class TransferPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: float = Field(ge=0.0, le=1.0)
    analog: float | None = None
    frontier: float | None = None
    detail: str = ""
    interval: Interval | None = None


class TransferReport(BaseModel):
    """What :func:`compare` found. ``score_interval``, ``resamples``, ``items``,
    ``items_needed`` and ``distribution`` (the replicates of the score and of each part) are
    absent in reports made before intervals, which still load."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: str
    spec_hash: str
    analog: ModelIdentity
    frontier: ModelIdentity
    score: float = Field(ge=0.0, le=1.0)
    verdict: Verdict
    parts: list[TransferPart]
    notes: list[str] = Field(default_factory=list)
    score_interval: Interval | None = None
    resamples: int | None = None
    items: dict[str, int] = Field(default_factory=dict)
    items_needed: dict[str, int] | None = None
    distribution: dict[str, list[float]] = Field(default_factory=dict)
    draws: int | None = Field(
        None, description="a control's random draws, where its verdict reads their average"
    )
    draw_mean_interval: Interval | None = Field(
        None, description="a control: the interval of the score averaged over its draws"
    )
    effect_states: dict[str, EffectState] | None = Field(
        None, description="whether each model shows the effect, read from its own interval"
    )
    effect_intervals: dict[str, Interval] | None = Field(
        None, description="the 95% interval of each model's effect the states were read from"
    )

    def summary(self) -> str:
        """One line: verdict, score and its interval (what a notebook prints)."""
        line = f"{self.verdict.replace('_', ' ')}: score {self.score:.3f}"
        if self.score_interval is not None:
            line += f", 95% interval {self.score_interval}"
        if self.draw_mean_interval is not None:
            line += f" (averaged over {self.draws} draws: {self.draw_mean_interval})"
        if self.items_needed:
            need = ", ".join(f"{k} {v}" for k, v in self.items_needed.items())
            line += f"; about {need} items would settle it"
        return line


def on_grid(profile: LayerProfile) -> np.ndarray:
    """The profile linearly interpolated onto :data:`GRID` (a single layer gives a constant)."""
    depths, values = np.asarray(profile.depths, float), np.asarray(profile.values, float)
    order = np.argsort(depths)
    grid: np.ndarray = np.interp(GRID, depths[order], values[order])
    return grid


def is_flat(values: np.ndarray) -> bool:
    """No shape to compare: the spread is within :data:`FLAT` of ``max(1, the largest
    magnitude)`` (a profile whose values all lie within 0.05 of each other on a unit scale
    has no peak and no slope a correlation could read; only noise)."""
    return float(np.ptp(values)) <= 1e-9 + FLAT * max(1.0, float(np.max(np.abs(values))))


def profile_correlation(
    a: LayerProfile, f: LayerProfile, flat: tuple[bool, bool] | None = None
) -> float:
    """Pearson's r on the common grid. Two flat profiles agree (1) when their levels are
    within 5% of each other and not otherwise (0); one flat profile against a shaped one: 0.
    ``flat`` gives each profile's flatness as decided once (:func:`shaped_beyond_noise`);
    without it, each profile's own :func:`is_flat`."""
    x, y = on_grid(a), on_grid(f)
    flat_x, flat_y = flat if flat is not None else (is_flat(x), is_flat(y))
    if flat_x and flat_y:
        level_x, level_y = float(np.mean(x)), float(np.mean(y))
        return (
            1.0 if abs(level_x - level_y) <= 0.05 * max(abs(level_x), abs(level_y), 1e-9) else 0.0
        )
    # a flat profile against a shaped one; or a replicate that came out exactly level
    if flat_x or flat_y or np.ptp(x) <= 1e-12 or np.ptp(y) <= 1e-12:
        return 0.0
    r = float(np.corrcoef(x, y)[0, 1])
    return 0.0 if math.isnan(r) else r


def shaped_beyond_noise(profile: LayerProfile, rows: Sequence[Sequence[float]] | None) -> bool:
    """Whether a profile has a shape its noise cannot make: it is not flat (:func:`is_flat`),
    and, where its bootstrap replicates are given, the difference between its highest and its
    lowest layer (the two chosen on the full data) has a 95% interval that excludes 0.
    Decided once, on the full data: a near-flat profile whose replicates tip one way and the
    other would otherwise make the correlation jump between −1 and 1."""
    values = np.asarray(profile.values, dtype=np.float64)
    if is_flat(on_grid(profile)):
        return False
    if not rows:
        return True
    hi, lo = int(np.argmax(values)), int(np.argmin(values))
    reps = np.asarray(rows, dtype=np.float64)
    low, _ = percentile_interval(reps[:, hi] - reps[:, lo])
    return low > 0.0


def centre_depth(profile: LayerProfile) -> float:
    """Where a profile's mass lies over relative depth: the mean depth on :data:`GRID`
    weighted by the profile's magnitude (0.5 for a profile of zeros). Unlike the peak's
    depth it moves continuously as the values do, so two layers of nearly equal value do not
    make it jump from one end of the model to the other between bootstrap replicates."""
    weights = np.abs(on_grid(profile))
    total = float(weights.sum())
    return 0.5 if total <= 1e-12 else float((weights * GRID).sum() / total)


def depth_distance(
    a: LayerProfile, f: LayerProfile, flat: tuple[bool, bool] | None = None
) -> float:
    """Distance between the profiles' centre depths; 0 for two flat profiles (``flat`` as
    in :func:`profile_correlation`)."""
    flat_a, flat_f = flat if flat is not None else (is_flat(on_grid(a)), is_flat(on_grid(f)))
    if flat_a and flat_f:
        return 0.0
    return abs(centre_depth(a) - centre_depth(f))


def effect_agreement(a: float, f: float, floor: float) -> float:
    """0 unless both models show the effect (at least ``floor``) with the same sign."""
    if min(abs(a), abs(f)) < floor or a * f <= 0:
        return 0.0
    return min(abs(a), abs(f)) / max(abs(a), abs(f))


def effect_state(low: float, high: float, point: float, floor: float) -> EffectState:
    """Whether one model shows the effect, read from its effect's 95% interval:

    - ``absent``: the interval lies below the gate (within ``(−floor, floor)``); or it
      reaches no further than :data:`NULL_REACH` from 0 and either holds 0 (the items cannot
      tell the effect from none) or has its point under the gate (an effect shown to be
      there but small: an interval nearer to 0 than one that holds 0 is not less absent);
    - ``present``: the interval excludes 0 and the point effect reaches the gate;
    - ``unclear``: anything else (an interval that reaches far: too few items).
    """
    if -floor < low and high < floor:
        return "absent"
    near = max(abs(low), abs(high)) <= NULL_REACH
    if low <= 0.0 <= high:
        return "absent" if near else "unclear"
    if abs(point) < floor:
        return "absent" if near else "unclear"
    return "present"


def verdict_of_score(score: float) -> Literal["transfers", "partial", "does_not_transfer"]:
    """The verdict of a point estimate (results without a bootstrap)."""
    if score >= TRANSFERS:
        return "transfers"
    return "partial" if score >= PARTIAL else "does_not_transfer"


def verdict_of_interval(
    low: float, high: float
) -> Literal["transfers", "partial", "does_not_transfer", "inconclusive"]:
    """The verdict of a score's interval: the band of cut-offs it lies in, or
    ``inconclusive`` when it straddles one (``low < cut <= high``)."""
    for cut in CUTOFFS:
        if low < cut <= high:
            return "inconclusive"
    return verdict_of_score(low)


def items_to_settle(
    items: dict[str, int], score: float, interval: Interval
) -> dict[str, int] | None:
    """Items that would make an interval straddling a cut-off fall on one side of it.

    For each cut-off ``c`` the interval straddles, the interval's reach on ``c``'s side of the
    point score (``high − score`` for a cut above it, ``score − low`` below) must shrink to
    the distance ``|c − score|``; widths go as ``1/√n``, so each item set grows by the factor
    ``(reach / distance)²`` (:func:`~analoglab.experiments.uncertainty.items_to_narrow`), the
    largest over the straddled cut-offs. None when the score sits on a straddled cut-off (no
    number of items settles it). An estimate: it assumes the width comes from the items (a
    method's random parts, such as random control directions, do not shrink with items)."""
    factor = 1.0
    for cut in CUTOFFS:
        if not interval.low < cut <= interval.high:
            continue
        distance = abs(cut - score)
        reach = interval.high - score if cut > score else score - interval.low
        if distance <= 1e-12:
            return None
        factor = max(factor, (reach / distance) ** 2)
    needed = {k: items_to_narrow(n, math.sqrt(factor), 1.0) for k, n in items.items()}
    return {k: int(v) for k, v in needed.items() if v is not None}


@dataclass(frozen=True)
class _Inputs:
    """What the score of one method is computed from, for the point or one replicate."""

    effect_a: float | None
    effect_f: float | None
    profile_a: LayerProfile | None
    profile_f: LayerProfile | None
    accuracy_a: float | None
    accuracy_f: float | None
    # each profile's flatness, decided once on the full data (None: each profile's own)
    flat: tuple[bool, bool] | None = None


def _scored(inputs: _Inputs, floor: float, gated: bool = True) -> tuple[dict[str, float], float]:
    """The parts' values and the score (formulas in the module docstring). ``gated=False``
    (both models' effects shown present from their intervals, decided once on the full
    data): a replicate's effect agreement needs the same sign but not the floor again."""
    parts: dict[str, float] = {}
    shape: list[float] = []
    if inputs.profile_a is not None and inputs.profile_f is not None:
        dist = depth_distance(inputs.profile_a, inputs.profile_f, inputs.flat)
        parts["depth_agreement"] = 1.0 - dist
        shape = [1.0 - dist]
        if correlation_defined(inputs):
            r = profile_correlation(inputs.profile_a, inputs.profile_f, inputs.flat)
            parts["profile_correlation"] = max(0.0, r)
            shape.insert(0, max(0.0, r))
    if inputs.effect_a is not None and inputs.effect_f is not None:
        se = effect_agreement(inputs.effect_a, inputs.effect_f, floor if gated else 0.0)
        parts["effect_agreement"] = se
        if inputs.accuracy_a is not None and inputs.accuracy_f is not None:
            parts["accuracy_gap"] = max(0.0, 1.0 - abs(inputs.accuracy_a - inputs.accuracy_f))
        score = se * (1.0 + sum(shape)) / (1 + len(shape)) if shape else se
    else:
        score = sum(shape) / len(shape) if shape else 0.0
    return parts, min(1.0, max(0.0, score))


def correlation_defined(inputs: _Inputs) -> bool:
    """Whether the profiles' correlation says anything: not where exactly one of them is
    flat (a profile with no shape beyond its noise has no correlation with anything; that
    the other is localised and it is not shows in the depth agreement instead)."""
    if inputs.profile_a is None or inputs.profile_f is None:
        return False
    flat = correlation_flat(inputs)
    return flat[0] == flat[1]


def correlation_flat(inputs: _Inputs) -> tuple[bool, bool]:
    """Each profile's flatness as the score reads it."""
    assert inputs.profile_a is not None and inputs.profile_f is not None
    return inputs.flat or (is_flat(on_grid(inputs.profile_a)), is_flat(on_grid(inputs.profile_f)))


def _point_inputs(a: ExperimentResult, f: ExperimentResult, profile: str | None) -> _Inputs:
    has_profile = profile is not None and profile in a.profiles and profile in f.profiles
    has_effect = "effect" in a.metrics and "effect" in f.metrics
    has_accuracy = has_effect and "accuracy" in a.metrics and "accuracy" in f.metrics
    return _Inputs(
        effect_a=a.metrics["effect"] if has_effect else None,
        effect_f=f.metrics["effect"] if has_effect else None,
        profile_a=a.profiles[profile] if has_profile and profile else None,
        profile_f=f.profiles[profile] if has_profile and profile else None,
        accuracy_a=a.metrics["accuracy"] if has_accuracy else None,
        accuracy_f=f.metrics["accuracy"] if has_accuracy else None,
    )


def _check_pairing(a: ExperimentResult, f: ExperimentResult) -> None:
    """Two bootstraps that can be paired replicate by replicate, else a :class:`TransferError`
    (never a silent truncation to the shorter one)."""
    ra, rf = a.bootstrap, f.bootstrap
    if ra is None or rf is None:
        return
    if (ra.resamples, ra.seed) != (rf.resamples, rf.seed):
        raise TransferError(
            f"the two results' bootstraps were drawn differently ({ra.resamples} resamples "
            f"with seed {ra.seed} on {a.model.name}, {rf.resamples} with seed {rf.seed} on "
            f"{f.model.name}): a paired bootstrap needs the same spec's bootstrap on both"
        )
    if ra.items != rf.items:
        raise TransferError(
            f"the two results resampled different items ({ra.items} on {a.model.name}, "
            f"{rf.items} on {f.model.name}): a paired bootstrap needs the same items on both"
        )
    for result, reps in ((a, ra), (f, rf)):
        short = [k for k, v in reps.metrics.items() if len(v) != reps.resamples]
        short += [k for k, rows in reps.profiles.items() if len(rows) != reps.resamples]
        if short:
            raise TransferError(
                f"the bootstrap of {result.model.name} holds other than {reps.resamples} "
                f"replicates of {', '.join(sorted(short))}: the result is damaged"
            )


def _replicate_inputs(
    a: ExperimentResult, f: ExperimentResult, point: _Inputs, profile: str | None
) -> list[_Inputs] | None:
    """The inputs of each replicate pair, or None where either result has no bootstrap (or
    lacks replicates of what the point uses). Bootstraps drawn differently (resamples, seed,
    items) are a :class:`TransferError`."""
    ra, rf = a.bootstrap, f.bootstrap
    if ra is None or rf is None:
        return None
    _check_pairing(a, f)

    def metric(name: str, used: float | None) -> tuple[list[float], list[float]] | bool | None:
        if used is None:
            return False  # not used: nothing to replicate
        if name in ra.metrics and name in rf.metrics:
            return ra.metrics[name], rf.metrics[name]
        return None

    effect = metric("effect", point.effect_a)
    accuracy = metric("accuracy", point.accuracy_a)
    if effect is None:
        return None
    profiles: tuple[list[list[float]], list[list[float]]] | None = None
    if point.profile_a is not None and point.profile_f is not None and profile is not None:
        if profile not in ra.profiles or profile not in rf.profiles:
            return None
        profiles = ra.profiles[profile], rf.profiles[profile]
    out = []
    for b in range(ra.resamples):
        pa = pf = None
        if profiles is not None and point.profile_a is not None and point.profile_f is not None:
            pa = point.profile_a.model_copy(update={"values": profiles[0][b]})
            pf = point.profile_f.model_copy(update={"values": profiles[1][b]})
        out.append(
            _Inputs(
                effect_a=effect[0][b] if isinstance(effect, tuple) else None,
                effect_f=effect[1][b] if isinstance(effect, tuple) else None,
                profile_a=pa,
                profile_f=pf,
                accuracy_a=accuracy[0][b] if isinstance(accuracy, tuple) else point.accuracy_a,
                accuracy_f=accuracy[1][b] if isinstance(accuracy, tuple) else point.accuracy_f,
            )
        )
    return out


# -- random draws -----------------------------------------------------------------------------


def draws_of(method: str, spec: dict[str, Any]) -> tuple[int, str] | None:
    """How many random draws a result's replicates go through (replicate ``b`` uses draw
    ``b mod K``) and the spec field that sets ``K``; None for a method without them."""
    if method == "steering" and spec.get("control") == "random_vector":
        return int(spec.get("random_draws", 4)), "random_draws"
    if method == "probe":
        return int(spec.get("splits", 4)), "splits"
    if method in MAPPED:
        return MAPPED_DRAWS, f"random draws ({MAPPED_DRAWS}, fixed)"
    return None


def is_control(method: str, spec: dict[str, Any]) -> bool:
    """A spec whose point is to show nothing: a random steering vector, shuffled labels."""
    return (method == "steering" and spec.get("control") == "random_vector") or (
        method == "probe" and spec.get("control") == "shuffled_labels"
    )


def draw_spread(values: Sequence[float], draws: int) -> tuple[float, float]:
    """The variance between the draws' means and the mean variance within a draw, of
    replicates where replicate ``b`` uses draw ``b mod draws`` ((0, 0) when too few)."""
    v = np.asarray(values, dtype=np.float64)
    groups = [v[k::draws] for k in range(draws)]
    if draws < 2 or any(len(g) < 2 for g in groups):
        return 0.0, 0.0
    between = float(np.var([g.mean() for g in groups]))
    within = float(np.mean([g.var() for g in groups]))
    return between, within


def draw_averaged(values: Sequence[float] | np.ndarray, draws: int) -> np.ndarray:
    """Replicates of the value averaged over the draws: replicates ``jK … jK+K−1`` use draws
    ``0 … K−1``, each on a resample of its own, so their mean is one replicate of the
    average over the ``K`` draws (``B // K`` of them)."""
    v = np.asarray(values, dtype=np.float64)
    m = len(v) // draws
    averaged: np.ndarray = v[: m * draws].reshape(m, draws).mean(axis=1)
    return averaged


#: Student's t, 97.5% quantile, for 1 … 15 degrees of freedom (a control draws at most 16
#: directions): the margin of a mean over a few independent draws.
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
)


def draws_margin(values: Sequence[float] | np.ndarray, draws: int) -> float:
    """The 95% margin, from the random directions alone, of a value averaged over ``draws``
    directions drawn in antithetic pairs (replicate ``b`` uses draw ``b mod draws``): each
    pair's mean is an independent estimate of what random directions do, so the margin is
    ``t · sd(pair means) / √pairs`` (Student's t for pairs − 1 degrees of freedom; unpaired
    draws count one by one where ``draws`` is odd, and so do the two draws of a single
    pair: with one degree of freedom, a margin wide enough to leave the effect unclear)."""
    v = np.asarray(values, dtype=np.float64)
    means = np.asarray([v[k::draws].mean() for k in range(draws)])
    units = means.reshape(-1, 2).mean(axis=1) if draws % 2 == 0 and draws > 2 else means
    if len(units) < 2:
        return 0.0
    return (
        T975[min(len(units) - 1, len(T975)) - 1] * float(units.std(ddof=1)) / math.sqrt(len(units))
    )


def _interval(values: Sequence[float], point: float) -> Interval:
    low, high = bounded_interval(values, point)
    return Interval(low=low, high=high)


# -- compare ----------------------------------------------------------------------------------


def compare(
    analog: ExperimentResult, frontier: ExperimentResult, floor: float = DEFAULT_FLOOR
) -> TransferReport:
    """The transfer report of one spec's results on an analog and on its frontier."""
    if analog.spec_hash != frontier.spec_hash:
        raise TransferError(
            "the two results come from different specs "
            f"({analog.spec_hash[:12]} vs {frontier.spec_hash[:12]}); run the same spec on both"
        )
    if analog.method in MAPPED:
        return compare_mapped(analog, frontier, floor)
    if analog.method not in MAIN_PROFILE:
        raise TransferError(f"method {analog.method!r} has no transfer comparison")
    profile_name = MAIN_PROFILE[analog.method]
    point = _point_inputs(analog, frontier, profile_name)
    replicates = _replicate_inputs(analog, frontier, point, profile_name)
    if replicates is not None and point.profile_a is not None and point.profile_f is not None:
        assert analog.bootstrap is not None and frontier.bootstrap is not None
        assert profile_name is not None
        flat = (
            not shaped_beyond_noise(point.profile_a, analog.bootstrap.profiles[profile_name]),
            not shaped_beyond_noise(point.profile_f, frontier.bootstrap.profiles[profile_name]),
        )
        point = replace(point, flat=flat)
        replicates = [replace(inputs, flat=flat) for inputs in replicates]
    values, score = _scored(point, floor)
    states = effect_states(analog, frontier, point, floor) if replicates is not None else None
    both_present = states is not None and states[0] == states[1] == "present"
    distribution: dict[str, list[float]] = {}
    if replicates is not None:
        for inputs in replicates:
            rep_values, rep_score = _scored(inputs, floor, gated=not both_present)
            distribution.setdefault("score", []).append(round(rep_score, 6))
            for name, value in rep_values.items():
                distribution.setdefault(name, []).append(round(value, 6))
    points = values | {"score": score}
    intervals = {k: _interval(v, points[k]) for k, v in distribution.items()}

    def part(
        name: str, detail: str, analog: float | None = None, frontier: float | None = None
    ) -> TransferPart:
        return TransferPart(
            name=name,
            value=values[name],
            analog=analog,
            frontier=frontier,
            detail=detail,
            interval=intervals.get(name),
        )

    parts: list[TransferPart] = []
    early_notes: list[str] = []
    if "effect_agreement" in values:
        detail = "same sign × smaller/larger effect"
        parts.append(part("effect_agreement", detail, point.effect_a, point.effect_f))
    if "depth_agreement" in values and point.profile_a and point.profile_f:
        if "profile_correlation" in values:
            r = profile_correlation(point.profile_a, point.profile_f, point.flat)
            detail = f"Pearson r of the {profile_name} profiles over relative depth: {r:.3f}"
            parts.append(part("profile_correlation", detail))
        else:
            notes_flat = "the analog's" if correlation_flat(point)[0] else "the frontier's"
            early_notes.append(
                f"{notes_flat} {profile_name} profile has no shape beyond its noise: the "
                "profiles' correlation is undefined and left out of the score"
            )
        pa, pf = centre_depth(point.profile_a), centre_depth(point.profile_f)
        detail = f"centre depths {pa:.2f} vs {pf:.2f}"
        parts.append(part("depth_agreement", detail, pa, pf))
    if "accuracy_gap" in values:
        detail = f"1 − |accuracy gap| = {values['accuracy_gap']:.3f}"
        parts.append(part("accuracy_gap", detail, point.accuracy_a, point.accuracy_f))

    notes: list[str] = list(early_notes)
    no_effect = False
    if point.effect_a is not None and point.effect_f is not None:
        ea, ef = point.effect_a, point.effect_f
        if max(abs(ea), abs(ef)) < floor:
            no_effect = True
            notes.append(
                f"neither model shows an effect of at least {floor}: nothing transfers "
                "(a control, or a behaviour neither model has)"
            )
        elif abs(ea) < floor <= abs(ef):
            notes.append("the frontier shows the effect and the analog does not")
        elif abs(ef) < floor <= abs(ea):
            notes.append("the analog shows the effect and the frontier does not")
        elif ea * ef < 0:
            notes.append("the effect has opposite signs on the two models")

    report = TransferReport(
        method=analog.method,
        spec_hash=analog.spec_hash,
        analog=analog.model,
        frontier=frontier.model,
        score=round(score, 4),
        verdict="no_effect" if no_effect else verdict_of_score(score),
        parts=parts,
        notes=notes,
        score_interval=intervals.get("score"),
        distribution=distribution,
    )
    if report.score_interval is None:
        if analog.bootstrap is None or frontier.bootstrap is None:
            report.notes.append(
                "no interval: a result carries no bootstrap (made before intervals, or its "
                "lab keeps replicates in)"
            )
        return report
    assert analog.bootstrap is not None
    report.resamples = len(distribution["score"])
    report.items = dict(analog.bootstrap.items)
    draws = draws_of(analog.method, analog.spec)
    decided_by, centre = report.score_interval, score
    if draws is not None and is_control(analog.method, analog.spec):
        averaged = draw_averaged(distribution["score"], draws[0])
        if len(averaged) >= MIN_AVERAGED:
            centre = float(averaged.mean())
            decided_by = _interval(averaged.tolist(), centre)
            report.draws = draws[0]
            report.draw_mean_interval = decided_by
            report.notes.append(
                f"a control: its replicates go through {draws[0]} random draws, and any one "
                "draw may agree by chance; the verdict reads the score averaged over the "
                f"draws, {centre:.3f}, 95% interval {decided_by} (over {len(averaged)} "
                f"averaged replicates; it holds these {draws[0]} draws fixed)"
            )
    verdict: Verdict = verdict_of_interval(decided_by.low, decided_by.high)
    if verdict == "does_not_transfer" and no_effect:
        verdict = "no_effect"
    if states is not None:
        report.effect_states = {"analog": states[0], "frontier": states[1]}
        report.effect_intervals = {"analog": states[2], "frontier": states[3]}
        by_effects = verdict_of_effects(states[0], states[1])
        if by_effects is not None:
            verdict = by_effects
            report.notes.append(_effects_note(states, by_effects, floor))
    report.verdict = verdict
    if verdict == "inconclusive":
        _advise(report, decided_by, centre, draws, report.draws is not None)
    return report


def verdict_of_effects(analog: EffectState, frontier: EffectState) -> Verdict | None:
    """The verdict the two effects' own intervals settle before the score's is read:
    ``no_effect`` when neither model shows the effect, ``does_not_transfer`` when one shows
    it and the other does not; None (read the score's interval) otherwise."""
    if analog == frontier == "absent":
        return "no_effect"
    if {analog, frontier} == {"absent", "present"}:
        return "does_not_transfer"
    return None


def _effects_note(
    states: tuple[EffectState, EffectState, Interval, Interval], verdict: Verdict, floor: float
) -> str:
    sa, sf, ia, if_ = states
    said = (
        f"the effect's 95% interval is {ia} on the analog ({sa}) and {if_} on the frontier "
        f"({sf}); absent: below the gate of {floor}, or within {NULL_REACH} of 0 holding 0 "
        "or with the point under the gate"
    )
    if verdict == "no_effect":
        return f"{said}: neither model shows the effect, so nothing transfers"
    who = "the frontier" if sf == "present" else "the analog"
    return f"{said}: only {who} shows the effect, so it does not transfer"


def effect_states(
    analog: ExperimentResult, frontier: ExperimentResult, point: _Inputs, floor: float
) -> tuple[EffectState, EffectState, Interval, Interval] | None:
    """Each model's :func:`effect_state` and the interval it was read from; None where the
    method has no effect or a result lacks its replicates. Where a method's replicates go
    through draws, the interval is that of the effect averaged over the draws
    (:func:`draw_averaged`), as its point estimate is: a probe's train/test splits are one
    estimate, not several; a random steering control's draws (antithetic pairs of
    directions, :mod:`.methods.steering`) estimate what a random direction of that norm does
    on average, and a control that steers only along the direction it happened to draw, one
    way for that direction and the other way for its opposite, does nothing on average.
    The splits' interval holds them fixed (:func:`draw_averaged`); the random directions'
    is widened on each side by their own margin (:func:`draws_margin`, combined with the
    items' in quadrature): a few directions may average far from what random directions do,
    and an interval over the items alone would call that mean an effect."""
    if point.effect_a is None or point.effect_f is None:
        return None
    ra, rf = analog.bootstrap, frontier.bootstrap
    if ra is None or rf is None or "effect" not in ra.metrics or "effect" not in rf.metrics:
        return None
    drawn = draws_of(analog.method, analog.spec)  # (mapped methods have their own compare)
    draws = drawn[0] if drawn is not None else 1
    # a random control's draws are directions (their spread counts); a probe's, its splits
    directions = drawn is not None and drawn[1] == "random_draws"
    out: list[Any] = []
    intervals: list[Interval] = []
    for values, centre in (
        (ra.metrics["effect"], point.effect_a),
        (rf.metrics["effect"], point.effect_f),
    ):
        reps = np.asarray(values, dtype=np.float64)
        if draws > 1:
            averaged = draw_averaged(reps, draws)
            if len(averaged) >= MIN_AVERAGED:
                centre = float(averaged.mean())
                reps = averaged
        low, high = percentile_interval(reps)
        if directions and draws > 1:
            # random directions: the margin of their mean widens the items' on each side
            margin = draws_margin(values, draws)
            low = centre - math.hypot(centre - low, margin)
            high = centre + math.hypot(high - centre, margin)
        intervals.append(Interval(low=low, high=high))
        out.append(effect_state(low, high, centre, floor))
    return out[0], out[1], intervals[0], intervals[1]


MIN_AVERAGED = 10


def _advise(
    report: TransferReport,
    interval: Interval,
    centre: float,
    draws: tuple[int, str] | None,
    averaged: bool,
) -> None:
    """The note (and ``items_needed``) of an inconclusive report: items where the width comes
    from the items, draws where the spread between random draws dominates it."""
    said = verdict_of_score(report.score).replace("_", " ")
    if draws is not None and not averaged:
        between, within = draw_spread(report.distribution["score"], draws[0])
        if between > within:
            report.notes.append(
                f"the 95% interval {interval} straddles a cut-off (the point estimate alone "
                f"would say {said}), and its width comes from the spread between the "
                f"{draws[0]} random draws (variance {between:.4f} between draws, {within:.4f} "
                "within one): more items will not narrow it; more draws "
                f"({draws[1]}, at most 16) estimate that spread better"
            )
            return
    needed = items_to_settle(report.items, centre, interval)
    report.items_needed = needed
    if needed is None:
        report.notes.append(
            f"the 95% interval {interval} straddles a cut-off and the score sits on it: "
            "more items will not settle it"
        )
        return
    counts = ", ".join(f"{k} {v}" for k, v in needed.items())
    report.notes.append(
        f"the 95% interval {interval} straddles a cut-off (the point estimate alone would say "
        f"{said}); about {counts} items would settle it (if the width comes from the items, "
        "not from the method's random parts)"
    )


# -- mapped methods ---------------------------------------------------------------------------


def _random_ratio(metrics: dict[str, float]) -> float:
    """The random control over the native effect (computed where an older result lacks it)."""
    if "random_ratio" in metrics:
        return metrics["random_ratio"]
    native = metrics.get("native_effect", 0.0)
    return metrics.get("random_effect", 0.0) / native if abs(native) > 1e-9 else 0.0


def _mapped_parts(
    effect_a: float, effect_f: float, native_f: float, ratio_f: float, random_f: float, floor: float
) -> dict[str, float]:
    """The parts of a mapped check (formulas in ``docs/transfer.md``); ``ratio_to_native``
    is its score."""
    carried = min(1.0, max(0.0, ratio_f)) if abs(native_f) >= floor else 0.0
    return {
        "effect_agreement": effect_agreement(effect_a, effect_f, floor),
        "ratio_to_native": carried,
        "random_control": min(1.0, abs(random_f)),
    }


def verdict_of_mapped(
    score: Interval, control: Interval
) -> Literal["transfers", "partial", "does_not_transfer", "inconclusive"]:
    """A mapped check's verdict: the band of the score's interval (as for every method),
    where the random control's interval lies wholly below :data:`CONTROL_CUT`; a random
    direction of equal norm reaching it (``control.low ≥ CONTROL_CUT``) makes it
    ``does_not_transfer`` (the effect is not the artifact's), one straddling it
    ``inconclusive``."""
    band = verdict_of_interval(score.low, score.high)
    # an inconclusive band straddles a cut-off, so its upper bound reaches partial at least
    if band in ("transfers", "partial", "inconclusive"):
        if control.low >= CONTROL_CUT:
            return "does_not_transfer"
        if control.high >= CONTROL_CUT:
            return "inconclusive"
    return band


def compare_mapped(
    analog: ExperimentResult, frontier: ExperimentResult, floor: float = DEFAULT_FLOOR
) -> TransferReport:
    """The report of a mapped check: the artifact's run on its analog (applied as it is)
    and on the frontier (through the lab's map). See ``docs/transfer.md``."""
    a, f = analog.metrics, frontier.metrics
    for result in (analog, frontier):
        missing = {"effect", "native_effect", "ratio_to_native"} - set(result.metrics)
        if missing:
            raise TransferError(
                f"the {result.method} result of {result.model.name} lacks "
                f"{', '.join(sorted(missing))}: it cannot be compared"
            )
    ratio_a, random_a = a["ratio_to_native"], _random_ratio(a)
    ratio_f, random_f = f["ratio_to_native"], _random_ratio(f)
    values = _mapped_parts(a["effect"], f["effect"], f["native_effect"], ratio_f, random_f, floor)
    score = values["ratio_to_native"]

    distribution: dict[str, list[float]] = {}
    ra, rf = analog.bootstrap, frontier.bootstrap
    if ra is not None and rf is not None:
        _check_pairing(analog, frontier)
        need = ("effect", "native_effect", "ratio_to_native")
        if all(k in ra.metrics for k in ("effect",)) and all(k in rf.metrics for k in need):
            native_reps = rf.metrics["native_effect"]
            if "random_ratio" in rf.metrics:
                random_reps = rf.metrics["random_ratio"]
            else:
                random_reps = [
                    r / n if abs(n) > 1e-9 else 0.0
                    for r, n in zip(rf.metrics.get("random_effect", []), native_reps, strict=True)
                ]
            for b in range(rf.resamples):
                rep = _mapped_parts(
                    ra.metrics["effect"][b],
                    rf.metrics["effect"][b],
                    native_reps[b],
                    rf.metrics["ratio_to_native"][b],
                    random_reps[b] if random_reps else 0.0,
                    floor,
                )
                distribution.setdefault("score", []).append(round(rep["ratio_to_native"], 6))
                for name, value in rep.items():
                    distribution.setdefault(name, []).append(round(value, 6))
    points = values | {"score": score}
    intervals = {k: _interval(v, points[k]) for k, v in distribution.items()}
    kind = "vector" if analog.method == "mapped_steering" else "probe"
    parts = [
        TransferPart(
            name="effect_agreement",
            value=values["effect_agreement"],
            analog=a["effect"],
            frontier=f["effect"],
            detail="the artifact's effect on the analog vs the mapped artifact's on the "
            "frontier: same sign × smaller/larger",
            interval=intervals.get("effect_agreement"),
        ),
        TransferPart(
            name="ratio_to_native",
            value=values["ratio_to_native"],
            analog=ratio_a,
            frontier=ratio_f,
            detail=f"mapped / native {kind}'s effect on the frontier {ratio_f:+.3f} (the "
            f"artifact on the analog: {ratio_a:+.3f}× the analog's native {kind}); the score",
            interval=intervals.get("ratio_to_native"),
        ),
        TransferPart(
            name="random_control",
            value=values["random_control"],
            analog=random_a,
            frontier=random_f,
            detail=f"|random / native effect| on the frontier (equal-norm random directions, "
            f"{MAPPED_DRAWS} draws): must stay below {CONTROL_CUT}",
            interval=intervals.get("random_control"),
        ),
    ]
    notes: list[str] = []
    ea, ef, nf = a["effect"], f["effect"], f["native_effect"]
    no_effect = max(abs(ea), abs(ef)) < floor
    if no_effect:
        notes.append(
            f"neither the artifact on the analog nor the mapped artifact on the frontier shows "
            f"an effect of at least {floor}: nothing transfers"
        )
    elif abs(ea) < floor:
        notes.append("the artifact shows no effect on its own analog")
    if abs(nf) < floor:
        notes.append(
            f"the frontier's native {kind} shows no effect of at least {floor}: there is "
            "nothing to carry the artifact's effect over to (the score is 0)"
        )
    if "map_r2" in f:
        notes.append(f"the residual map's held-out R² at the artifact's depth: {f['map_r2']:.3f}")

    report = TransferReport(
        method=analog.method,
        spec_hash=analog.spec_hash,
        analog=analog.model,
        frontier=frontier.model,
        score=round(score, 4),
        verdict="does_not_transfer",
        parts=parts,
        notes=notes,
        score_interval=intervals.get("score"),
        distribution=distribution,
    )
    score_iv = report.score_interval
    control_iv = intervals.get("random_control")
    if score_iv is None or control_iv is None:
        score_iv = Interval(low=score, high=score)
        control_iv = Interval(low=values["random_control"], high=values["random_control"])
        report.notes.append(
            "no interval: a result carries no bootstrap (made before intervals, or its lab "
            "keeps replicates in); the verdict reads the point estimates"
        )
    else:
        report.resamples = len(distribution["score"])
        report.items = dict(rf.items) if rf is not None else {}
    verdict: Verdict = verdict_of_mapped(score_iv, control_iv)
    if verdict == "does_not_transfer" and no_effect:
        verdict = "no_effect"
    report.verdict = verdict
    if verdict == "does_not_transfer" and control_iv.low >= CONTROL_CUT:
        report.notes.append(
            f"a random direction of the mapped {kind}'s norm does as much (|random / native| "
            f"{control_iv}, at least {CONTROL_CUT}): the effect is not the artifact's"
        )
    if verdict == "inconclusive" and report.score_interval is not None:
        straddles = verdict_of_interval(score_iv.low, score_iv.high) == "inconclusive"
        if straddles:
            _advise(report, score_iv, score, None, False)
        else:
            report.notes.append(
                f"the random control's 95% interval {control_iv} straddles {CONTROL_CUT}: its "
                f"width comes from the {MAPPED_DRAWS} random draws more than from the items, "
                "so more items will not settle it"
            )
    return report
