"""Automatic vetting of a submission against the target frontier's policy.

:func:`vet` is pure: a spec, the frontier, its effective policy, the queue's limits and the
submitter's recent usage in, a list of :class:`Finding` out: every reason the submission
fails, never just the first. :func:`usage` is the one query it needs. The rules:

========================  ==================================================================
code                      fails when
========================  ==================================================================
``method_not_allowed``    the method is not in the policy's ``allowed_methods``
``too_many_prompts``      prompts + pairs + items over all the spec's data > ``max_prompts``
``prompt_too_long``       a prompt's estimated tokens > ``max_tokens_per_prompt``; the
                          estimate is ``ceil(characters / 3)`` (a BPE token is ~3-4 characters
                          of English, so this errs on the long side), plus generated tokens
``token_budget``          the spec's own ``max_tokens_per_prompt`` > the policy's
``scale_out_of_bounds``   a steering scale (or a mapped steering ``scale``) with ``|scale|`` >
                          the queue's ``max_abs_scale``
``bootstrap_over_cap``    ``bootstrap.resamples`` > the policy's ``max_bootstrap`` (what the
                          lab's release checks allow)
``samples_not_allowed``   samples asked for where the policy's ``allow_samples`` is false
``too_many_samples``      more samples than the queue's ``max_samples``
``cost_over_cap``         estimated cost > the queue's ``max_cost``; cost = prompts × layers ×
                          settings (layers: those the spec names, else every block of the
                          frontier; settings: :func:`settings_count`, e.g. a steering sweep's
                          length plus its further random draws)
``not_self_contained``    the spec still refers to a task set (the service inlines task sets
                          at submission; this catches one it could not)
``daily_quota``           the submitter already sent ``daily_quota_per_user`` jobs to this
                          frontier in the last 24 hours
``rate_limited``          the submitter already sent ``rate_per_minute`` jobs in the last minute
``site_not_supported``    the frontier's catalog entry publishes its verified layout, and a
                          hook site the method needs (:func:`needed_sites`) is refused there
                          at a block the spec selects; a catalog without a layout says nothing
========================  ==================================================================

The blocks a spec selects are resolved as the lab site will resolve them (relative depth ``d``
is block ``floor(d · (L − 1) + 0.5)``) on the ``L`` blocks the layout was verified on. Where
that ``L`` is not the catalog's layer count (a stale entry), a site is refused only if every
block refuses it: vetting never refuses a job the frontier could run.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analoglab.depth import nearest_block
from analoglab.experiments.spec import (
    MAPPED_RANDOM_DRAWS,
    AblationSpec,
    ActivationStatsSpec,
    AnySpec,
    Choices,
    EvaluationSpec,
    FidelitySpec,
    Labelled,
    MappedProbeSpec,
    MappedSteeringSpec,
    Pairs,
    PatchingSpec,
    PatchPairs,
    ProbeSpec,
    Prompts,
    SteeringSpec,
    TaskSetRef,
    is_self_contained,
)
from analoglab.models.catalog import FrontierModel, FrontierPolicy
from analoglab.queue.models import Job

CHARS_PER_TOKEN = 3
_DATA_FIELDS = ("data", "contrast", "evaluate", "neutral", "behaviour")


@dataclass(frozen=True)
class VettingLimits:
    """Limits the queue applies on top of every frontier's policy (set by the operator)."""

    max_abs_scale: float = 16.0
    max_samples: int = 8
    max_cost: int = 250_000
    rate_per_minute: int = 10


@dataclass(frozen=True)
class Usage:
    """What the submitter has recently sent: within 24 hours to this frontier, and in a minute."""

    today_on_frontier: int = 0
    last_minute: int = 0


