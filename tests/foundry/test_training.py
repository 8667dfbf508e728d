"""Training loops: deterministic batches, the schedule, and resume giving the same weights."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analoglab.errors import FoundryError
from analoglab.foundry.training import (
    LMRun,
    Student,
    batch_at,
    embedding_basis,
    init_from_teacher_embeddings,
    lr_at,
    matched_depths,
    prepare_student,
    train_lm,
    train_students,
)

TOKENS = np.random.default_rng(0).integers(0, 64, size=5000).astype(np.uint16)


def tiny_llama(hidden: int = 16, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def test_batches_depend_only_on_seed_and_step() -> None:
    a = batch_at(TOKENS, 7, 4, 16, seed=1)
    assert torch.equal(a, batch_at(TOKENS, 7, 4, 16, seed=1))
    assert not torch.equal(a, batch_at(TOKENS, 8, 4, 16, seed=1))
    assert a.shape == (4, 16) and a.dtype == torch.int64


def test_learning_rate_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert abs(lrs[-1] - 0.1) < 0.01
    held = [lr_at(s, 100, 1.0, 10, hold=0.5) for s in range(100)]
    assert held[10:50] == [1.0] * 40 and held[50] == 1.0 and held[51] < 1.0
    assert abs(held[-1] - 0.1) < 0.01


def test_matched_depths_pair_equal_relative_depths() -> None:
    assert matched_depths(2, 6) == [(0, 2), (1, 5)]
    assert matched_depths(1, 4) == [(0, 3)]
    assert matched_depths(3, 3) == [(0, 0), (1, 1), (2, 2)]


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    seq = np.tile(np.arange(32, dtype=np.uint16), 200)  # a learnable sequence
    model = tiny_llama()
    log = train_lm(
        model,
        seq,
        LMRun(steps=40, batch_size=8, seq_len=16, lr=1e-2, seed=0, warmup=5),
        tmp_path / "c.pt",
        torch.device("cpu"),
    )
    losses = log.values["loss"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_resumed_training_equals_uninterrupted(tmp_path: Path) -> None:
    run = LMRun(steps=12, batch_size=4, seq_len=16, lr=1e-2, seed=0, warmup=2, checkpoint_every=6)
    straight = tiny_llama()
    train_lm(straight, TOKENS, run, tmp_path / "a.pt", torch.device("cpu"))

    class Stop(Exception):
        pass

    def stop_after_six(done: int, numbers: dict[str, float]) -> None:
        if done == 6:
            raise Stop

    interrupted = tiny_llama()
    with contextlib.suppress(Stop):
        train_lm(interrupted, TOKENS, run, tmp_path / "b.pt", torch.device("cpu"), stop_after_six)
    resumed = tiny_llama(seed=123)  # fresh weights: everything must come from the checkpoint
    log = train_lm(resumed, TOKENS, run, tmp_path / "b.pt", torch.device("cpu"))
    assert log.steps == list(range(1, 13))
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_students_train_together_with_hidden_matching(tmp_path: Path) -> None:
    teacher = tiny_llama(hidden=32, layers=4, seed=1)
    distilled = Student("d", tiny_llama(seed=2), "distill", hidden_weight=0.5)
    scratch = Student("s", tiny_llama(seed=2), "scratch")
    prepare_student(distilled, 32, 4)
    assert distilled.projections is not None and distilled.matched_layers == [(0, 1), (1, 3)]
    run = LMRun(steps=6, batch_size=4, seq_len=16, lr=1e-2, seed=0, warmup=2, checkpoint_every=3)
    logs = train_students(
        teacher, [distilled, scratch], TOKENS, run, tmp_path / "s.pt", torch.device("cpu")
    )
    assert set(logs["d"].values) == {"loss", "kl", "ce", "hidden"}
    assert set(logs["s"].values) == {"loss", "ce"}
    assert logs["d"].steps == logs["s"].steps == list(range(1, 7))


def test_a_student_can_start_from_the_teachers_embeddings() -> None:
    """Its embeddings are the teacher's on their top principal directions: the teacher's
    token similarities, kept as far as the student's width allows."""
    teacher, student = tiny_llama(hidden=32, seed=1), tiny_llama(hidden=8, seed=2)
    basis = init_from_teacher_embeddings(student, teacher)
    assert basis.shape == (32, 8)
    torch.testing.assert_close(basis.T @ basis, torch.eye(8), atol=1e-5, rtol=0)
    e_t = teacher.get_input_embeddings().weight.detach()
    e_s = student.get_input_embeddings().weight.detach()
    torch.testing.assert_close(e_s, e_t @ basis)
    # the best rank-8 reading of the teacher's embeddings: closer than any other 8 directions
    other = torch.linalg.qr(torch.randn(32, 8, generator=torch.Generator().manual_seed(3)))[0]
    kept = (e_t @ basis @ basis.T - e_t).norm()
    assert kept < (e_t @ other @ other.T - e_t).norm()
    # tied: the output side reads the same matrix
    assert student.get_output_embeddings().weight.data_ptr() == e_s.data_ptr()
    # the same basis each time, signs included
    torch.testing.assert_close(embedding_basis(teacher, 8), basis, atol=0, rtol=0)
    assert (basis.gather(0, basis.abs().argmax(0, keepdim=True)) > 0).all()


def test_matching_projections_start_as_the_basis_and_bad_shapes_are_refused() -> None:
    teacher, student = tiny_llama(hidden=32, seed=1), tiny_llama(hidden=8, seed=2)
    basis = init_from_teacher_embeddings(student, teacher)
    s = Student("s", student, "distill", hidden_weight=1.0)
    prepare_student(s, 32, 2, basis)
    assert s.projections is not None
    for proj in s.projections:
        torch.testing.assert_close(proj.weight.detach(), basis)
    with pytest.raises(FoundryError, match="cannot start from the embeddings"):
        init_from_teacher_embeddings(tiny_llama(hidden=64), teacher)
    cfg = tiny_llama(hidden=8).config
    cfg.vocab_size = 80
    with pytest.raises(FoundryError, match="vocabulary"):
        init_from_teacher_embeddings(LlamaForCausalLM(cfg), teacher)
