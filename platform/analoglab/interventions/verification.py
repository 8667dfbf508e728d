"""Layouts verified before use: the self-test every layout passes, and its cached verdict.

:func:`layout_of` is how every operation gets a model's layout: inferred (:mod:`.layout`),
then checked on a few random tokens against the invariants the docs promise, once per
(``model_type``, config hash, overrides); later calls reuse the verdict. The invariants:

========================  ===================================================================
check                     fails when
========================  ===================================================================
``hidden_states``         ``hook_resid_pre`` of block 0 is not ``hidden_states[0]``, or
                          ``hook_resid_post`` of block ``i`` not ``hidden_states[i + 1]`` (the
                          last one: before or after the final norm): the layout is refused
``residual_sum``          ``resid_post ≠ resid_pre + attn_out + mlp_out`` at a block: those
                          two sites are refused there
``hook_z_projection``     the output projection of ``attn.hook_z`` is not the projection's
                          output: ``attn.hook_z`` is refused there
``identity_edit``         an edit that returns its input unchanged changes the logits
``positions``             a capture at positions is not the full capture at those positions
``captured_values``       a captured value changes after capture (the model works in place)
========================  ===================================================================

Each failure is reported with its size (the largest difference, relative to the largest
value compared). :func:`verify_layout` gives the whole :class:`LayoutReport`;
:func:`supported_sites` what a lab site publishes about its frontier.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from analoglab.interventions.architectures import overrides_for
from analoglab.interventions.errors import InterventionError
from analoglab.interventions.layout import (
    BlockPlan,
    LayoutPlan,
    ModelLayout,
    _eval,
    infer_plan,
    probe_inputs,
    resolve,
    text_config,
)
from analoglab.interventions.names import ALL_SITES, MOE_SITES, SITES, HookPoint, Site

POSITIONS = (-1, 0, 2)
"""Positions the ``positions`` check captures at (the probe runs 6 tokens)."""


@dataclass(frozen=True)
class Check:
    """One invariant checked at one place: how far off it was."""

    invariant: str
    where: str
    size: float
    passed: bool

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.invariant} at {self.where}: {verdict} (off by {self.size:.3g})"


@dataclass(frozen=True)
class SiteSupport:
    """Where a site is offered: the blocks, and the reason for the others."""

    blocks: tuple[int, ...]
    n_layers: int
    reason: str = ""

    @property
    def everywhere(self) -> bool:
        return len(self.blocks) == self.n_layers

    def __str__(self) -> str:
        if self.everywhere:
            return "every block"
        if not self.blocks:
            return f"refused: {self.reason}"
        return f"blocks {', '.join(map(str, self.blocks))}; elsewhere: {self.reason}"


@dataclass(frozen=True)
class LayoutReport:
    """The verdict on one model's layout: every check, and what each site is."""

    model_type: str
    config_hash: str
    n_layers: int
    checks: tuple[Check, ...]
    sites: dict[Site, SiteSupport]
    refused: str = ""
    """Why the whole layout is refused (empty where it is usable)."""
    meanings: tuple[str, ...] = field(default=())
    """How each block adds to its stream, in words."""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def verified(self) -> bool:
        """Usable, and no invariant failed (sites refused for want of a module are fine)."""
        return not self.refused and not self.failures

    def supports(self, site: Site) -> bool:
        """Whether ``site`` is offered at every block."""
        return not self.refused and self.sites[site].everywhere

    def raise_if_refused(self) -> None:
        """An :class:`InterventionError` naming the failing invariant and its size, if any."""
        if self.refused:
            raise InterventionError(self.refused)
        if self.failures:
            first = self.failures[0]
            more = len(self.failures) - 1
            raise InterventionError(
                f"the {self.model_type} layout fails its self-test: {first}"
                + (f" (and {more} more)" if more else "")
            )

    def summary(self) -> str:
        """One line: verified or refused, and every site not offered at every block."""
        if self.refused:
            return self.refused
        head = f"{self.model_type} layout ({self.n_layers} blocks) " + (
            "verified" if self.verified else f"verified with {len(self.failures)} failed checks"
        )
        partial = [
            f"{s}: {v}"
            for s, v in self.sites.items()
            if not v.everywhere and (v.blocks or s not in MOE_SITES)  # dense: no router, fine
        ]
        return head + ("; " + "; ".join(partial) if partial else "; every site at every block")

    def to_dict(self) -> dict[str, Any]:
        """As JSON: what a lab site can publish about its frontier (no weights, no values)."""
        return {
            "model_type": self.model_type,
            "config_hash": self.config_hash,
            "n_layers": self.n_layers,
            "verified": self.verified,
            "refused": self.refused,
            "sites": {
                s: {"blocks": list(v.blocks), "reason": v.reason} for s, v in self.sites.items()
            },
            "failures": [str(c) for c in self.failures],
        }


