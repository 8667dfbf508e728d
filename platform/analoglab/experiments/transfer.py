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
  level count as r = 1; a flat one against a shaped one as r = 0).
- **peak agreement** ``s_p = 1 − |peak depth(a) − peak depth(f)|`` (1 for two flat profiles).
- **score** ``= s_e · (1 + s_r + s_p) / 3`` where the method has a profile, else ``s_e``;
  methods without a headline effect (activation statistics) score ``(s_r + s_p) / 2``.

**Intervals.** Where both results carry their bootstrap (``result.bootstrap``: replicates
``b = 1..B`` drawn over the same items on both models, a paired bootstrap; see
:mod:`.uncertainty`), every part and the score are computed again on each replicate pair,
and each gets its 95% percentile interval. The verdict then comes from the score's interval
(:func:`verdict_of_interval`): ``transfers`` when its lower bound is at least 0.6,
``partial`` when it lies within [0.3, 0.6), ``does_not_transfer`` when its upper bound is
below 0.3, and ``inconclusive`` when it straddles a cut-off; ``no_effect`` where it does not
transfer and neither model's point effect reaches the floor. An inconclusive report says how
many items would settle it (:func:`items_to_settle`). Results without a bootstrap (made
before intervals) get the point verdict, as before: ``transfers`` (score ≥ 0.6), ``partial``
(≥ 0.3), ``does_not_transfer``, ``no_effect``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from analoglab.errors import AnalogLabError
from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity
from analoglab.experiments.uncertainty import LEVEL, items_to_narrow, percentile_interval

GRID = np.linspace(0.0, 1.0, 11)
DEFAULT_FLOOR = 0.1
TRANSFERS, PARTIAL = 0.6, 0.3
CUTOFFS = (PARTIAL, TRANSFERS)

Verdict = Literal["transfers", "partial", "does_not_transfer", "no_effect", "inconclusive"]

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

    def summary(self) -> str:
        """One line: verdict, score and its interval (what a notebook prints)."""
        line = f"{self.verdict.replace('_', ' ')}: score {self.score:.3f}"
        if self.score_interval is not None:
            line += f", 95% interval {self.score_interval}"
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
    """No shape to compare: the spread is within 0.1% of the largest magnitude."""
    return float(np.ptp(values)) <= 1e-9 + 1e-3 * float(np.max(np.abs(values)))


def profile_correlation(a: LayerProfile, f: LayerProfile) -> float:
    """Pearson's r on the common grid. Two flat profiles agree (1) when their levels are
    within 5% of each other and not otherwise (0); one flat profile against a shaped one: 0."""
    x, y = on_grid(a), on_grid(f)
    if is_flat(x) and is_flat(y):
        level_x, level_y = float(np.mean(x)), float(np.mean(y))
        return (
            1.0 if abs(level_x - level_y) <= 0.05 * max(abs(level_x), abs(level_y), 1e-9) else 0.0
        )
    if is_flat(x) or is_flat(y):
        return 0.0
    r = float(np.corrcoef(x, y)[0, 1])
    return 0.0 if math.isnan(r) else r


def peak_distance(a: LayerProfile, f: LayerProfile) -> float:
    """Distance between the peak depths; 0 for two flat profiles (no peak to disagree on)."""
    if is_flat(on_grid(a)) and is_flat(on_grid(f)):
        return 0.0
    return abs(a.peak_depth() - f.peak_depth())


def effect_agreement(a: float, f: float, floor: float) -> float:
    """0 unless both models show the effect (at least ``floor``) with the same sign."""
    if min(abs(a), abs(f)) < floor or a * f <= 0:
        return 0.0
    return min(abs(a), abs(f)) / max(abs(a), abs(f))


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


def _scored(inputs: _Inputs, floor: float) -> tuple[dict[str, float], float]:
    """The parts' values and the score (formulas in the module docstring)."""
    parts: dict[str, float] = {}
    shape: list[float] = []
    if inputs.profile_a is not None and inputs.profile_f is not None:
        r = profile_correlation(inputs.profile_a, inputs.profile_f)
        dist = peak_distance(inputs.profile_a, inputs.profile_f)
        parts["profile_correlation"] = max(0.0, r)
        parts["peak_agreement"] = 1.0 - dist
        shape = [max(0.0, r), 1.0 - dist]
    if inputs.effect_a is not None and inputs.effect_f is not None:
        se = effect_agreement(inputs.effect_a, inputs.effect_f, floor)
        parts["effect_agreement"] = se
        if inputs.accuracy_a is not None and inputs.accuracy_f is not None:
            parts["accuracy_gap"] = max(0.0, 1.0 - abs(inputs.accuracy_a - inputs.accuracy_f))
        score = se * (1.0 + sum(shape)) / 3.0 if shape else se
    else:
        score = sum(shape) / len(shape) if shape else 0.0
    return parts, min(1.0, max(0.0, score))


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


