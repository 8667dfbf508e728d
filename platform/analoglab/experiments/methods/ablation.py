"""Ablation: how much of a behaviour each attention head and MLP carries.

The behaviour is the clean logit difference over choice items,

    LD = mean over items of [logit(target's first token) − logit(foil's first token)]

at each prompt's last token. For each selected block, each head (at ``attn.hook_z``) and the
MLP (at ``hook_mlp_out``) is ablated in turn, at every position: set to zero
(``ablation="zero"``) or to its mean over every real token of the data (``"mean"``). The
change is ``Δ = LD_ablated − LD_clean``, and the share of the behaviour removed is
``−Δ / max(|LD_clean|, 1)`` (positive: the ablation hurts the behaviour). The floor of one
nat keeps a model that lacks the behaviour (LD near 0) from showing large shares of nothing.

Outputs: table ``heads`` ``[layer][head]`` (Δ; with heads), profile ``mlp`` (Δ per layer; with
the MLP), profile ``effect`` (per layer, the largest share removed among its ablated
components); metrics ``clean_logit_diff``, ``effect`` (the ``effect`` profile's value of
largest magnitude, signed), ``best_depth``. When ``|LD_clean| < 1e-3`` there is no
behaviour at all: every share is 0 and so is ``effect``. Transfer compares ``effect`` and
the ``effect`` profiles.

Uncertainty (``result.bootstrap``): replicates of the ``effect`` profile and metric from
resampled items (per-item clean and ablated logit differences; the mean activations of mean
ablation are held fixed).
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
from analoglab.experiments.uncertainty import headline_rows, make_replicates
from analoglab.interventions import ablate, capture

MIN_LOGIT_DIFF = 1e-3
SHARE_FLOOR = 1.0  # nats: shares are of max(|LD_clean|, this)


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
    share: list[list[float]] = [[] for _ in blocks.indices]
    scale = max(abs(clean), SHARE_FLOOR)
    for (li, head), delta in zip(conditions, deltas, strict=True):
        if head is None:
            mlp_delta[li] = delta
        else:
            head_table[li][head] = delta
        share[li].append(-delta / scale if abs(clean) >= MIN_LOGIT_DIFF else 0.0)
    effect = blocks.profile([max(s) for s in share])

    outcome = Outcome(profiles={"effect": effect})
    outcome.bootstrap = _replicates(ctx, clean_items, ablated, [li for li, _ in conditions])
    if do_heads:
        outcome.tables["heads"] = head_table
    if do_mlp:
        outcome.profiles["mlp"] = blocks.profile(mlp_delta)
    value, depth = headline(effect)
    outcome.metrics = {"clean_logit_diff": clean, "effect": value, "best_depth": depth}
    return outcome


def _replicates(
    ctx: Context, clean_items: np.ndarray, ablated: np.ndarray, layer_of: list[int]
) -> Replicates:
    """Replicates of the ``effect`` profile and metric: ``clean_items`` ``[item]``,
    ``ablated`` ``[condition, item]``, ``layer_of`` each condition's layer position."""
    weights = ctx.weights(len(clean_items), "data")
    clean = weights @ clean_items  # [B]
    deltas = weights @ ablated.T - clean[:, None]  # [B, C]
    shares = -deltas / np.maximum(np.abs(clean), SHARE_FLOOR)[:, None]
    shares[np.abs(clean) < MIN_LOGIT_DIFF] = 0.0
    n_layers = max(layer_of) + 1
    profiles = np.full((len(clean), n_layers), -np.inf)
    for c, li in enumerate(layer_of):
        profiles[:, li] = np.maximum(profiles[:, li], shares[:, c])
    return make_replicates(
        resamples=len(clean),
        seed=ctx.bootstrap_seed,
        items={"data": len(clean_items)},
        metrics={"effect": headline_rows(profiles)},
        profiles={"effect": profiles},
    )