@dataclass(frozen=True)
class _Verdict:
    plan: LayoutPlan | None
    report: LayoutReport


_VERDICTS: dict[tuple[str, str], _Verdict] = {}
_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, tuple[int, ModelLayout]] = (
    weakref.WeakKeyDictionary()
)
_GENERATION = [0]


def forget_layouts() -> None:
    """Drop every cached verdict (the overrides changed)."""
    _VERDICTS.clear()
    _GENERATION[0] += 1


def layout_of(model: nn.Module) -> ModelLayout:
    """``model``'s layout, inferred and verified (once per model type and config).

    Sites that failed a check are refused (using one names the check); a layout whose
    residual stream disagrees with transformers' ``hidden_states`` is refused as a whole.
    """
    held = _LAYOUTS.get(model)
    if held is not None and held[0] == _GENERATION[0]:
        return held[1]
    verdict = _verdict(model)
    if verdict.plan is None:
        raise InterventionError(verdict.report.refused)
    layout = resolve(verdict.plan, model)
    _LAYOUTS[model] = (_GENERATION[0], layout)
    return layout


def verify_layout(model: nn.Module) -> LayoutReport:
    """The self-test's report on ``model``'s layout (cached per model type and config).

    Never raises for a failed invariant: read :attr:`LayoutReport.verified`, or call
    :meth:`LayoutReport.raise_if_refused`. A lab site calls this once when it loads its
    frontier.
    """
    return _verdict(model).report


def supported_sites(model: nn.Module) -> dict[Site, SiteSupport]:
    """Each site, and the blocks of ``model`` that offer it (with the reason for the rest)."""
    return verify_layout(model).sites