def _replicate_inputs(
    a: ExperimentResult, f: ExperimentResult, point: _Inputs, profile: str | None
) -> list[_Inputs] | None:
    """The inputs of each replicate pair, or None where either result has no bootstrap (or
    lacks replicates of what the point uses, or the two were drawn differently)."""
    ra, rf = a.bootstrap, f.bootstrap
    if ra is None or rf is None or (ra.resamples, ra.seed) != (rf.resamples, rf.seed):
        return None

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


def compare(
    analog: ExperimentResult, frontier: ExperimentResult, floor: float = DEFAULT_FLOOR
) -> TransferReport:
    """The transfer report of one spec's results on an analog and on its frontier."""
    if analog.spec_hash != frontier.spec_hash:
        raise TransferError(
            "the two results come from different specs "
            f"({analog.spec_hash[:12]} vs {frontier.spec_hash[:12]}); run the same spec on both"
        )
    if analog.method not in MAIN_PROFILE:
        raise TransferError(f"method {analog.method!r} has no transfer comparison")
    profile_name = MAIN_PROFILE[analog.method]
    point = _point_inputs(analog, frontier, profile_name)
    values, score = _scored(point, floor)
    replicates = _replicate_inputs(analog, frontier, point, profile_name)
    distribution: dict[str, list[float]] = {}
    if replicates is not None:
        for inputs in replicates:
            rep_values, rep_score = _scored(inputs, floor)
            distribution.setdefault("score", []).append(round(rep_score, 6))
            for name, value in rep_values.items():
                distribution.setdefault(name, []).append(round(value, 6))
    intervals = {
        k: Interval(**dict(zip(("low", "high"), percentile_interval(v), strict=True)))
        for k, v in distribution.items()
    }

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
    if "effect_agreement" in values:
        detail = "same sign × smaller/larger effect"
        parts.append(part("effect_agreement", detail, point.effect_a, point.effect_f))
    if "profile_correlation" in values and point.profile_a and point.profile_f:
        r = profile_correlation(point.profile_a, point.profile_f)
        pa, pf = point.profile_a.peak_depth(), point.profile_f.peak_depth()
        detail = f"Pearson r of the {profile_name} profiles over relative depth: {r:.3f}"
        parts.append(part("profile_correlation", detail))
        parts.append(part("peak_agreement", f"peak depths {pa:.2f} vs {pf:.2f}", pa, pf))
    if "accuracy_gap" in values:
        detail = f"1 − |accuracy gap| = {values['accuracy_gap']:.3f}"
        parts.append(part("accuracy_gap", detail, point.accuracy_a, point.accuracy_f))

    notes: list[str] = []
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

    score_interval = intervals.get("score")
    items: dict[str, int] = {}
    needed: dict[str, int] | None = None
    verdict: Verdict
    if score_interval is None:
        verdict = "no_effect" if no_effect else verdict_of_score(score)
        if analog.bootstrap is None or frontier.bootstrap is None:
            notes.append(
                "no interval: a result carries no bootstrap (made before intervals, or its "
                "lab keeps replicates in)"
            )
    else:
        verdict = verdict_of_interval(score_interval.low, score_interval.high)
        if verdict == "does_not_transfer" and no_effect:
            verdict = "no_effect"
        items = dict(analog.bootstrap.items) if analog.bootstrap else {}
        if verdict == "inconclusive":
            needed = items_to_settle(items, score, score_interval)
            said = verdict_of_score(score).replace("_", " ")
            if needed is None:
                notes.append(
                    f"the 95% interval {score_interval} straddles a cut-off and the score "
                    "sits on it: more items will not settle it"
                )
            else:
                counts = ", ".join(f"{k} {v}" for k, v in needed.items())
                notes.append(
                    f"the 95% interval {score_interval} straddles a cut-off (the point "
                    f"estimate alone would say {said}); about {counts} items would settle it "
                    "(if the width comes from the items, not from the method's random parts)"
                )
    return TransferReport(
        method=analog.method,
        spec_hash=analog.spec_hash,
        analog=analog.model,
        frontier=frontier.model,
        score=round(score, 4),
        verdict=verdict,
        parts=parts,
        notes=notes,
        score_interval=score_interval,
        resamples=None if score_interval is None else len(distribution["score"]),
        items=items,
        items_needed=needed,
        distribution=distribution,
    )
