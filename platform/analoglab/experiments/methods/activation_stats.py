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
"""

from __future__ import annotations

import torch

from analoglab.experiments.methods.common import (
    Context,
    Moments,
    Outcome,
    forward,
    masked_mean,
    texts_of,
)
from analoglab.experiments.spec import ActivationStatsSpec
from analoglab.interventions import capture


def run(spec: ActivationStatsSpec, ctx: Context) -> Outcome:
    texts = texts_of(spec.data)
    blocks = ctx.blocks(spec.layers)
    names = ctx.hook_names("hook_resid_post", blocks)
    moments = [Moments(ctx.layout.d_model, ctx.device) for _ in names]
    chunks = ctx.chunks(texts)
    ctx.progress.plan(len(chunks) + 1)
    positions = [-1] if spec.position == "last" else None
    with ctx.phase("forward"):
        for chunk in chunks:
            enc = ctx.encode(chunk)
            with capture(ctx.model, names, positions=positions) as cache:
                forward(ctx.model, enc)
            for name, m in zip(names, moments, strict=True):
                x = cache[name]
                if spec.position == "last":
                    m.add(x[:, 0])
                elif spec.position == "mean":
                    m.add(masked_mean(x, enc.real))
                else:
                    m.add(x[enc.real])
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
    return Outcome(
        metrics={"vectors": float(moments[0].n)},
        profiles={
            "norm": blocks.profile(norms),
            "mean_direction": blocks.profile(directions),
            "pca_top1": blocks.profile(top1),
        },
        tables={"pca_explained_variance": table},
    )