def config_hash(model: nn.Module) -> str:
    """A hash of ``model``'s config and the overrides that apply to it."""
    config: Any = model.config
    data = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    for key in ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path"):
        data.pop(key, None)
    param = next(iter(model.parameters()), None)
    extra = [repr(overrides_for(model)), str(None if param is None else param.dtype)]
    text = json.dumps([data, extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _verdict(model: nn.Module) -> _Verdict:
    overrides = overrides_for(model)
    key = (overrides.model_type, config_hash(model))
    found = _VERDICTS.get(key)
    if found is None:
        found = _VERDICTS[key] = _verify(model, key[1])
    return found


# Failures of the moment, not of the layout: raised to the caller, never cached as a verdict.
_TRANSIENT: tuple[type[BaseException], ...] = (
    MemoryError,
    getattr(torch, "OutOfMemoryError", MemoryError),
)


def _refused(kind: str, digest: str, n_layers: int, reason: str) -> _Verdict:
    sites = {s: SiteSupport((), n_layers, reason) for s in ALL_SITES}
    return _Verdict(None, LayoutReport(kind, digest, n_layers, (), sites, reason))


def _verify(model: nn.Module, digest: str) -> _Verdict:
    overrides = overrides_for(model)
    kind = overrides.model_type
    try:
        plan = infer_plan(model, overrides)
        layout = resolve(plan, model)
    except InterventionError as exc:
        return _refused(kind, digest, 0, str(exc))
    except _TRANSIENT:
        raise
    except Exception as exc:  # inference met a structure it does not know: refuse, say why
        reason = f"the {kind} layout cannot be inferred: {type(exc).__name__}: {exc}"
        return _refused(kind, digest, 0, reason.splitlines()[0])
    test = _SelfTest(model, layout)
    try:
        refusal = test.run()
    except InterventionError as exc:
        refusal = f"the {kind} layout cannot be verified: {exc}"
    except _TRANSIENT:
        raise  # out of memory now is not a wrong layout: never cached as a refusal
    except Exception as exc:  # a model that breaks under hooks: refuse it, say why
        refusal = f"the {kind} layout cannot be verified: {type(exc).__name__}: {exc}"
    checks = tuple(test.checks)
    if refusal:
        report = _refused(kind, digest, layout.n_layers, refusal).report
        return _Verdict(
            None, LayoutReport(kind, digest, layout.n_layers, checks, report.sites, refusal)
        )
    plan = plan.refuse(test.refusals)
    sites = _support(plan)
    meanings = tuple(b.meaning for b in plan.block_plans)
    return _Verdict(plan, LayoutReport(kind, digest, layout.n_layers, checks, sites, "", meanings))


def _support(plan: LayoutPlan) -> dict[Site, SiteSupport]:
    n = len(plan.block_plans)
    out: dict[Site, SiteSupport] = {}
    for site in ALL_SITES:
        blocks = tuple(i for i, b in enumerate(plan.block_plans) if site in b.sites)
        reasons = [b.refused.get(site, "") for b in plan.block_plans if site not in b.sites]
        out[site] = SiteSupport(blocks, n, next((r for r in reasons if r), ""))
    return out


def _tolerance(model: nn.Module) -> float:
    param = next(iter(model.parameters()), None)
    if param is not None and param.dtype in (torch.float16, torch.bfloat16):
        return 3e-2
    return 1e-4


def _size(a: Tensor, b: Tensor) -> float:
    a, b = a.float(), b.float()
    if a.shape != b.shape:
        return float("inf")
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / max(scale, 1e-6) if b.numel() else 0.0


class _SelfTest:
    """The checks of one layout on one model; sites to refuse collect in ``refusals``."""

    def __init__(self, model: nn.Module, layout: ModelLayout) -> None:
        self.model = model
        self.layout = layout
        self.tol = _tolerance(model)
        self.checks: list[Check] = []
        self.refusals: dict[tuple[int, Site], str] = {}
        self.inputs = probe_inputs(model, text_config(model))

    def check(self, invariant: str, where: str, size: float) -> bool:
        passed = size <= self.tol
        self.checks.append(Check(invariant, where, size, passed))
        return passed

    def refuse(self, block: int, site: Site, check: Check) -> None:
        self.refusals.setdefault((block, site), f"failed its self-test: {check}")

    def points(self, sites: tuple[Site, ...] = SITES) -> list[HookPoint]:
        plans = self.layout.plan.block_plans
        return [
            HookPoint(b, s)
            for b in range(self.layout.n_layers)
            for s in sites
            if s in plans[b].sites and (b, s) not in self.refusals
        ]

    def forward(self, **extra: Any) -> Any:
        return self.model(**self.inputs, **extra)

    def run(self) -> str:
        """Run every check; the reason to refuse the whole layout, or ""."""
        from analoglab.interventions.hooks import hooks_installed

        layout = self.layout
        cache: dict[str, Tensor] = {}
        kept: dict[str, Tensor] = {}

        def store(name: str) -> Callable[[Tensor, Any], None]:
            def edit(x: Tensor, forward: Any) -> None:
                cache[name] = x.detach()
                kept[name] = x.detach().clone()

            return edit

        projections: dict[int, list[Tensor]] = {}
        mixers: dict[int, list[Tensor]] = {}
        points = self.points(ALL_SITES)
        with _eval(self.model), torch.no_grad(), self._recorders(projections, mixers):
            with hooks_installed(
                self.model, {p: store(p.name) for p in points}, track_mask=False, layout=layout
            ):
                out = self.forward(output_hidden_states=True)
            refusal = self._hidden_states(out, cache)
            if refusal:
                return refusal
            self._captured_values(points, cache, kept)
            self._residual_sums(cache, mixers)
            self._hook_z(cache, projections)
            self._identity_edits(_logits(out))
            self._positions(cache)
        return ""

    @contextmanager
    def _recorders(
        self, projections: dict[int, list[Tensor]], mixers: dict[int, list[Tensor]]
    ) -> Iterator[None]:
        handles = []
        layout = self.layout
        try:
            for b, plan in enumerate(layout.plan.block_plans):
                if "attn.hook_z" in plan.sites:
                    module = layout.module(b, "attn.hook_z")
                    handles.append(
                        module.register_forward_hook(
                            lambda m, a, o, b=b: projections.setdefault(b, []).append(
                                o.detach().clone()
                            )
                        )
                    )
                if plan.mixer is not None:
                    mixer = layout.blocks[b].get_submodule(plan.mixer)
                    handles.append(
                        mixer.register_forward_hook(
                            lambda m, a, o, b=b: mixers.setdefault(b, []).append(
                                (o[0] if isinstance(o, tuple) else o).detach().clone()
                            )
                        )
                    )
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hidden_states(self, out: Any, cache: dict[str, Tensor]) -> str:
        layout = self.layout
        hidden = getattr(out, "hidden_states", None)
        n = layout.n_layers
        if hidden is None or len(hidden) != n + 1:
            got = "none" if hidden is None else str(len(hidden))
            self.checks.append(Check("hidden_states", "the model's output", float("inf"), False))
            return (
                f"the {layout.model_type} layout is refused: transformers returned {got} hidden "
                f"states for {n} blocks, so the residual stream cannot be checked against them"
            )
        pairs = [("hidden_states[0]", "blocks.0.hook_resid_pre", hidden[0])]
        pairs += [
            (f"hidden_states[{i + 1}]", f"blocks.{i}.hook_resid_post", hidden[i + 1])
            for i in range(n - 1)
        ]
        for name in [p[1] for p in pairs] + [f"blocks.{n - 1}.hook_resid_post"]:
            if name not in cache:
                block = int(name.split(".")[1])
                reason = layout.plan.block_plans[block].refused.get(
                    "hook_resid_post", "no residual stream found"
                )
                return f"the {layout.model_type} layout is refused: {reason}"
        for label, name, expected in pairs:
            size = _size(cache[name], expected)
            if not self.check("hidden_states", f"{name} vs {label}", size):
                return (
                    f"the {layout.model_type} layout is refused: {name} differs from "
                    f"transformers' {label} by {size:.3g} (relative); the blocks found are not "
                    "the model's residual stream"
                )
        last = cache[f"blocks.{n - 1}.hook_resid_post"]
        size = min(_size(last, hidden[-1]), _size(layout.final_norm(last), hidden[-1]))
        if not self.check(
            "hidden_states", f"blocks.{n - 1}.hook_resid_post vs hidden_states[-1]", size
        ):
            return (
                f"the {layout.model_type} layout is refused: the last block's output, before or "
                f"after the final norm, differs from transformers' hidden_states[-1] by {size:.3g}"
            )
        return ""

    def _captured_values(
        self, points: list[HookPoint], cache: dict[str, Tensor], kept: dict[str, Tensor]
    ) -> None:
        for point in points:
            now, then = cache[point.name], kept[point.name]
            size = _size(now, then)
            if size != size:  # NaN: the same only with NaN in the same places, the rest equal
                same = torch.equal(now.isnan(), then.isnan()) and torch.equal(
                    now.nan_to_num(0.0), then.nan_to_num(0.0)
                )
                size = 0.0 if same else float("inf")
            if not self.check("captured_values", point.name, size):
                self.refuse(point.block, point.site, self.checks[-1])

    def _residual_sums(self, cache: dict[str, Tensor], mixers: dict[int, list[Tensor]]) -> None:
        """resid_post = resid_pre + attn_out + mlp_out (+ a non-attention mixer's output),
        at every block where each of the two is either offered or absent from the block."""
        for b, plan in enumerate(self.layout.plan.block_plans):
            parts = [s for s in ("hook_attn_out", "hook_mlp_out") if s in plan.sites]

            def absent(site: Site, plan: BlockPlan = plan, b: int = b) -> bool:
                if site == "hook_attn_out" and plan.mixer is not None:
                    return True
                return plan.refused.get(site, "").startswith(f"block {b} has no ")

            missing = [s for s in ("hook_attn_out", "hook_mlp_out") if s not in plan.sites]
            if not parts or not all(absent(s) for s in missing):  # type: ignore[arg-type]
                continue
            total = cache[f"blocks.{b}.hook_resid_pre"].clone()
            for site in parts:
                total = total + cache[f"blocks.{b}.{site}"]
            if plan.mixer is not None:
                if not mixers.get(b):
                    continue
                total = total + plan.mixer_scale * mixers[b][0]
            size = _size(total, cache[f"blocks.{b}.hook_resid_post"])
            if not self.check("residual_sum", f"blocks.{b}", size):
                for site in parts:
                    self.refuse(b, site, self.checks[-1])  # type: ignore[arg-type]

    def _hook_z(self, cache: dict[str, Tensor], projections: dict[int, list[Tensor]]) -> None:
        for b, plan in enumerate(self.layout.plan.block_plans):
            name = f"blocks.{b}.attn.hook_z"
            if "attn.hook_z" not in plan.sites or name not in cache or not projections.get(b):
                continue
            module = self.layout.module(b, "attn.hook_z")
            size = _size(module(cache[name].flatten(-2)), projections[b][-1])
            if not self.check("hook_z_projection", name, size):
                self.refuse(b, "attn.hook_z", self.checks[-1])

    def _identity_edits(self, baseline: Tensor) -> None:
        from analoglab.interventions.hooks import hooks_installed

        def same(x: Tensor, forward: Any) -> Tensor:
            return x.clone()

        def run(sites: tuple[Site, ...]) -> float:
            points = self.points(sites)
            if not points:
                return 0.0
            with hooks_installed(
                self.model, {p: same for p in points}, track_mask=False, layout=self.layout
            ):
                return _size(_logits(self.forward()), baseline)

        if self.check("identity_edit", "every site", run(SITES)):
            return
        for site in SITES:
            if not self.check("identity_edit", site, run((site,))):
                for point in self.points((site,)):
                    self.refuse(point.block, point.site, self.checks[-1])

    def _positions(self, full: dict[str, Tensor]) -> None:
        from analoglab.interventions.capture import capture_with

        points = self.points(ALL_SITES)
        seq = self.inputs["input_ids"].shape[1]
        columns = [p % seq for p in POSITIONS]
        with capture_with(self.model, points, self.layout, positions=POSITIONS) as some:
            self.forward()
        for point in points:
            size = _size(some[point.name].float(), full[point.name][:, columns].float())
            if not self.check("positions", point.name, size):
                self.refuse(point.block, point.site, self.checks[-1])


def _logits(out: Any) -> Tensor:
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
        return out[0]
    raise InterventionError(f"the model's output {type(out).__name__} has no logits to compare")


__all__ = [
    "MOE_SITES",
    "Check",
    "LayoutReport",
    "SiteSupport",
    "config_hash",
    "forget_layouts",
    "layout_of",
    "supported_sites",
    "verify_layout",
]
