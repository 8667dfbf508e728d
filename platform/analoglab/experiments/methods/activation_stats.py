"""Activation statistics: the shape of the residual stream, layer by layer.

For each selected block, the vectors ``x`` are ``hook_resid_post`` over the data's texts: at
each text's last token (``position="last"``), the mean over its real tokens (``"mean"``), or
every real token (``"all"``). Over those vectors:

- ``norm`` = mean ‖x‖;
- ``mean_direction`` = ‖mean x‖ / mean ‖x‖ (1: all vectors point one way; near 0: no shared
  direction);
- ``pca_top1`` = λ₁ / Σλ, the share of variance along the first principal component, with
  λ the eigenvalues of the covariance of x.

Outputs: profiles ``norm``, ``mean_direction``, ``pca_top1``; table ``pca_explained_variance``
``[layer][k]`` (the ratio λ_k / Σλ for k < ``pca_components``, 0 past the rank); metric
``vectors`` (how many vectors per layer). There is no headline ``effect``: transfer compares
the ``norm`` profiles. Statistics are streamed (sums of x and xᵀx in float64), so ``"all"``
keeps no activations.

Uncertainty (``result.bootstrap``): replicates of the ``norm`` profile from resampled texts
(per text: the sum of its vectors' norms and their count, so with ``"all"`` a resample's
mean norm is a ratio of resampled sums).
"""

from __future__ import annotations

import numpy as np
import torch

from analoglab.experiments.methods.common import (
    Context,
    Moments,
    Outcome,
    Pass,
    masked_mean,
    texts_of,
)
from analoglab.experiments.spec import ActivationStatsSpec
from analoglab.experiments.uncertainty import make_replicates


def run(spec: ActivationStatsSpec, ctx: Context) -> Outcome:
    texts = texts_of(spec.data)
    blocks = ctx.blocks(spec.layers)
    names = ctx.hook_names("hook_resid_post", blocks)
    moments = [Moments(ctx.layout.d_model, ctx.device) for _ in names]
    chunks = ctx.chunks(texts)
    ctx.progress.plan(len(chunks) + 1)
    positions = (-1,) if spec.position == "last" else None
    # per text and layer: the sum of its vectors' norms, and how many vectors it gave
    norm_sums = np.zeros((len(names), len(texts)))
    counts = np.ones(len(texts))
    with ctx.phase("forward"):
        start = 0
        passes = (Pass(ctx.encode(c), capture=tuple(names), positions=positions) for c in chunks)
        for p, answer in ctx.stream(passes):
            enc, cache = p.enc, answer.cache
            rows = slice(start, start + int(enc.input_ids.shape[0]))
            start = rows.stop
            for li, (name, m) in enumerate(zip(names, moments, strict=True)):
                x = cache[name]
                if spec.position == "last":
                    m.add(x[:, 0])
                    per_text = x[:, 0].double().norm(dim=-1)
                elif spec.position == "mean":
                    m.add(masked_mean(x, enc.real))
                    per_text = masked_mean(x, enc.real).double().norm(dim=-1)
                else:
                    m.add(x[enc.real])
                    per_text = (x.double().norm(dim=-1) * enc.real).sum(1)
                    counts[rows] = enc.real.sum(1).cpu().numpy()
                norm_sums[li, rows] = per_text.cpu().numpy()
            ctx.progress.step()

    k = spec.pca_components
    norms, directions, top1, table = [], [], [], []
    with ctx.phase("statistics"):
        for m in moments:
            norm = m.norm_sum / max(m.n, 1)
            norms.append(norm)
            directions.append(float(m.mean.norm()) / norm if norm > 0 else 0.0)
            eig = m.covariance_eigenvalues()
            total = float(eig.sum())
            ratios = eig / total if total > 0 else torch.zeros_like(eig)
            row = ratios[:k].tolist()
            table.append(row + [0.0] * (k - len(row)))
            top1.append(row[0] if row else 0.0)
        ctx.progress.step()
    weights = ctx.weights(len(texts), "data")
    norm_replicates = (weights @ norm_sums.T) / (weights @ counts)[:, None]
    return Outcome(
        bootstrap=make_replicates(
            resamples=weights.shape[0],
            seed=ctx.bootstrap_seed,
            items={"data": len(texts)},
            profiles={"norm": norm_replicates},
        ),
        metrics={"vectors": float(moments[0].n)},
        profiles={
            "norm": blocks.profile(norms),
            "mean_direction": blocks.profile(directions),
            "pca_top1": blocks.profile(top1),
        },
        tables={"pca_explained_variance": table},
    )
