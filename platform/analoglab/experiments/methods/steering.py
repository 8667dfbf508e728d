"""Steering: contrastive activation addition, swept over layers and scales.

For each selected block ``i`` the steering vector is

    v_i = mean(resid_post_i at the last token of the positive texts)
        − mean(resid_post_i at the last token of the negative texts)

(``control="random_vector"``: a seeded Gaussian direction scaled to ‖v_i‖ instead). The
behaviour score of a prompt is ``log p(target) − log p(foil)`` of the answers' first tokens
at its last position; ``score(i, s)`` is its mean over the ``evaluate`` prompts with
``s · v_i`` added to ``hook_resid_post`` of block ``i`` at every position (``position="all"``)
or at the last token only (``"last"``). The behaviour's full swing is

    swing = mean score(positive contrast texts) − mean score(negative contrast texts)

on the unsteered model, and the normalised effect is

    effect(i, s) = (score(i, s) − score_unsteered) / max(|swing|, 0.5).

Outputs: tables ``score`` and ``normalised_effect`` ``[layer][scale]`` (scales in the spec's
order); profile ``effect`` (per layer, the normalised effect at the largest positive scale,
or at the scale of largest magnitude when none is positive); profile ``side_effect_kl``
(mean KL(unsteered ‖ steered) of the next-token distribution at the last token of the
``neutral`` prompts at that scale; only with neutral data); metrics ``effect`` (the profile
value of largest magnitude, signed), ``best_depth``, ``swing``, ``unsteered_score``,
``vector_norm_mean``. Transfer compares ``effect`` and the ``effect`` profiles.

Uncertainty (``result.bootstrap``): replicates of ``effect`` and of the ``effect`` profile,
resampling the ``evaluate`` prompts (per-prompt scores, steered and unsteered) and, for the
swing, the contrast pairs (per-pair score differences); the vectors themselves are held
fixed (resampling them would mean steering again for every replicate).

With ``control="random_vector"``, ``random_draws`` directions are drawn and steered with, in
antithetic pairs: draw ``2j + 1`` is draw ``2j`` negated (a Gaussian direction and its
opposite are equally likely, so a pair cancels the part of the response that is linear in
the direction, and what is left of their mean is what random perturbations of that norm do
on average). A control asks whether a random direction steers *systematically*, so its
``effect`` is the mean over the draws of each draw's headline effect, and its ``effect``
profile the mean of the draws' profiles (with one draw, that draw's); the tables are the
first draw's, and only the first sweeps every scale (the others steer at the headline
scale, all that their effect reads). Replicate ``b`` uses draw ``b mod random_draws``, so
``random_draws`` consecutive replicates averaged make one replicate of the mean.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from analoglab.experiments.methods.common import (
    Context,
    Encoded,
    ExperimentError,
    Outcome,
    Pass,
    Steer,
    answer_ids,
    headline,
    pairs_of,
    prompts_of,
    texts_of,
)
from analoglab.experiments.result import Replicates
from analoglab.experiments.spec import MappedSteeringSpec, Pair, SteeringSpec
from analoglab.experiments.uncertainty import headline_rows, make_replicates

SWING_FLOOR = 0.5


def headline_scale(scales: list[float]) -> float:
    """The largest positive scale, else the scale of largest magnitude."""
    positive = [s for s in scales if s > 0]
    return max(positive) if positive else max(scales, key=abs)


def behaviour_data(
    spec: SteeringSpec | MappedSteeringSpec, ctx: Context
) -> tuple[list[Pair], list[str], list[str], int, int]:
    """Contrast pairs, evaluate prompts, neutral texts, and the target's and foil's token ids
    of a steering spec (what :mod:`.mapped` shares)."""
    pairs = pairs_of(spec.contrast, "contrast", spec.method)
    prompts = prompts_of(spec.evaluate, "evaluate")
    neutral = texts_of(spec.neutral) if spec.neutral is not None else []
    ids = answer_ids(ctx.tokenizer, [spec.target, spec.foil])
    if int(ids[0]) == int(ids[1]):
        raise ExperimentError(
            f"target {spec.target!r} and foil {spec.foil!r} start with the same token, so the "
            "score cannot tell them apart; choose answers whose first tokens differ"
        )
    return pairs, prompts, neutral, int(ids[0]), int(ids[1])


def run(spec: SteeringSpec, ctx: Context) -> Outcome:
    pairs, prompts, neutral, target, foil = behaviour_data(spec, ctx)
    blocks = ctx.blocks(spec.layers)
    names = ctx.hook_names("hook_resid_post", blocks)
    scales = [float(s) for s in spec.scales]
    steered = list(dict.fromkeys(s for s in scales if s != 0.0))
    top = headline_scale(scales)
    positions = (-1,) if spec.position == "last" else None

    def score(logits: Tensor) -> Tensor:
        return (logits[:, target] - logits[:, foil]).double()

    def steer(enc: Encoded, li: int, vector: Tensor, scale: float) -> Pass:
        return Pass(enc, steer=Steer(names[li], vector, scale, positions))

    positives = [p.positive for p in pairs]
    negatives = [p.negative for p in pairs]
    contrast_chunks = [ctx.chunks(positives), ctx.chunks(negatives)]
    eval_chunks = ctx.chunks(prompts)
    neutral_chunks = ctx.chunks(neutral)
    draws = spec.random_draws if spec.control == "random_vector" else 1
    # the first draw sweeps every scale (the tables); the others only the headline scale,
    # all their replicates use
    sweeps = [steered] + [[top] if top != 0.0 else []] * (draws - 1)
    ctx.progress.plan(
        sum(len(c) for c in contrast_chunks)
        + len(eval_chunks) * (1 + len(blocks) * sum(len(sweep) for sweep in sweeps))
        + len(neutral_chunks) * (1 + (len(blocks) if top != 0.0 else 0))
    )

    # 1. the vectors, and the swing of the unsteered model on the contrast texts
    d_model = ctx.layout.d_model
    means: list[Tensor] = []
    side_scores: list[np.ndarray] = []
    with ctx.phase("vectors"):
        # both sides' chunks in one stream (batched, one round for the lot), each side summed
        # in its own order
        sides = [(half, chunk) for half, chunks in enumerate(contrast_chunks) for chunk in chunks]
        passes = (Pass(ctx.encode(c), capture=tuple(names), positions=(-1,)) for _, c in sides)
        totals = torch.zeros(2, len(names), d_model, dtype=torch.float64, device=ctx.device)
        per_text: list[list[float]] = [[], []]
        for (half, _), (_, answer) in zip(sides, ctx.stream(passes), strict=True):
            cache = answer.cache
            per_text[half].extend(score(answer.logits).tolist())
            totals[half] += torch.stack([cache[n][:, 0].double().sum(0) for n in names])
            ctx.progress.step()
        for half, count in enumerate((len(positives), len(negatives))):
            means.append(totals[half] / count)
            side_scores.append(np.asarray(per_text[half], dtype=np.float64))
    vectors = (means[0] - means[1]).float()
    norms = vectors.norm(dim=1)
    vector_sets = [vectors]
    if spec.control == "random_vector":
        gen = torch.Generator().manual_seed(spec.seed)
        vector_sets = []
        for k in range(spec.random_draws):
            if k % 2:  # the antithetic draw: the previous direction, negated
                vector_sets.append(-vector_sets[-1])
                continue
            noise = torch.randn(len(names), d_model, generator=gen).to(ctx.device)
            vector_sets.append(noise / noise.norm(dim=1, keepdim=True) * norms.unsqueeze(1))
        vectors = vector_sets[0]
    pair_diffs = side_scores[0] - side_scores[1]
    swing = float(pair_diffs.mean())

    # 2. the behaviour score, unsteered and steered
    # per prompt: unsteered [n]; at the headline scale, for every draw [draw, layer, n]
    base_items = np.zeros(len(prompts))
    top_items = np.zeros((len(vector_sets), len(names), len(prompts)))
    sums = np.zeros((len(names), len(steered)))
    with ctx.phase("steer"):
        start = 0
        for chunk in eval_chunks:
            rows = slice(start, start + len(chunk))
            start += len(chunk)
            enc = ctx.encode(chunk)
            # the unsteered pass and every steered one of the chunk: independent passes
            order = [
                (k, li, s)
                for k in range(len(vector_sets))
                for li in range(len(names))
                for s in sweeps[k]
            ]
            answers = iter(
                ctx.run_passes(
                    [Pass(enc)] + [steer(enc, li, vector_sets[k][li], s) for k, li, s in order]
                )
            )
            base_items[rows] = score(next(answers).logits).cpu().numpy()
            ctx.progress.step()
            for k, _vecs in enumerate(vector_sets):
                for li in range(len(names)):
                    for s in sweeps[k]:
                        scores = score(next(answers).logits).cpu().numpy()
                        if k == 0:
                            sums[li, steered.index(s)] += float(scores.sum())
                        if s == top:
                            top_items[k, li, rows] = scores
                        ctx.progress.step()
    base = float(base_items.mean())
    means_by_scale = {s: (sums[:, k] / len(prompts)).tolist() for k, s in enumerate(steered)}
    score_table = [
        [means_by_scale[s][li] if s != 0.0 else base for s in scales] for li in range(len(names))
    ]
    denom = max(abs(swing), SWING_FLOOR)
    effect_table = [[(v - base) / denom for v in row] for row in score_table]
    column = scales.index(top)
    effect = blocks.profile([row[column] for row in effect_table])
    value, depth = headline(effect)
    if spec.control == "random_vector" and top != 0.0:
        # per draw, its effect profile at the headline scale: [draw, layer]; the control's
        # effect is the draws' mean headline, its profile the draws' mean profile
        per_draw = (top_items.mean(axis=2) - base) / denom
        effect = blocks.profile(per_draw.mean(axis=0).tolist())
        value, depth = float(headline_rows(per_draw).mean()), headline(effect)[1]

    outcome = Outcome(
        tables={"score": score_table, "normalised_effect": effect_table},
        profiles={"effect": effect},
    )

    # 3. side effects on neutral prompts
    if neutral:
        kl = torch.zeros(len(names), dtype=torch.float64)
        with ctx.phase("side_effects"):
            for chunk in neutral_chunks:
                enc = ctx.encode(chunk)
                moves = (
                    []
                    if top == 0.0
                    else [steer(enc, li, vectors[li], top) for li in range(len(names))]
                )
                side = ctx.run_passes([Pass(enc), *moves])
                clean = F.log_softmax(side[0].logits, dim=-1)
                ctx.progress.step()
                for li in range(len(moves)):
                    moved = F.log_softmax(side[1 + li].logits, dim=-1)
                    kl[li] += float((clean.exp() * (clean - moved)).sum(-1).clamp_min(0).sum())
                    ctx.progress.step()
        outcome.profiles["side_effect_kl"] = blocks.profile(kl / len(neutral))

    outcome.bootstrap = _replicates(ctx, top_items, base_items, pair_diffs, top)
    outcome.metrics = {
        "effect": value,
        "best_depth": depth,
        "swing": swing,
        "unsteered_score": base,
        "vector_norm_mean": float(norms.mean()),
    }
    return outcome


def _replicates(
    ctx: Context,
    top_items: np.ndarray,
    base_items: np.ndarray,
    pair_diffs: np.ndarray,
    top: float,
) -> Replicates:
    """Replicates of the ``effect`` profile and metric (see the module docstring):
    ``top_items`` are the per-prompt scores at the headline scale ``[draw, layer, prompt]``."""
    w_eval = ctx.weights(len(base_items), "evaluate")
    w_pairs = ctx.weights(len(pair_diffs), "contrast")
    resamples = w_eval.shape[0]
    draw = np.arange(resamples) % top_items.shape[0]
    if top == 0.0:
        profiles = np.zeros((resamples, top_items.shape[1]))
    else:
        # steered means under each resample, for every draw: [draws, B, L]
        steered_means = np.einsum("bn,kln->kbl", w_eval, top_items)
        chosen = steered_means[draw, np.arange(resamples)]
        base = w_eval @ base_items
        swing = np.maximum(np.abs(w_pairs @ pair_diffs), SWING_FLOOR)
        profiles = (chosen - base[:, None]) / swing[:, None]
    return make_replicates(
        resamples=resamples,
        seed=ctx.bootstrap_seed,
        items={"evaluate": len(base_items), "contrast": len(pair_diffs)},
        metrics={"effect": headline_rows(profiles)},
        profiles={"effect": profiles},
    )
