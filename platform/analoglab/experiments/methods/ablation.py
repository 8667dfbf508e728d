"""Ablation: how much of a behaviour each attention head and MLP carries.

The behaviour is the clean logit difference over choice items,

    LD = mean over items of [logit(target's first token) − logit(foil's first token)]

at each prompt's last token. For each selected block, each head (at ``attn.hook_z``) and the
MLP (at ``hook_mlp_out``) is ablated in turn, at every position: set to zero
(``ablation="zero"``) or to its mean over every real token of the data (``"mean"``). The
change is ``Δ = LD_ablated − LD_clean``, and the share of the behaviour removed is
``−Δ / |LD_clean|`` (positive: the ablation hurts the behaviour; 1: it removes all of it).

Only a model that shows the behaviour has shares of it: one whose share of items answered
right (``LD > 0``) has a 95% bootstrap interval clear of chance, and whose mean ``LD`` (the
shares' denominator) has one clear of 0 (:func:`behaviour_shown`).
A model at chance shows every share (and ``effect``) 0, whatever its mean logit difference:
a consistent bias between the two answers is not the behaviour, and dividing by a logit
difference near 0 would make shares of nothing. (This replaces a floor of one nat under
``|LD_clean|``, which counted a model on another logit scale differently.)

Outputs: table ``heads`` ``[layer][head]`` (Δ; with heads), profile ``mlp`` (Δ per layer; with
the MLP), profile ``effect`` (per layer, the share removed by the component that removes the
most on the full data); metrics ``clean_logit_diff``, ``effect`` (the ``effect`` profile's
value of largest magnitude, signed), ``best_depth``, ``behaviour`` (1 where shown),
``top_layer`` and ``top_head`` (that component; head −1: the MLP). Transfer compares
``effect`` and the ``effect`` profiles.

Uncertainty (``result.bootstrap``): replicates of the ``effect`` profile and metric from
resampled items (per-item clean and ablated logit differences; the mean activations of mean
ablation are held fixed). Each layer's component and the headline layer are **chosen once**,
on the full data, and held fixed in every replicate: choosing the largest of many noisy
shares again in each replicate would bias the interval upward (:func:`chosen_components`).
Whether the model shows the behaviour is decided once too.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
from torch import Tensor

from analoglab.experiments.methods.common import (
    Context,
    Outcome,
    answer_ids,
    choices_of,
    forward,
    headline,
    logit_diff,
)
from analoglab.experiments.result import Replicates
from analoglab.experiments.spec import AblationSpec
from analoglab.experiments.uncertainty import make_replicates, percentile_interval
from analoglab.interventions import ablate, capture

MIN_LOGIT_DIFF = 1e-3


def run(spec: AblationSpec, ctx: Context) -> Outcome:
    items = choices_of(spec.data, "data", "ablation")
    targets = answer_ids(ctx.tokenizer, [it.target for it in items])
    foils = answer_ids(ctx.tokenizer, [it.foil for it in items])
    blocks = ctx.blocks(spec.layers)
    n_heads = ctx.layout.n_heads
    do_heads = spec.components in ("heads", "both")
    do_mlp = spec.components in ("mlp", "both")
    z_names = ctx.hook_names("attn.hook_z", blocks)
    mlp_names = ctx.hook_names("hook_mlp_out", blocks)
    # conditions: (layer, head) with head None for the MLP
    conditions: list[tuple[int, int | None]] = [
        (li, h)
        for li in range(len(blocks))
        for h in [*(range(n_heads) if do_heads else []), *([None] if do_mlp else [])]
    ]
    prompts = [it.prompt for it in items]
    chunks = ctx.chunks(prompts)
    starts = [k * ctx.batch_size for k in range(len(chunks))]
    ctx.progress.plan(len(chunks) * (1 + len(conditions)))

    def ld_items(chunk_index: int, logits: Tensor) -> np.ndarray:
        s = starts[chunk_index]
        rows = slice(s, s + logits.shape[0])
        diffs: np.ndarray = logit_diff(logits, targets[rows], foils[rows]).double().cpu().numpy()
        return diffs

    # 1. the clean behaviour, and each component's mean activation where mean ablation needs it
    clean_items = np.zeros(len(items))
    watched: list[str] = []
    if spec.ablation == "mean":
        watched = (z_names if do_heads else []) + (mlp_names if do_mlp else [])
    sums: dict[str, Tensor] = {}
    tokens = 0
    with ctx.phase("clean"):
        for k, chunk in enumerate(chunks):
            enc = ctx.encode(chunk)
            with capture(ctx.model, watched) as cache:
                logits = forward(ctx.model, enc)
            clean_items[starts[k] : starts[k] + len(chunk)] = ld_items(k, logits)
            real = enc.real
            tokens += int(real.sum())
            for name in watched:
                part = cache[name][real].double().sum(0)
                sums[name] = sums[name] + part if name in sums else part
            ctx.progress.step()
    means = {name: (s / max(tokens, 1)).float() for name, s in sums.items()}
    clean = float(clean_items.mean())

    def ablation(li: int, head: int | None) -> AbstractContextManager[None]:
        name = z_names[li] if head is not None else mlp_names[li]
        mean = means.get(name)
        heads = [head] if head is not None else None
        if spec.ablation == "mean":
            return ablate(ctx.model, name, mode="mean", mean=mean, heads=heads)
        return ablate(ctx.model, name, mode="zero", heads=heads)

    # 2. each component ablated
    ablated = np.zeros((len(conditions), len(items)))
    with ctx.phase("ablate"):
        for k, chunk in enumerate(chunks):
            enc = ctx.encode(chunk)
            for c, (li, head) in enumerate(conditions):
                with ablation(li, head):
                    ablated[c, starts[k] : starts[k] + len(chunk)] = ld_items(
                        k, forward(ctx.model, enc)
                    )
                ctx.progress.step()
    deltas = (ablated.mean(axis=1) - clean).tolist()

    head_table = [[0.0] * n_heads for _ in blocks.indices]
    mlp_delta = [0.0] * len(blocks)
    for (li, head), delta in zip(conditions, deltas, strict=True):
        if head is None:
            mlp_delta[li] = delta
        else:
            head_table[li][head] = delta
    has_behaviour = behaviour_shown(ctx, clean_items)
    shares = removed_shares(clean_items.mean(), ablated.mean(axis=1), has_behaviour)
    layer_of = [li for li, _ in conditions]
    chosen = chosen_components(shares, layer_of, len(blocks))
    effect = blocks.profile([float(shares[c]) for c in chosen])

    outcome = Outcome(profiles={"effect": effect})
    value, depth = headline(effect)
    top = max(range(len(chosen)), key=lambda k: abs(effect.values[k]))
    outcome.bootstrap = _replicates(ctx, clean_items, ablated, chosen, top, has_behaviour)
    if do_heads:
        outcome.tables["heads"] = head_table
    if do_mlp:
        outcome.profiles["mlp"] = blocks.profile(mlp_delta)
    top_li, top_head = conditions[chosen[top]]
    outcome.metrics = {
        "clean_logit_diff": clean,
        "effect": value,
        "best_depth": depth,
        "behaviour": 1.0 if has_behaviour else 0.0,
        "top_head": float(-1 if top_head is None else top_head),
        "top_layer": float(blocks.indices[top_li]),
    }
    return outcome


def behaviour_shown(ctx: Context, clean_items: np.ndarray) -> bool:
    """Whether the model shows the behaviour at all: the share of items it answers right
    (clean logit difference above 0) has a 95% bootstrap interval clear of chance (0.5), and
    the mean clean logit difference — the shares' denominator — has one clear of 0 (and is
    at least ``MIN_LOGIT_DIFF``). A model at chance may still hold a consistent bias between
    the two answers; ablations that move a bias are not shares of a behaviour. And a share is
    a ratio: where its denominator's interval reaches 0, its replicates have no bound (an
    analog at chance on facts with a mean LD of 0.02 nats showed shares from −19 to 10)."""
    if abs(float(clean_items.mean())) < MIN_LOGIT_DIFF:
        return False
    weights = ctx.weights(len(clean_items), "data")
    right = (clean_items > 0).astype(np.float64)
    low, high = percentile_interval(weights @ right)
    ld_low, ld_high = percentile_interval(weights @ clean_items)
    return (low > 0.5 or high < 0.5) and (ld_low > 0.0 or ld_high < 0.0)


def removed_shares(
    clean: float | np.ndarray, ablated: np.ndarray, has_behaviour: bool
) -> np.ndarray:
    """The share of the behaviour each ablation removes, ``−(LD_ablated − LD_clean) /
    |LD_clean|`` (``clean`` a number or ``[B]``, ``ablated`` ``[C]`` or ``[B, C]``); all 0
    where the model shows no behaviour to remove."""
    clean_arr = np.asarray(clean, dtype=np.float64)
    ablated = np.asarray(ablated, dtype=np.float64)
    if not has_behaviour:
        return np.zeros_like(ablated)
    scale = np.maximum(np.abs(clean_arr), MIN_LOGIT_DIFF)
    if clean_arr.ndim:
        return np.asarray(-(ablated - clean_arr[:, None]) / scale[:, None])
    return np.asarray(-(ablated - clean_arr) / scale)


def chosen_components(shares: np.ndarray, layer_of: list[int], n_layers: int) -> list[int]:
    """Per layer, the condition removing the largest share on the full data (the first on
    ties): chosen once, then held fixed in every bootstrap replicate."""
    chosen: list[int] = []
    for li in range(n_layers):
        members = [c for c, layer in enumerate(layer_of) if layer == li]
        chosen.append(max(members, key=lambda c: (shares[c], -c)))
    return chosen


def _replicates(
    ctx: Context,
    clean_items: np.ndarray,
    ablated: np.ndarray,
    chosen: list[int],
    top: int,
    has_behaviour: bool,
) -> Replicates:
    """Replicates of the ``effect`` profile and metric: ``clean_items`` ``[item]``,
    ``ablated`` ``[condition, item]``; ``chosen`` the condition of each layer and ``top`` the
    headline layer, both chosen on the full data and held fixed (re-choosing them in each
    replicate would take the largest of noisy shares and bias the interval upward)."""
    weights = ctx.weights(len(clean_items), "data")
    clean = weights @ clean_items  # [B]
    shares = removed_shares(clean, weights @ ablated[chosen].T, has_behaviour)  # [B, L]
    return make_replicates(
        resamples=len(clean),
        seed=ctx.bootstrap_seed,
        items={"data": len(clean_items)},
        metrics={"effect": shares[:, top]},
        profiles={"effect": shares},
    )
