"""Evaluation: does the model do the task? Accuracy and logit difference on choice items.

For each item, ``ld = logit(target's first token) − logit(foil's first token)`` at the
prompt's last token; the item is answered correctly when ``ld > 0``.

Outputs: metrics ``accuracy`` (share correct), ``logit_diff`` (mean ld), ``chance`` = 0.5,
``effect`` = (accuracy − 0.5) / 0.5, ``items``, and ``accuracy.<label>`` for each distinct
item label. With ``samples``, ``result.samples`` holds the greedy continuations (the new text
only, at most ``max_new_tokens`` tokens each) of the first ``samples.n`` prompts. Transfer
compares ``effect`` and ``accuracy`` (evaluation has no layer profile).

Uncertainty (``result.bootstrap``): replicates of ``accuracy``, ``effect`` and
``logit_diff`` from resampled items.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from analoglab.experiments.methods.common import (
    Context,
    Outcome,
    Pass,
    answer_ids,
    choices_of,
    logit_diff,
)
from analoglab.experiments.spec import EvaluationSpec
from analoglab.experiments.uncertainty import make_replicates


def run(spec: EvaluationSpec, ctx: Context) -> Outcome:
    items = choices_of(spec.data, "data", "evaluation")
    targets = answer_ids(ctx.tokenizer, [it.target for it in items])
    foils = answer_ids(ctx.tokenizer, [it.foil for it in items])
    chunks = ctx.chunks(items)
    sample_items = items[: spec.samples.n] if spec.samples else []
    sample_chunks = ctx.chunks(sample_items)
    ctx.progress.plan(len(chunks) + len(sample_chunks))

    diffs: list[float] = []
    with ctx.phase("score"):
        passes = (Pass(ctx.encode([it.prompt for it in chunk])) for chunk in chunks)
        for k, (chunk, (_, answer)) in enumerate(zip(chunks, ctx.stream(passes), strict=True)):
            rows = slice(k * ctx.batch_size, k * ctx.batch_size + len(chunk))
            diffs.extend(logit_diff(answer.logits, targets[rows], foils[rows]).double().tolist())
            ctx.progress.step()

    correct = [d > 0 for d in diffs]
    accuracy = sum(correct) / len(items)
    metrics = {
        "accuracy": accuracy,
        "logit_diff": sum(diffs) / len(items),
        "chance": 0.5,
        "effect": (accuracy - 0.5) / 0.5,
        "items": float(len(items)),
    }
    by_label: dict[str, list[bool]] = defaultdict(list)
    for item, ok in zip(items, correct, strict=True):
        if item.label is not None:
            by_label[item.label].append(ok)
    for label in sorted(by_label):
        metrics[f"accuracy.{label}"] = sum(by_label[label]) / len(by_label[label])

    samples: list[str] = []
    if spec.samples:
        with ctx.phase("generate"):
            for chunk in sample_chunks:
                enc = ctx.encode([it.prompt for it in chunk])
                pad = ctx.tokenizer.pad_token_id
                out = ctx.model.generate(
                    input_ids=enc.input_ids,
                    attention_mask=enc.attention_mask,
                    max_new_tokens=spec.samples.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad if pad is not None else 0,
                )
                new = out[:, enc.input_ids.shape[1] :]
                samples.extend(ctx.tokenizer.batch_decode(new, skip_special_tokens=True))
                ctx.progress.step()
    weights = ctx.weights(len(items), "data")
    resampled = weights @ np.asarray(correct, dtype=np.float64)
    bootstrap = make_replicates(
        resamples=weights.shape[0],
        seed=ctx.bootstrap_seed,
        items={"data": len(items)},
        metrics={
            "accuracy": resampled,
            "effect": (resampled - 0.5) / 0.5,
            "logit_diff": weights @ np.asarray(diffs, dtype=np.float64),
        },
    )
    return Outcome(metrics=metrics, samples=samples, bootstrap=bootstrap)
