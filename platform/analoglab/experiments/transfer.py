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

Verdicts: ``transfers`` (score ≥ 0.6), ``partial`` (≥ 0.3), ``does_not_transfer`` and
``no_effect`` (neither model shows the effect: a control, or a behaviour neither has).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from analoglab.errors import AnalogLabError
from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity

GRID = np.linspace(0.0, 1.0, 11)
DEFAULT_FLOOR = 0.1
TRANSFERS, PARTIAL = 0.6, 0.3

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


class TransferPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: float = Field(ge=0.0, le=1.0)
    analog: float | None = None
    frontier: float | None = None
    detail: str = ""


class TransferReport(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: str
    spec_hash: str
    analog: ModelIdentity
    frontier: ModelIdentity
    score: float = Field(ge=0.0, le=1.0)
    verdict: Literal["transfers", "partial", "does_not_transfer", "no_effect"]
    parts: list[TransferPart]
    notes: list[str] = Field(default_factory=list)


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
    parts: list[TransferPart] = []
    notes: list[str] = []
    profile_name = MAIN_PROFILE[analog.method]
    shape: list[float] = []
    if profile_name and profile_name in analog.profiles and profile_name in frontier.profiles:
        pa, pf = analog.profiles[profile_name], frontier.profiles[profile_name]
        r = profile_correlation(pa, pf)
        dist = peak_distance(pa, pf)
        parts.append(
            TransferPart(
                name="profile_correlation",
                value=max(0.0, r),
                detail=f"Pearson r of the {profile_name} profiles over relative depth: {r:.3f}",
            )
        )
        parts.append(
            TransferPart(
                name="peak_agreement",
                value=1.0 - dist,
                analog=pa.peak_depth(),
                frontier=pf.peak_depth(),
                detail=f"peak depths {pa.peak_depth():.2f} vs {pf.peak_depth():.2f}",
            )
        )
        shape = [max(0.0, r), 1.0 - dist]
    has_effect = "effect" in analog.metrics and "effect" in frontier.metrics
    verdict: Literal["transfers", "partial", "does_not_transfer", "no_effect"]
    if has_effect:
        ea, ef = analog.metrics["effect"], frontier.metrics["effect"]
        se = effect_agreement(ea, ef, floor)
        parts.insert(
            0,
            TransferPart(
                name="effect_agreement",
                value=se,
                analog=ea,
                frontier=ef,
                detail="same sign × smaller/larger effect",
            ),
        )
        if "accuracy" in analog.metrics and "accuracy" in frontier.metrics:
            gap = abs(analog.metrics["accuracy"] - frontier.metrics["accuracy"])
            parts.append(
                TransferPart(
                    name="accuracy_gap",
                    value=max(0.0, 1.0 - gap),
                    analog=analog.metrics["accuracy"],
                    frontier=frontier.metrics["accuracy"],
                    detail=f"1 − |accuracy gap| = {1 - gap:.3f}",
                )
            )
        score = se * (1.0 + sum(shape)) / 3.0 if shape else se
        if max(abs(ea), abs(ef)) < floor:
            verdict = "no_effect"
            notes.append(
                f"neither model shows an effect of at least {floor}: nothing transfers "
                "(a control, or a behaviour neither model has)"
            )
        else:
            if abs(ea) < floor <= abs(ef):
                notes.append("the frontier shows the effect and the analog does not")
            elif abs(ef) < floor <= abs(ea):
                notes.append("the analog shows the effect and the frontier does not")
            elif ea * ef < 0:
                notes.append("the effect has opposite signs on the two models")
            verdict = _verdict(score)
    else:
        score = sum(shape) / len(shape) if shape else 0.0
        verdict = _verdict(score)
    return TransferReport(
        method=analog.method,
        spec_hash=analog.spec_hash,
        analog=analog.model,
        frontier=frontier.model,
        score=round(min(1.0, max(0.0, score)), 4),
        verdict=verdict,
        parts=parts,
        notes=notes,
    )


def _verdict(score: float) -> Literal["transfers", "partial", "does_not_transfer"]:
    if score >= TRANSFERS:
        return "transfers"
    return "partial" if score >= PARTIAL else "does_not_transfer"
