"""A tiny preset cut to a few steps and documents: builds in seconds, for the tests of the
build's mechanics (resuming, rebuilding), not of what the models learn."""

from __future__ import annotations

from analoglab.foundry.presets import Preset, get_preset


def short_tiny() -> Preset:
    return get_preset(
        "tiny",
        frontier_steps=30,
        distill_steps=20,
        checkpoint_every=10,
        train_documents=1500,
        tokenizer_documents=800,
        eval_items=10,
        heldout_windows=4,
    )
