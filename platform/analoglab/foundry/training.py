"""Training loops of the foundry: a language model from scratch, and students distilled from it.

Both loops checkpoint atomically every few steps and resume from the last checkpoint with the
same batches they would have drawn (a batch is a function of the seed and the step), so an
interrupted build picks up where it stopped. Progress goes to a callback.

Distilled students learn from the teacher's **top-k next-token log-probabilities** (float16;
the tail mass spread evenly over the other tokens), whether those come from a teacher forward
pass or from the :class:`TeacherCache`, which keeps them on disk per block of steps so that a
resumed or retuned distillation reads them instead of running the teacher again: the targets
are the same tensors either way, so a run with the cache equals one without.

A checkpoint holds plain data only (tensors, dicts, lists, numbers, strings) and is read back
with ``torch.load(..., weights_only=True)``: a planted file that would run code when unpickled
is refused (:class:`~analoglab.errors.FoundryError`), never executed.
"""

from __future__ import annotations

import hashlib
import json
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
from analoglab.files import atomic_write, atomic_writer

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
    lr: float | None = None  # the peak learning rate; None: the run's
    projections: torch.nn.ModuleList | None = None
    matched_layers: list[tuple[int, int]] = field(default_factory=list)  # (student, teacher)


def matched_depths(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Pairs (student block, teacher block) at the same relative depth (block i ends at (i+1)/L)."""
    pairs = []
    for j in range(student_layers):
        rel = (j + 1) / student_layers
        pairs.append((j, max(0, round(rel * teacher_layers) - 1)))
    return pairs


def prepare_student(
    student: Student, teacher_hidden: int, teacher_layers: int, basis: torch.Tensor | None = None
) -> None:
    """Attach the learned projections that hidden-state matching trains with the student;
    with ``basis`` (``[teacher_hidden, student_hidden]``, :func:`embedding_basis`) they start
    as it, mapping the student's coordinates back into the teacher's space."""
    if student.mode == "distill" and student.hidden_weight > 0:
        cfg = student.model.config
        student.matched_layers = matched_depths(cfg.num_hidden_layers, teacher_layers)
        student.projections = torch.nn.ModuleList(
            torch.nn.Linear(cfg.hidden_size, teacher_hidden, bias=False)
            for _ in student.matched_layers
        )
        if basis is not None:
            with torch.no_grad():
                for proj in student.projections:
                    weight: torch.Tensor = proj.weight  # type: ignore[assignment]
                    weight.copy_(basis.to(weight))


def _embeddings(model: Any) -> torch.Tensor:
    """The model's input token embedding matrix ``[vocab, hidden]`` (a transformers model)."""
    weight: torch.Tensor = model.get_input_embeddings().weight
    return weight


def embedding_basis(teacher: Any, width: int) -> torch.Tensor:
    """The top ``width`` right singular vectors of the teacher's token embedding matrix,
    ``[teacher_hidden, width]`` (float32; each vector's sign fixed so that its largest entry
    is positive, the same on every device)."""
    weight = _embeddings(teacher).detach().float().cpu()
    if width > weight.shape[1]:
        raise FoundryError(
            f"a student {width} wide cannot start from the embeddings of a teacher "
            f"{weight.shape[1]} wide; use init 'random'"
        )
    _, _, vt = torch.linalg.svd(weight, full_matrices=False)
    basis = vt[:width].T.contiguous()
    flip = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    out: torch.Tensor = basis * flip
    return out


def init_from_teacher_embeddings(student: Any, teacher: Any) -> torch.Tensor:
    """Set the student's token embeddings to the teacher's projected onto
    :func:`embedding_basis` (the student's width of it); the basis used. The two must share
    the vocabulary (the foundry's students share the teacher's tokenizer)."""
    target = _embeddings(student)
    source = _embeddings(teacher).detach().float().cpu()
    if target.shape[0] != source.shape[0]:
        raise FoundryError(
            f"the student's vocabulary ({target.shape[0]}) is not the teacher's "
            f"({source.shape[0]}); it cannot start from the teacher's embeddings"
        )
    basis = embedding_basis(teacher, int(target.shape[1]))
    with torch.no_grad():
        target.copy_((source @ basis).to(target))
    return basis


def _student_params(s: Student) -> list[torch.nn.Parameter]:
    params = list(s.model.parameters())
    if s.projections is not None:
        params += list(s.projections.parameters())
    return params


@dataclass
class Targets:
    """What a distilled student learns from, for one batch: the teacher's top-k next-token
    log-probabilities (float16) and their token ids, and, for hidden-state matching, the
    teacher's residual stream after each needed block at a few positions per sequence
    (float16)."""

    values: torch.Tensor  # [batch, seq, k]
    idx: torch.Tensor  # [batch, seq, k] int32
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> [batch, n, d]
    positions: torch.Tensor | None = None  # [batch, n] int64: where ``hidden`` was taken

    def to(self, device: torch.device) -> Targets:
        return Targets(
            self.values.to(device),
            self.idx.to(device),
            {k: v.to(device) for k, v in self.hidden.items()},
            None if self.positions is None else self.positions.to(device),
        )


def hidden_positions_at(
    step: int, batch_size: int, seq_len: int, n: int, seed: int
) -> torch.Tensor:
    """The ``n`` positions of each sequence where hidden states are matched at ``step``
    (sorted, distinct; a function of the seed and the step, like the batch)."""
    rng = np.random.default_rng([seed, step, 7919])
    n = min(n, seq_len)
    pos = np.stack([np.sort(rng.choice(seq_len, n, replace=False)) for _ in range(batch_size)])
    return torch.from_numpy(pos.astype(np.int64))


def _at(h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``h[b, positions[b]]`` for each sequence ``b``: ``[batch, n, d]``."""
    return h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.size(-1)))


def teacher_targets(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``top_k`` next-token log-probabilities (float16) and their token ids
    (int32), per position."""
    logp = F.log_softmax(logits.float(), -1)
    values, idx = logp.topk(min(top_k, logp.size(-1)), dim=-1)
    return values.to(torch.float16), idx.to(torch.int32)


@torch.no_grad()
def compute_targets(
    teacher: torch.nn.Module,
    x: torch.Tensor,
    top_k: int,
    layers: Sequence[int] = (),
    positions: torch.Tensor | None = None,
) -> Targets:
    """One teacher forward pass over batch ``x``, reduced to the :class:`Targets`."""
    out = teacher(input_ids=x, output_hidden_states=bool(layers))
    values, idx = teacher_targets(out.logits, top_k)
    hidden = {}
    if layers:
        assert positions is not None
        pos = positions.to(x.device)
        hidden = {k: _at(out.hidden_states[k + 1], pos).to(torch.float16) for k in layers}
    return Targets(values, idx, hidden, positions if layers else None)


def dense_targets(
    values: torch.Tensor, idx: torch.Tensor, vocab: int, temperature: float = 1.0
) -> torch.Tensor:
    """Full-vocabulary teacher log-probabilities at ``temperature`` from the top-k ones: the
    mass outside the top k is spread evenly over the other tokens, then ``p^(1/T)`` is
    renormalised. ``values``/``idx`` are ``[..., k]``; the result is ``[..., vocab]`` float32."""
    v = values.float()
    k = v.size(-1)
    tail = (1.0 - v.exp().sum(-1, keepdim=True)).clamp_min(1e-6)
    fill = torch.log(tail / max(1, vocab - k))
    dense = fill.expand(*v.shape[:-1], vocab).clone()
    dense.scatter_(-1, idx.long(), v)
    return F.log_softmax(dense / temperature, -1)


def _student_loss(
    s: Student, x: torch.Tensor, targets: Targets | None
) -> tuple[torch.Tensor, dict[str, float]]:
    out = s.model(input_ids=x, output_hidden_states=s.projections is not None)
    logits = out.logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    if s.mode == "scratch" or targets is None:
        return ce, {"ce": ce.item()}
    temp = s.temperature
    vocab = logits.size(-1)
    t_logp = dense_targets(targets.values, targets.idx, vocab, temp).reshape(-1, vocab)
    kl = F.kl_div(
        F.log_softmax(logits.reshape(-1, vocab) / temp, -1),
        t_logp,
        log_target=True,
        reduction="batchmean",
    ) * (temp * temp)
    loss = kl + s.ce_weight * ce if s.ce_weight else kl
    numbers = {"kl": kl.item(), "ce": ce.item()}
    if s.projections is not None and targets.positions is not None:
        hid = torch.zeros((), device=x.device)
        for proj, (j, k) in zip(s.projections, s.matched_layers, strict=True):
            target = targets.hidden[k].float()
            mine = proj(_at(out.hidden_states[j + 1], targets.positions))
            hid = hid + F.mse_loss(mine, target) / target.pow(2).mean()
        hid = hid / len(s.matched_layers)
        loss = loss + s.hidden_weight * hid
        numbers["hidden"] = hid.item()
    return loss, numbers


def matched_teacher_layers(students: Sequence[Student]) -> list[int]:
    """The teacher blocks whose residual stream some student matches."""
    return sorted({k for s in students if s.projections is not None for _, k in s.matched_layers})


class TeacherCache:
    """The teacher's :class:`Targets` for each training step, on disk.

    One ``.npz`` per block of ``block`` steps (log-probabilities and hidden states float16,
    token ids int16 or int32), in a folder named by a key of everything the targets depend on:
    the teacher's weights, the token stream, the batch seed, size and length, k, the matched
    teacher blocks and the positions per sequence (:func:`cache_key`). A block is written
    atomically once complete, so an interrupted fill resumes at the first missing block.
    Size per step: ``batch × (seq_len × k × 4 + layers × positions × hidden × 2)`` bytes.
    """

    def __init__(
        self,
        folder: Path,
        top_k: int,
        layers: Sequence[int] = (),
        positions: int = 16,
        block: int = 50,
    ) -> None:
        self.folder, self.top_k, self.block = folder, top_k, block
        self.layers, self.positions = list(layers), positions
        self._loaded: tuple[int, dict[str, np.ndarray]] | None = None
        self.reads = 0  # blocks read from disk (tests look)

    def _path(self, block: int) -> Path:
        return self.folder / f"block-{block:05d}.npz"

    def has(self, step: int) -> bool:
        return self._path(step // self.block).is_file()

    def get(self, step: int, run: LMRun) -> Targets | None:
        b = step // self.block
        if self._loaded is None or self._loaded[0] != b:
            path = self._path(b)
            if not path.is_file():
                return None
            with np.load(path) as data:
                self._loaded = (b, {k: data[k] for k in data.files})
            self.reads += 1
        arrays = self._loaded[1]
        i = step - b * self.block
        if i >= len(arrays["values"]):
            return None
        hidden = {k: torch.from_numpy(arrays[f"hidden_{k}"][i]) for k in self.layers}
        return Targets(
            torch.from_numpy(arrays["values"][i]),
            torch.from_numpy(arrays["idx"][i].astype(np.int32)),
            hidden,
            hidden_positions_at(step, run.batch_size, run.seq_len, self.positions, run.seed)
            if self.layers
            else None,
        )

    def fill(
        self,
        teacher: torch.nn.Module,
        tokens: np.ndarray,
        run: LMRun,
        device: torch.device,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Compute the blocks not yet on disk; returns the teacher forward passes it ran."""
        self.folder.mkdir(parents=True, exist_ok=True)
        teacher.to(device).eval()
        passes = 0
        for b in range(math.ceil(run.steps / self.block)):
            first, last = b * self.block, min(run.steps, (b + 1) * self.block)
            path = self._path(b)
            if path.is_file():
                with np.load(path) as data:
                    if len(data["values"]) >= last - first:
                        continue
            parts: dict[str, list[np.ndarray]] = {}
            for step in range(first, last):
                t = _targets_at(
                    teacher, tokens, run, step, device, self.top_k, self.layers, self.positions
                )
                passes += 1
                for name, value in (("values", t.values), ("idx", t.idx)):
                    parts.setdefault(name, []).append(value.cpu().numpy())
                for k, h in t.hidden.items():
                    parts.setdefault(f"hidden_{k}", []).append(h.cpu().numpy())
                if progress:
                    progress(step + 1, {})
            arrays = {k: np.stack(v) for k, v in parts.items()}
            if int(arrays["idx"].max()) < 2**15:
                arrays["idx"] = arrays["idx"].astype(np.int16)
            with atomic_writer(path, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
        self._loaded = None
        return passes


def _targets_at(
    teacher: torch.nn.Module,
    tokens: np.ndarray,
    run: LMRun,
    step: int,
    device: torch.device,
    top_k: int,
    layers: Sequence[int],
    positions: int,
) -> Targets:
    x = batch_at(tokens, step, run.batch_size, run.seq_len, run.seed).to(device)
    pos = (
        hidden_positions_at(step, run.batch_size, run.seq_len, positions, run.seed)
        if layers
        else None
    )
    return compute_targets(teacher, x, top_k, layers, pos)


def cache_key(
    weights_sha256: str,
    tokens: np.ndarray,
    run: LMRun,
    top_k: int,
    layers: Sequence[int] = (),
    positions: int = 16,
) -> str:
    """What the teacher's targets depend on, hashed: a different frontier, token stream, batch
    seed, batch shape, k, matched blocks or positions is a different cache."""
    data = {
        "weights": weights_sha256,
        "tokens": hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest(),
        "seed": run.seed,
        "batch_size": run.batch_size,
        "seq_len": run.seq_len,
        "top_k": top_k,
        "layers": list(layers),
        "positions": positions if layers else 0,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def open_teacher_cache(
    root: Path,
    key: str,
    top_k: int,
    layers: Sequence[int] = (),
    positions: int = 16,
    block: int = 50,
) -> TeacherCache:
    """The cache for ``key`` under ``root``; caches under other keys are deleted (one per
    build keeps the disk use to one set of targets)."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    for other in root.iterdir():
        if other.is_dir() and other.name != key:
            shutil.rmtree(other, ignore_errors=True)
    folder = root / key
    folder.mkdir(exist_ok=True)
    atomic_write(
        folder / "key.json",
        json.dumps({"key": key, "top_k": top_k, "layers": list(layers), "positions": positions})
        + "\n",
    )
    return TeacherCache(folder, top_k, layers, positions, block)


def train_students(
    teacher: torch.nn.Module,
    students: list[Student],
    tokens: np.ndarray,
    run: LMRun,
    checkpoint: Path,
    device: torch.device,
    progress: ProgressCallback | None = None,
    cache: TeacherCache | None = None,
    top_k: int = 32,
    hidden_positions: int = 16,
) -> dict[str, TrainLog]:
    """Train every student on the same batches; one set of teacher targets serves them all.

    With ``cache`` (built for these students' matched blocks), the targets of each step are
    read from it; a step it lacks is computed by the teacher and not stored (fill the cache
    first with :meth:`TeacherCache.fill`). Without, the teacher computes them each step.
    Either way they are the same tensors, so the trained weights are the same."""
    teacher.to(device).eval()
    for s in students:
        s.model.to(device).train()
        if s.projections is not None:
            s.projections.to(device)
    optims = {
        s.name: torch.optim.AdamW(
            _student_params(s), lr=s.lr or run.lr, weight_decay=run.weight_decay, betas=(0.9, 0.95)
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
    layers = matched_teacher_layers(students)
    if cache is not None:
        positions = cache.positions
        if cache.layers != layers or cache.top_k != top_k:
            raise FoundryError("the teacher cache was built for other students' targets")
    else:
        positions = hidden_positions
    t0 = time.perf_counter() - (logs[students[0].name].seconds if students else 0.0)
    for step in range(start, run.steps):
        x = batch_at(tokens, step, run.batch_size, run.seq_len, run.seed).to(device)
        targets = None
        if need_teacher:
            targets = cache.get(step, run) if cache is not None else None
            if targets is None:
                targets = _targets_at(teacher, tokens, run, step, device, top_k, layers, positions)
            targets = targets.to(device)
        latest: dict[str, float] = {}
        for s in students:
            optim = optims[s.name]
            _set_lr(optim, lr_at(step, run.steps, s.lr or run.lr, run.warmup, run.hold))
            loss, numbers = _student_loss(s, x, targets)
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
