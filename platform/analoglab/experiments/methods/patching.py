"""Activation patching: where in the residual stream a prompt's answer is carried.

Each item is a clean prompt, a corrupted prompt of the same token length, and the answer that
tells them apart (``target`` for the clean prompt, ``foil`` for the corrupted one). With

    LD(x) = mean over items of [logit(target's first token) − logit(foil's first token)]

at the last token, the corrupted prompts are run with ``hook_resid_post`` of one block at the
last position replaced by its value on the clean prompt, and

    recovery = (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)

(1: that activation alone restores the clean answer; 0: it carries none of it). With
``per_position``, each position is patched alone as well: positions ``−P … −1`` counted from
the end, ``P`` the shortest prompt's token count.

Outputs: profile ``recovery`` (per layer, at the last position); table
``recovery_by_position`` ``[layer][position]`` (with ``per_position``; its last column is the
profile); metrics ``clean_logit_diff``, ``corrupt_logit_diff``, ``effect`` = LD_clean −
LD_corrupt, ``best_depth`` (where recovery peaks), and ``positions`` (P, with
``per_position``). When ``|effect| < 1e-3`` the corruption changes nothing to recover and
every recovery is 0. Transfer compares ``effect`` and the ``recovery`` profiles.

Uncertainty (``result.bootstrap``): replicates of ``effect`` and of the ``recovery`` profile
from resampled items (per-item clean, corrupted and patched logit differences).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from analoglab.experiments.methods.common import (
    Context,
    ExperimentError,
    Outcome,
    answer_ids,
    forward,
    headline,
    logit_diff,
    patch_pairs_of,
    token_ids,
)
from analoglab.experiments.result import Replicates
from analoglab.experiments.spec import PatchingSpec
from analoglab.experiments.uncertainty import make_replicates, percentile_interval
from analoglab.interventions import capture, patch

MIN_EFFECT = 1e-3


def run(spec: PatchingSpec, ctx: Context) -> Outcome:
    items = patch_pairs_of(spec.data, "data", "patching")
    clean_ids = token_ids(ctx.tokenizer, [it.clean for it in items])
    corrupt_ids = token_ids(ctx.tokenizer, [it.corrupt for it in items])
    for k, (a, b) in enumerate(zip(clean_ids, corrupt_ids, strict=True)):
        if len(a) != len(b):
            raise ExperimentError(
                f"patch pair {k} has a clean prompt of {len(a)} tokens and a corrupted one of "
                f"{len(b)} ({items[k].clean[:60]!r} vs {items[k].corrupt[:60]!r}); patching "
                "needs equal token lengths: change the corruption or drop the item"
            )
    targets = answer_ids(ctx.tokenizer, [it.target for it in items])
    foils = answer_ids(ctx.tokenizer, [it.foil for it in items])
    blocks = ctx.blocks(spec.layers)
    names = ctx.hook_names("hook_resid_post", blocks)
    n_pos = min(min(len(a), ctx.max_tokens) for a in clean_ids) if spec.per_position else 1
    positions = list(range(-n_pos, 0))
    chunks = ctx.chunks(items)
    ctx.progress.plan(len(chunks) * (2 + len(names) * n_pos))

    n = len(items)
    clean_items, corrupt_items = np.zeros(n), np.zeros(n)
    patched = np.zeros((len(names), n_pos, n))
    with ctx.phase("patch"):
        for k, chunk in enumerate(chunks):
            rows = slice(k * ctx.batch_size, k * ctx.batch_size + len(chunk))
            t, f = targets[rows], foils[rows]
            clean_enc = ctx.encode([it.clean for it in chunk])
            corrupt_enc = ctx.encode([it.corrupt for it in chunk])
            with capture(ctx.model, names, positions=positions) as cache:
                clean_items[rows] = _diffs(forward(ctx.model, clean_enc), t, f)
            sources = dict(cache)
            ctx.progress.step()
            corrupt_items[rows] = _diffs(forward(ctx.model, corrupt_enc), t, f)
            ctx.progress.step()
            for li, name in enumerate(names):
                for j, p in enumerate(positions):
                    with patch(ctx.model, {name: sources[name][:, j : j + 1]}, positions=[p]):
                        logits = forward(ctx.model, corrupt_enc)
                    patched[li, j, rows] = _diffs(logits, t, f)
                    ctx.progress.step()

    clean, corrupt = float(clean_items.mean()), float(corrupt_items.mean())
    swing = clean - corrupt
    weights = ctx.weights(n, "data")
    shown = swing_shown(weights, clean_items, corrupt_items)
    if shown:
        table = ((patched.mean(axis=2) - corrupt) / swing).tolist()
    else:
        table = [[0.0] * n_pos for _ in names]
    recovery = blocks.profile([row[-1] for row in table])
    outcome = Outcome(profiles={"recovery": recovery})
    outcome.bootstrap = _replicates(
        ctx, weights, clean_items, corrupt_items, patched[:, -1, :], shown
    )
    _, depth = headline(recovery)
    outcome.metrics = {
        "clean_logit_diff": clean,
        "corrupt_logit_diff": corrupt,
        "logit_swing": swing,
        "effect": float(flips(clean_items, corrupt_items).mean()),
        "best_depth": depth,
    }
    if spec.per_position:
        outcome.tables["recovery_by_position"] = table
        outcome.metrics["positions"] = float(n_pos)
    return outcome


def flips(clean_items: np.ndarray, corrupt_items: np.ndarray) -> np.ndarray:
    """Per item, ``1[LD_clean > 0] − 1[LD_corrupt > 0]``: 1 where the corruption turns the
    target into the foil, −1 where it turns the foil into the target, 0 where it changes
    nothing (the item's part of ``effect``, on the scale of an evaluation's ``2·acc − 1``)."""
    flipped: np.ndarray = (clean_items > 0).astype(np.float64) - (corrupt_items > 0)
    return flipped


def swing_shown(weights: np.ndarray, clean_items: np.ndarray, corrupt_items: np.ndarray) -> bool:
    """Whether the corruption moves the logit difference at all: the mean of ``LD_clean −
    LD_corrupt`` is at least ``MIN_EFFECT`` and its 95% bootstrap interval excludes 0 (else
    there is nothing to recover and every recovery is 0)."""
    per_item = clean_items - corrupt_items
    if abs(float(per_item.mean())) < MIN_EFFECT:
        return False
    low, high = percentile_interval(weights @ per_item)
    return low > 0.0 or high < 0.0


def _diffs(logits: Tensor, target: Tensor, foil: Tensor) -> np.ndarray:
    diffs: np.ndarray = logit_diff(logits, target, foil).double().cpu().numpy()
    return diffs


def _replicates(
    ctx: Context,
    weights: np.ndarray,
    clean_items: np.ndarray,
    corrupt_items: np.ndarray,
    patched: np.ndarray,
    shown: bool,
) -> Replicates:
    """Replicates of ``effect`` (the flip share) and of the recovery profile; ``patched`` is
    ``[layer, item]`` at the last position. Whether there is a swing to recover is decided
    once, on the full data (``shown``), and held fixed."""
    clean, corrupt = weights @ clean_items, weights @ corrupt_items
    swing = clean - corrupt
    usable = np.abs(swing) >= MIN_EFFECT if shown else np.zeros(len(swing), dtype=bool)
    safe = np.where(usable, swing, 1.0)
    recovery = np.where(
        usable[:, None], (weights @ patched.T - corrupt[:, None]) / safe[:, None], 0.0
    )
    return make_replicates(
        resamples=len(swing),
        seed=ctx.bootstrap_seed,
        items={"data": len(clean_items)},
        metrics={"effect": weights @ flips(clean_items, corrupt_items), "logit_swing": swing},
        profiles={"recovery": recovery},
    )
