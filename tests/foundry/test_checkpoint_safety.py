"""Resume checkpoints are read as plain data: a planted pickle that runs code is refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from analoglab.errors import FoundryError
from analoglab.foundry.training import LMRun, load_checkpoint, train_lm

from .test_training import TOKENS, tiny_llama


class Planted:
    """Unpickling this runs ``os.system`` (what a planted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "lm.pt"
    torch.save({"model": {}, "optim": {}, "step": 1, "log": Planted(marker)}, ckpt)
    run = LMRun(steps=2, batch_size=2, seq_len=8, lr=1e-2, seed=0, warmup=1)
    with pytest.raises(FoundryError, match="plain tensors and numbers .* delete it"):
        train_lm(tiny_llama(), TOKENS, run, ckpt, torch.device("cpu"))
    assert not marker.exists()


def test_a_saved_checkpoint_loads_as_plain_data(tmp_path: Path) -> None:
    run = LMRun(steps=2, batch_size=2, seq_len=8, lr=1e-2, seed=0, warmup=1, checkpoint_every=1)
    train_lm(tiny_llama(), TOKENS, run, tmp_path / "lm.pt", torch.device("cpu"))
    state = load_checkpoint(tmp_path / "lm.pt", torch.device("cpu"))
    assert state["step"] == 2 and isinstance(state["model"], dict)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic writer left no temporary file
    assert np.isfinite(state["log"]["values"]["loss"]).all()
