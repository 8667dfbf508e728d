"""Synthetic results for the statistics tests: an evaluation result as the method makes it
(point accuracy and effect, their bootstrap replicates over the items) and a transfer check
between two such results on ``n`` items answered right with known probabilities."""

from __future__ import annotations

import numpy as np

from analoglab.experiments.result import ExperimentResult, ModelIdentity
from analoglab.experiments.transfer import TransferReport, compare
from analoglab.experiments.uncertainty import make_replicates, resample_weights


def identity(name: str) -> ModelIdentity:
    return ModelIdentity(
        name=name, weights_sha256="0" * 64, model_type="llama", layers=2, hidden_size=8,
        parameters=1,
    )  # fmt: skip


def evaluation_result(
    name: str, correct: np.ndarray, resamples: int, seed: int
) -> ExperimentResult:
    """An evaluation result as the method makes it: point accuracy and effect, and their
    replicates over the items (the same resamples on every model of one spec)."""
    weights = resample_weights(len(correct), resamples, seed, "data")
    accuracy = weights @ correct
    return ExperimentResult(
        method="evaluation",
        spec_hash="h",
        spec={},
        model=identity(name),
        device="cpu",
        versions={},
        metrics={"accuracy": float(correct.mean()), "effect": float(2 * correct.mean() - 1)},
        bootstrap=make_replicates(
            resamples=resamples,
            seed=seed,
            items={"data": len(correct)},
            metrics={"accuracy": accuracy, "effect": 2 * accuracy - 1},
        ),
    )


def synthetic_check(
    p_analog: float,
    p_frontier: float,
    n: int,
    seed: int,
    resamples: int = 200,
    stream: int = 99,
) -> TransferReport:
    """Both models answer the same ``n`` items, right with probability ``p`` (the answers
    drawn from ``[seed, stream]``)."""
    rng = np.random.default_rng([seed, stream])
    analog = (rng.random(n) < p_analog).astype(float)
    frontier = (rng.random(n) < p_frontier).astype(float)
    return compare(
        evaluation_result("a", analog, resamples, seed),
        evaluation_result("f", frontier, resamples, seed),
    )
