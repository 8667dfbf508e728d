"""Fidelity: how faithful a model (an analog) is to a reference (its frontier).

Both models read the same token ids (they must share a vocabulary). Over every real token
of the data's texts, with ``p`` the reference's next-token distribution and ``q`` the model's:

- ``kl`` = mean KL(p ‖ q) = mean Σ_v p(v) (log p(v) − log q(v));
- ``top1_agreement`` = the share of positions where both rank the same token first.

Representation similarity: for each selected block ``i`` of the model (at relative depth
``d_i``), the reference's block at the same relative depth; with ``X`` and ``Y`` their
``hook_resid_post`` over every real token (rows matched), centred, linear CKA is

    CKA(X, Y) = ‖XᵀY‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)

(1 for representations equal up to rotation and scale; sums are streamed in float64).

Behaviour agreement on the ``behaviour`` choices (or on ``data`` when it is choices and
``behaviour`` is unset): the share of items where both models prefer the same one of target
and foil (first tokens, at the last position).

Outputs: profile ``cka`` (the model's block indices and depths); metrics ``kl``,
``top1_agreement``, ``cka_mean``, ``behaviour_agreement`` (with choices), ``tokens``.
Fidelity compares two models itself, so transfer does not compare its results.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from analoglab.experiments.methods.common import (
    Context,
    CrossMoments,
    Encoded,
    ExperimentError,
    Outcome,
    answer_ids,
    choices_of,
    concrete,
    forward,
    logit_diff,
    texts_of,
)
from analoglab.experiments.spec import Choice, Choices, FidelitySpec
from analoglab.foundry.fidelity import token_agreement
from analoglab.interventions import block_at_depth, capture, layout_of
from analoglab.models.loading import LoadedModel


def check_same_vocabulary(model: LoadedModel, reference: LoadedModel, sample: str) -> None:
    """A clear error unless both tokenizers have the same size and encode ``sample`` alike."""
    a, b = len(model.tokenizer), len(reference.tokenizer)
    if a != b:
        raise ExperimentError(
            f"{model.name} has a vocabulary of {a} tokens and the reference {reference.name} "
            f"one of {b}; fidelity compares next-token distributions, so both must share a "
            "tokenizer (an analog must be distilled with its frontier's)"
        )
    if model.tokenizer(sample)["input_ids"] != reference.tokenizer(sample)["input_ids"]:
        raise ExperimentError(
            f"{model.name} and the reference {reference.name} encode {sample[:40]!r} "
            "differently; fidelity needs both to share a tokenizer"
        )


def _same_width(a: Tensor, b: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """Logits cut to the tokenizer's vocabulary where the two models pad it differently."""
    if a.shape[-1] == b.shape[-1]:
        return a, b
    if min(a.shape[-1], b.shape[-1]) < vocab:
        raise ExperimentError(
            f"the two models give {a.shape[-1]} and {b.shape[-1]} logits for a vocabulary of "
            f"{vocab} tokens; they do not share an output vocabulary"
        )
    return a[..., :vocab], b[..., :vocab]


def run(spec: FidelitySpec, ctx: Context) -> Outcome:
    ref = ctx.reference
    if ref is None:
        raise ExperimentError(
            "fidelity compares a model with its reference (the frontier); pass reference= to "
            "run (on the command line: --reference)"
        )
    texts = texts_of(spec.data)
    check_same_vocabulary(ctx.loaded, ref, texts[0])
    behaviour: list[Choice] = []
    if spec.behaviour is not None:
        behaviour = choices_of(spec.behaviour, "behaviour", "fidelity")
    elif isinstance(concrete(spec.data), Choices):
        behaviour = choices_of(spec.data, "data", "fidelity")

    ref_layout = layout_of(ref.model)
    blocks = ctx.blocks(spec.layers)
    names = ctx.hook_names("hook_resid_post", blocks)
    ref_names = [
        ref_layout.hook_name("hook_resid_post", block=block_at_depth(d, ref_layout.n_layers))
        for d in blocks.depths
    ]
    moments = [CrossMoments(ctx.layout.d_model, ref_layout.d_model, ctx.device) for _ in names]
    vocab = len(ctx.tokenizer)
    chunks = ctx.chunks(texts)
    behaviour_chunks = ctx.chunks(behaviour)
    ctx.progress.plan(len(chunks) + len(behaviour_chunks))

    def both(enc: Encoded, last_only: bool) -> tuple[Tensor, Tensor, dict[str, Any]]:
        with capture(ctx.model, [] if last_only else names) as mine:
            lm = forward(ctx.model, enc, last_only=last_only)
        with capture(ref.model, [] if last_only else ref_names) as theirs:
            lr = forward(ref.model, enc.to(ref.device), last_only=last_only)
        lm, lr = _same_width(lm, lr.to(lm.device), vocab)
        return lm, lr, {"mine": dict(mine), "theirs": dict(theirs)}

    kl_sum = agree = 0.0
    tokens = 0
    with ctx.phase("compare"):
        for chunk in chunks:
            enc = ctx.encode(chunk)
            lm, lr, caches = both(enc, last_only=False)
            real = enc.real
            kl, top1, n = token_agreement(lr, lm, real)
            kl_sum, agree, tokens = kl_sum + kl, agree + top1, tokens + n
            for m, name, ref_name in zip(moments, names, ref_names, strict=True):
                x = caches["mine"][name][real]
                y = caches["theirs"][ref_name][real.to(ref.device)]
                m.add(x, y)
            ctx.progress.step()

    same = 0
    if behaviour:
        targets = answer_ids(ctx.tokenizer, [it.target for it in behaviour])
        foils = answer_ids(ctx.tokenizer, [it.foil for it in behaviour])
        with ctx.phase("behaviour"):
            for k, items in enumerate(behaviour_chunks):
                rows = slice(k * ctx.batch_size, k * ctx.batch_size + len(items))
                lm, lr, _ = both(ctx.encode([it.prompt for it in items]), last_only=True)
                picks_m = logit_diff(lm, targets[rows], foils[rows]) > 0
                picks_r = logit_diff(lr, targets[rows], foils[rows]) > 0
                same += int((picks_m == picks_r).sum())
                ctx.progress.step()

    with ctx.phase("cka"):
        cka = [m.linear_cka() for m in moments]
    metrics = {
        "kl": kl_sum / max(tokens, 1),
        "top1_agreement": agree / max(tokens, 1),
        "cka_mean": sum(cka) / len(cka),
        "tokens": float(tokens),
    }
    if behaviour:
        metrics["behaviour_agreement"] = same / len(behaviour)
    return Outcome(metrics=metrics, profiles={"cka": blocks.profile(cka)})