@dataclass(frozen=True)
class Finding:
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_tokens(text: str) -> int:
    """Tokens in ``text``, estimated as ``ceil(characters / 3)`` (no tokenizer on the hub)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _texts(data: Any) -> tuple[int, list[str]]:
    """How many prompts a data value counts for, and the texts a model will read."""
    if isinstance(data, Prompts):
        return len(data.prompts), list(data.prompts)
    if isinstance(data, Choices):
        return len(data.items), [i.prompt + max(i.target, i.foil, key=len) for i in data.items]
    if isinstance(data, Pairs):
        return len(data.pairs), [t for p in data.pairs for t in (p.positive, p.negative)]
    if isinstance(data, Labelled):
        return len(data.items), [i.text for i in data.items]
    if isinstance(data, PatchPairs):
        texts = [
            t + max(i.target, i.foil, key=len) for i in data.items for t in (i.clean, i.corrupt)
        ]
        return len(data.items), texts
    if isinstance(data, TaskSetRef):
        return data.n, []
    return 0, []


def data_sizes(spec: AnySpec) -> dict[str, int]:
    """Prompts, pairs or items in each data field the spec has (``{"data": 8}``)."""
    return {
        f: _texts(getattr(spec, f))[0] for f in _DATA_FIELDS if getattr(spec, f, None) is not None
    }


def prompt_count(spec: AnySpec) -> int:
    return sum(_texts(getattr(spec, f, None))[0] for f in _DATA_FIELDS)


def layer_count(spec: AnySpec, frontier: FrontierModel) -> int:
    layers = getattr(spec, "layers", None)
    if layers is None:
        return 1
    chosen = layers.depths if layers.depths is not None else layers.indices
    return len(chosen) if chosen is not None else frontier.architecture.layers


#: Forward passes of each prompt in a mapped method besides its random draws: mapped steering
#: runs unsteered, mapped and native; a mapped probe captures once.
_MAPPED_PASSES = {"mapped_steering": 3, "mapped_probe": 1}


def settings_count(spec: AnySpec) -> int:
    """Settings each prompt goes through: the steering sweep's scales plus one run at the top
    scale for each further random draw of a ``random_vector`` control; for mapped steering,
    unsteered, mapped, native and each random draw; else 1."""
    if isinstance(spec, SteeringSpec):
        draws = spec.random_draws if spec.control == "random_vector" else 1
        return len(spec.scales) + draws - 1
    if isinstance(spec, MappedSteeringSpec):
        return _MAPPED_PASSES[spec.method] + MAPPED_RANDOM_DRAWS
    return 1


def estimated_cost(spec: AnySpec, frontier: FrontierModel) -> int:
    """prompts × layers × settings: a unit of work is one prompt through one setting."""
    return prompt_count(spec) * layer_count(spec, frontier) * settings_count(spec)


def needed_blocks(spec: AnySpec, n_layers: int) -> list[int]:
    """The blocks ``spec`` will hook on a model of ``n_layers`` blocks (out-of-range indices,
    which the run itself refuses, are left out)."""
    if isinstance(spec, MappedSteeringSpec | MappedProbeSpec):
        return [nearest_block(spec.artifact.depth, n_layers)]
    layers = getattr(spec, "layers", None)
    if layers is None:
        return []
    if layers.depths is not None:
        chosen = [nearest_block(d, n_layers) for d in layers.depths]
    elif layers.indices is not None:
        chosen = [i + n_layers if i < 0 else i for i in layers.indices]
    else:
        chosen = list(range(n_layers))
    return sorted({b for b in chosen if 0 <= b < n_layers})


def needed_sites(spec: AnySpec) -> list[str]:
    """The hook sites the method of ``spec`` reads or edits (see its module's docstring)."""
    if isinstance(spec, AblationSpec):
        return [
            *(["attn.hook_z"] if spec.components in ("heads", "both") else []),
            *(["hook_mlp_out"] if spec.components in ("mlp", "both") else []),
        ]
    resid = (
        ActivationStatsSpec,
        SteeringSpec,
        ProbeSpec,
        PatchingSpec,
        FidelitySpec,
        MappedSteeringSpec,
        MappedProbeSpec,
    )
    return ["hook_resid_post"] if isinstance(spec, resid) else []


def site_findings(spec: AnySpec, frontier: FrontierModel) -> list[Finding]:
    """A ``site_not_supported`` finding per hook site the spec needs and the frontier's
    published layout refuses at a block the spec selects; none without a published layout."""
    layout = frontier.layout
    if layout is None:
        return []
    sites = needed_sites(spec)
    if sites and layout.refused:
        return [
            Finding(
                "site_not_supported",
                f"{frontier.id}'s layout is refused, so {', '.join(sites)} cannot be placed: "
                + layout.refused,
            )
        ]
    exact = layout.n_layers == frontier.architecture.layers
    out: list[Finding] = []
    for site in sites:
        if exact:
            refused, reason = layout.refused_at(site, needed_blocks(spec, layout.n_layers))
            s = "s" if len(refused) > 1 else ""
            where = f"at block{s} {', '.join(map(str, refused))}"
        else:  # verified on another size than the catalog's: refuse only what no block offers
            refused, reason = layout.refused_at(site, list(range(layout.n_layers)))
            if len(refused) < layout.n_layers:
                refused = []
            where = "at any block"
        if refused:
            out.append(
                Finding(
                    "site_not_supported",
                    f"{frontier.id}'s layout does not support {site} {where}: {reason}",
                )
            )
    return out


def vet(
    spec: AnySpec,
    frontier: FrontierModel,
    policy: FrontierPolicy,
    limits: VettingLimits,
    usage: Usage = Usage(),
) -> list[Finding]:
    """Every reason ``spec`` may not run on ``frontier``; empty when it passes."""
    out: list[Finding] = []
    if spec.method not in policy.allowed_methods:
        out.append(
            Finding(
                "method_not_allowed",
                f"method {spec.method!r} is not allowed on {frontier.id}; allowed: "
                + (", ".join(policy.allowed_methods) or "none"),
            )
        )
    prompts = prompt_count(spec)
    if prompts > policy.max_prompts:
        out.append(
            Finding(
                "too_many_prompts",
                f"{prompts} prompts/pairs/items in all; {frontier.id} allows {policy.max_prompts}",
            )
        )
    generated = 0
    if isinstance(spec, EvaluationSpec) and spec.samples is not None:
        generated = spec.samples.max_new_tokens
    longest = max(
        (estimate_tokens(t) for f in _DATA_FIELDS for t in _texts(getattr(spec, f, None))[1]),
        default=0,
    )
    if longest + generated > policy.max_tokens_per_prompt:
        out.append(
            Finding(
                "prompt_too_long",
                f"the longest prompt is about {longest} tokens (characters / {CHARS_PER_TOKEN})"
                + (f" plus {generated} generated" if generated else "")
                + f"; {frontier.id} allows {policy.max_tokens_per_prompt} per prompt",
            )
        )
    if spec.max_tokens_per_prompt > policy.max_tokens_per_prompt:
        out.append(
            Finding(
                "token_budget",
                f"max_tokens_per_prompt is {spec.max_tokens_per_prompt}; "
                f"{frontier.id} allows {policy.max_tokens_per_prompt}",
            )
        )
    if isinstance(spec, SteeringSpec | MappedSteeringSpec):
        scales = spec.scales if isinstance(spec, SteeringSpec) else [spec.scale]
        bad = [s for s in scales if abs(s) > limits.max_abs_scale]
        if bad:
            out.append(
                Finding(
                    "scale_out_of_bounds",
                    f"steering scales {bad} are outside ±{limits.max_abs_scale:g}",
                )
            )
    if spec.bootstrap.resamples > policy.max_bootstrap:
        out.append(
            Finding(
                "bootstrap_over_cap",
                f"bootstrap.resamples is {spec.bootstrap.resamples}; {frontier.id} computes at "
                f"most {policy.max_bootstrap}",
            )
        )
    if isinstance(spec, EvaluationSpec) and spec.samples is not None:
        if not policy.allow_samples:
            out.append(
                Finding(
                    "samples_not_allowed",
                    f"{frontier.id} releases no generated text: drop 'samples'",
                )
            )
        if spec.samples.n > limits.max_samples:
            out.append(
                Finding(
                    "too_many_samples",
                    f"{spec.samples.n} samples asked; at most {limits.max_samples}",
                )
            )
    cost = estimated_cost(spec, frontier)
    if cost > limits.max_cost:
        out.append(
            Finding(
                "cost_over_cap",
                f"estimated cost {cost} (prompts × layers × scales) is over the cap "
                f"{limits.max_cost}: use fewer prompts, layers or scales",
            )
        )
    if not is_self_contained(spec):
        out.append(
            Finding(
                "not_self_contained",
                "the spec refers to task sets the queue could not inline; give the data inline",
            )
        )
    out.extend(site_findings(spec, frontier))
    if usage.today_on_frontier >= policy.daily_quota_per_user:
        out.append(
            Finding(
                "daily_quota",
                f"{usage.today_on_frontier} jobs sent to {frontier.id} in the last 24 hours; "
                f"the quota is {policy.daily_quota_per_user}",
            )
        )
    if usage.last_minute >= limits.rate_per_minute:
        out.append(
            Finding(
                "rate_limited",
                f"{usage.last_minute} jobs sent in the last minute; the limit is "
                f"{limits.rate_per_minute} a minute: wait and retry",
            )
        )
    return out


def usage(session: Session, submitter: str, frontier_id: str, now: dt.datetime) -> Usage:
    """The submitter's jobs in the last 24 hours on this frontier, and in the last minute."""
    base = select(func.count()).select_from(Job).where(Job.submitter == submitter)
    day = session.execute(
        base.where(Job.frontier == frontier_id, Job.created_at >= now - dt.timedelta(days=1))
    ).scalar_one()
    minute = session.execute(
        base.where(Job.created_at >= now - dt.timedelta(minutes=1))
    ).scalar_one()
    return Usage(today_on_frontier=int(day), last_minute=int(minute))
