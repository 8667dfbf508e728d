"""Training loops of the foundry: a language model from scratch, and students distilled from it.

Both loops checkpoint atomically every few steps and resume from the last checkpoint with the
same batches they would have drawn (a batch is a function of the seed and the step), so an
interrupted build picks up where it stopped. Progress goes to a callback.

A checkpoint holds plain data only (tensors, dicts, lists, numbers, strings) and is read back
with ``torch.load(..., weights_only=True)``: a planted file that would run code when unpickled
is refused (:class:`~analoglab.errors.FoundryError`), never executed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analoglab.errors import FoundryError
from analoglab.files import atomic_writer

ProgressCallback = Callable[[int, dict[str, float]], None]  # (steps done, latest numbers)


@dataclass
class TrainLog:
    """Per-step numbers of a training run, kept in the checkpoint and saved beside the model."""

    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, step: int, **numbers: float) -> None:
        self.steps.append(step)
        for k, v in numbers.items():
            self.values.setdefault(k, []).append(float(v))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "values": self.values, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainLog:
        return cls(
            list(data["steps"]),
            {k: list(v) for k, v in data["values"].items()},
            float(data.get("seconds", 0.0)),
        )


def batch_at(
    tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int
) -> torch.Tensor:
    """The batch of training windows for ``step``: the same for the same seed and step."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    return torch.from_numpy(tokens[idx].astype(np.int64))


def lr_at(step: int, total: int, peak: float, warmup: int, hold: float = 0.0) -> float:
    """Linear warm-up, the peak held for a ``hold`` share of the run, then cosine decay to a
    tenth of the peak. (Holding the peak brings the IOI phase change of the demo frontier
    forward: it comes late in training, and a decayed rate delays it.)"""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_from = max(warmup, int(hold * total))
    if step < decay_from:
        return peak
    progress = (step - decay_from) / max(1, total - decay_from)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_writer(path, "wb") as fh:
        torch.save(obj, fh)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A training checkpoint, read as plain data only (never code from the pickle)."""
    import pickle

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FoundryError(
            f"the checkpoint {path} holds more than plain tensors and numbers (or is damaged) "
            f"and was not loaded: {first}; delete it to train from the start"
        ) from None
    if not isinstance(state, dict):
        raise FoundryError(f"the checkpoint {path} is not a training checkpoint")
    return state


def _set_lr(optim: torch.optim.Optimizer, lr: float) -> None:
    for group in optim.param_groups:
        group["lr"] = lr


@dataclass
class LMRun:
    """One language model trained from scratch on next-token prediction."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    seed: int
    warmup: int = 50
    hold: float = 0.0  # share of the run at the peak rate before the decay
    weight_decay: float = 0.01
    checkpoint_every: int = 100


def train_lm(
    model: torch.nn.Module,
    tokens: np.ndarray,
    run: LMRun,
    checkpoint: Path,
    device: torch.device,
    progress: ProgressCallback | None = None,
) -> TrainLog:
    """Train ``model`` on random windows of ``tokens``; resume from ``checkpoint`` if present."""
    model.to(device).train()
    optim = torch.optim.AdamW(
        model.parameters(), lr=run.lr, weight_decay=run.weight_decay, betas=(0.9, 0.95)
    )
    log, start = TrainLog(), 0
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, device)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        log, start = TrainLog.from_dict(state["log"]), int(state["step"])
    t0 = time.perf_counter() - log.seconds
    for step in range(start, run.steps):
        _set_lr(optim, lr_at(step, run.steps, run.lr, run.warmup, run.hold))
        x = batch_at(tokens, step, run.batch_size, run.seq_len, run.seed).to(device)
        loss = model(input_ids=x, labels=x).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        log.add(step + 1, loss=loss.item())
        done = step + 1
        if done % run.checkpoint_every == 0 or done == run.steps:
            log.seconds = time.perf_counter() - t0
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optim": optim.state_dict(),
                    "step": done,
                    "log": log.to_dict(),
                },
                checkpoint,
            )
        if progress:
            progress(done, {"loss": loss.item()})
    log.seconds = time.perf_counter() - t0
    model.eval()
    return log


@dataclass
class Student:
    """A student being trained: distilled from the teacher, or from scratch (a baseline)."""

    name: str
    model: Any  # a transformers causal LM
    mode: str  # "distill" | "scratch"
    temperature: float = 2.0
    ce_weight: float = 0.5
    hidden_weight: float = 0.0
    projections: torch.nn.ModuleList | None = None
    matched_layers: list[tuple[int, int]] = field(default_factory=list)  # (student, teacher)


