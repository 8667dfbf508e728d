"""The difference-of-means direction of a sentiment store steers the model the right way.

The tiny frontier learned sentiment. Its activations at the last token of labelled reviews
(the foundry's ``sentiment`` task set) give ``mean(positive) − mean(negative)`` at each block;
added to the residual stream of *other*, sentiment-free prompts (``neutral``, another seed),
it must raise ``logit(" good") − logit(" bad")`` (the steering method's behaviour score) when
added and lower it when subtracted, by more than a random direction of the same norm does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analoglab.activations import Source, diff_of_means, extract, open_activations
from analoglab.experiments.methods.common import answer_ids, encode, forward
from analoglab.foundry.tasks import task_set
from analoglab.interventions import add_vector
from analoglab.models.loading import LoadedModel


def score(m: LoadedModel, prompts: list[str], hook: str, vector: torch.Tensor, s: float) -> float:
    ids = answer_ids(m.tokenizer, [" good", " bad"])
    enc = encode(m.tokenizer, prompts, 128, "cpu")
    with torch.no_grad(), add_vector(m.model, hook, vector, scale=s):
        logits = forward(m.model, enc)
    return float((logits[:, ids[0]] - logits[:, ids[1]]).mean())


def test_the_sentiment_direction_steers_the_frontier(
    tiny_models: dict[str, LoadedModel], tmp_path: Path
) -> None:
    frontier = tiny_models["frontier"]
    extract(
        frontier,
        Source.task_set("sentiment", n=64),
        hooks=None,  # every block
        positions="last",
        store=tmp_path / "sentiment",
        batch_size=16,
    )
    ds = open_activations(tmp_path / "sentiment")
    held_out = [str(p) for p in task_set("neutral", 32, seed=99).items]
    gen = torch.Generator().manual_seed(0)
    for hook in ds.hooks:
        direction = diff_of_means(ds[hook], positive="positive", negative="negative")
        assert direction.n_positive == direction.n_negative == 32
        v = torch.tensor(direction.vector, dtype=torch.float32)
        down, base, up = (score(frontier, held_out, hook, v, s) for s in (-1.0, 0.0, 1.0))
        assert down < base < up, (hook, down, base, up)
        noise = torch.randn(v.shape, generator=gen)
        noise = noise / noise.norm() * v.norm()
        r_down, r_up = (score(frontier, held_out, hook, noise, s) for s in (-1.0, 1.0))
        assert up - down > 1.0 and up - down > 2 * abs(r_up - r_down), hook
