"""The teacher's top-k targets: their dense reconstruction, and the on-disk cache that a second
distillation reads instead of running the teacher, with the same result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from analoglab.foundry.training import (
    LMRun,
    Student,
    cache_key,
    dense_targets,
    hidden_positions_at,
    matched_teacher_layers,
    open_teacher_cache,
    prepare_student,
    teacher_targets,
    train_students,
)

from .test_training import TOKENS, tiny_llama

RUN = LMRun(steps=7, batch_size=4, seq_len=16, lr=1e-2, seed=3, warmup=2, checkpoint_every=100)


class CountingTeacher(torch.nn.Module):
    """Wraps a model and counts its forward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0
        self.config = model.config  # type: ignore[assignment]

    def forward(self, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.model(**kwargs)


def _students() -> list[Student]:
    students = [
        Student("kd", tiny_llama(seed=2), "distill", temperature=2.0, ce_weight=0.1),
        Student("kd-hidden", tiny_llama(seed=3), "distill", hidden_weight=1.0),
        Student("scratch", tiny_llama(seed=2), "scratch", lr=5e-3),
    ]
    for s in students:
        prepare_student(s, 32, 3)
    return students


def test_dense_targets_keep_the_top_k_and_spread_the_tail() -> None:
    logits = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0)) * 3
    values, idx = teacher_targets(logits, 8)
    assert values.dtype == torch.float16 and idx.shape == (3, 5, 8)
    dense = dense_targets(values, idx, 64)
    full = torch.log_softmax(logits, -1)
    torch.testing.assert_close(
        dense.gather(-1, idx.long()), full.gather(-1, idx.long()), atol=1e-3, rtol=1e-3
    )
    assert torch.allclose(dense.exp().sum(-1), torch.ones(3, 5))
    # With every token kept, the targets are the teacher's distribution (to float16).
    v, i = teacher_targets(logits, 64)
    torch.testing.assert_close(dense_targets(v, i, 64), full, atol=1e-3, rtol=1e-3)
    # A temperature flattens the targets: higher entropy.
    hot = dense_targets(values, idx, 64, temperature=2.0)
    assert (-(hot.exp() * hot).sum(-1) > -(dense.exp() * dense).sum(-1)).all()


def test_a_second_distillation_reads_the_cache_and_equals_one_without(tmp_path: Path) -> None:
    teacher = CountingTeacher(tiny_llama(hidden=32, layers=3, seed=1))
    layers = matched_teacher_layers(_students())
    assert layers == [1, 2]  # the hidden-matching student's blocks at equal depth
    key = cache_key("weights", TOKENS, RUN, 8, layers, positions=5)
    cache = open_teacher_cache(tmp_path / "cache", key, 8, layers, positions=5, block=3)
    assert cache.fill(teacher, TOKENS, RUN, torch.device("cpu")) == RUN.steps
    assert teacher.calls == RUN.steps
    assert sorted(p.name for p in cache.folder.glob("*.npz")) == [
        "block-00000.npz",
        "block-00001.npz",
        "block-00002.npz",
    ]
    # Filling again finds every block: the teacher does not run.
    assert cache.fill(teacher, TOKENS, RUN, torch.device("cpu")) == 0

    teacher.calls = 0
    cached = _students()
    logs = train_students(
        teacher, cached, TOKENS, RUN, tmp_path / "a.pt", torch.device("cpu"), cache=cache, top_k=8
    )
    assert teacher.calls == 0 and cache.reads == 3  # every target came from disk
    assert "hidden" in logs["kd-hidden"].values

    fresh = _students()
    train_students(
        teacher,
        fresh,
        TOKENS,
        RUN,
        tmp_path / "b.pt",
        torch.device("cpu"),
        top_k=8,
        hidden_positions=5,
    )
    assert teacher.calls == RUN.steps
    for a, b in zip(cached, fresh, strict=True):
        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_the_cache_key_follows_the_teacher_and_the_batches(tmp_path: Path) -> None:
    key = cache_key("weights", TOKENS, RUN, 8)
    assert key == cache_key("weights", TOKENS.copy(), RUN, 8)
    other_run = LMRun(**{**RUN.__dict__, "seed": 4})
    assert (
        len(
            {
                key,
                cache_key("other weights", TOKENS, RUN, 8),
                cache_key("weights", TOKENS[1:], RUN, 8),
                cache_key("weights", TOKENS, other_run, 8),
                cache_key("weights", TOKENS, RUN, 16),
                cache_key("weights", TOKENS, RUN, 8, [1]),
            }
        )
        == 6
    )
    # Opening the cache for another key removes the old one: one set of targets on disk.
    first = open_teacher_cache(tmp_path / "c", key, 8)
    np.save(first.folder / "x.npy", np.zeros(1))
    open_teacher_cache(tmp_path / "c", cache_key("other weights", TOKENS, RUN, 8), 8)
    assert not first.folder.exists()


def test_hidden_positions_are_distinct_sorted_and_fixed_by_seed_and_step() -> None:
    pos = hidden_positions_at(3, 4, 16, 5, seed=1)
    assert pos.shape == (4, 5)
    assert all(row.unique().numel() == 5 and torch.equal(row, row.sort().values) for row in pos)
    assert torch.equal(pos, hidden_positions_at(3, 4, 16, 5, seed=1))
    assert not torch.equal(pos, hidden_positions_at(4, 4, 16, 5, seed=1))
    assert hidden_positions_at(0, 2, 4, 9, seed=0).shape == (2, 4)  # at most the sequence