def matched_depths(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Pairs (student block, teacher block) at the same relative depth (block i ends at (i+1)/L)."""
    pairs = []
    for j in range(student_layers):
        rel = (j + 1) / student_layers
        pairs.append((j, max(0, round(rel * teacher_layers) - 1)))
    return pairs


def prepare_student(student: Student, teacher_hidden: int, teacher_layers: int) -> None:
    """Attach the learned projections that hidden-state matching trains with the student."""
    if student.mode == "distill" and student.hidden_weight > 0:
        cfg = student.model.config
        student.matched_layers = matched_depths(cfg.num_hidden_layers, teacher_layers)
        student.projections = torch.nn.ModuleList(
            torch.nn.Linear(cfg.hidden_size, teacher_hidden, bias=False)
            for _ in student.matched_layers
        )


def _student_params(s: Student) -> list[torch.nn.Parameter]:
    params = list(s.model.parameters())
    if s.projections is not None:
        params += list(s.projections.parameters())
    return params


def _student_loss(
    s: Student,
    x: torch.Tensor,
    t_logits: torch.Tensor | None,
    t_hidden: Sequence[torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    out = s.model(input_ids=x, output_hidden_states=s.projections is not None)
    logits = out.logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    if s.mode == "scratch" or t_logits is None:
        return ce, {"ce": ce.item()}
    temp = s.temperature
    vocab = logits.size(-1)
    kl = F.kl_div(
        F.log_softmax(logits.reshape(-1, vocab) / temp, -1),
        F.log_softmax(t_logits.reshape(-1, vocab) / temp, -1),
        log_target=True,
        reduction="batchmean",
    ) * (temp * temp)
    loss = kl + s.ce_weight * ce
    numbers = {"kl": kl.item(), "ce": ce.item()}
    if s.projections is not None and t_hidden is not None:
        hid = torch.zeros((), device=x.device)
        for proj, (j, k) in zip(s.projections, s.matched_layers, strict=True):
            target = t_hidden[k + 1]
            hid = hid + F.mse_loss(proj(out.hidden_states[j + 1]), target) / target.pow(2).mean()
        hid = hid / len(s.matched_layers)
        loss = loss + s.hidden_weight * hid
        numbers["hidden"] = hid.item()
    return loss, numbers


def train_students(
    teacher: torch.nn.Module,
    students: list[Student],
    tokens: np.ndarray,
    run: LMRun,
    checkpoint: Path,
    device: torch.device,
    progress: ProgressCallback | None = None,
) -> dict[str, TrainLog]:
    """Train every student on the same batches; one teacher forward serves them all."""
    teacher.to(device).eval()
    for s in students:
        s.model.to(device).train()
        if s.projections is not None:
            s.projections.to(device)
    optims = {
        s.name: torch.optim.AdamW(
            _student_params(s), lr=run.lr, weight_decay=run.weight_decay, betas=(0.9, 0.95)
        )
        for s in students
    }
    logs = {s.name: TrainLog() for s in students}
    start = 0
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, device)
        for s in students:
            s.model.load_state_dict(state["students"][s.name]["model"])
            if s.projections is not None:
                s.projections.load_state_dict(state["students"][s.name]["projections"])
            optims[s.name].load_state_dict(state["students"][s.name]["optim"])
            logs[s.name] = TrainLog.from_dict(state["students"][s.name]["log"])
        start = int(state["step"])
    need_teacher = any(s.mode == "distill" for s in students)
    need_hidden = any(s.projections is not None for s in students)
    t0 = time.perf_counter() - (logs[students[0].name].seconds if students else 0.0)
    for step in range(start, run.steps):
        x = batch_at(tokens, step, run.batch_size, run.seq_len, run.seed).to(device)
        t_logits, t_hidden = None, None
        if need_teacher:
            with torch.no_grad():
                t_out = teacher(input_ids=x, output_hidden_states=need_hidden)
            t_logits, t_hidden = t_out.logits, t_out.hidden_states
        latest: dict[str, float] = {}
        for s in students:
            optim = optims[s.name]
            _set_lr(optim, lr_at(step, run.steps, run.lr, run.warmup, run.hold))
            loss, numbers = _student_loss(s, x, t_logits, t_hidden)
            optim.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(_student_params(s), 1.0)
            optim.step()
            logs[s.name].add(step + 1, loss=loss.item(), **numbers)
            latest[f"{s.name}.loss"] = loss.item()
        done = step + 1
        if done % run.checkpoint_every == 0 or done == run.steps:
            elapsed = time.perf_counter() - t0
            for lg in logs.values():
                lg.seconds = elapsed
            _save_atomic(
                {
                    "step": done,
                    "students": {
                        s.name: {
                            "model": s.model.state_dict(),
                            "optim": optims[s.name].state_dict(),
                            "projections": s.projections.state_dict() if s.projections else None,
                            "log": logs[s.name].to_dict(),
                        }
                        for s in students
                    },
                },
                checkpoint,
            )
        if progress:
            progress(done, latest)
    elapsed = time.perf_counter() - t0
    for s in students:
        logs[s.name].seconds = elapsed
        s.model.eval()
    return logs
