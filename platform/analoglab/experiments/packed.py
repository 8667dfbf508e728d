"""Batched execution, the running: several jobs' forward passes packed into shared passes.

:func:`run_packed` runs passes (:class:`~.methods.common.Pass`) of different jobs together:
their rows, each row's real tokens, are sorted by length and packed into forward passes of at
most ``batch_tokens`` tokens (rows × the widest), cut where they cost least for a pass's fixed
cost (:func:`~.batching.pack_passes`, :func:`measure_pass_tokens`), each row
left padded to its forward pass's widest (its attention mask and position ids keep counting
its own real tokens, so padding changes no row). One hook per hook point applies each pass's
steering vector to that pass's rows only and captures that pass's rows only (a row whose pass
has no intervention gets none). Logits and captures go back to each pass's own rows; a
capture over every position is laid out at the pass's own width, its real tokens where they
sit alone, its left padding zero (methods read real tokens only). A row that several passes
ask for with the same edit (the same tokens, and no steering or the same vector, scale,
point and positions) runs once and answers all of them: jobs over a shared task set cost
one job's rows. The passes run without an autograd graph (grad mode is per thread).

:func:`run_together` runs several jobs' methods at once: each job's method runs in its own
thread, and the threads take turns (only one runs at a time), each until it asks for forward
passes (:meth:`~.methods.common.Context.run_passes`) or two-class fits
(:meth:`~.methods.common.Context.fit_binary`), or ends. When every job is waiting or done,
the passes asked for run packed (:func:`run_packed`), and each job gets its answers. The fits
wait until no job asks for passes, then all are solved pooled
(:func:`~.methods.logistic.solve_binary`: each fit converges on its own, so its weights are
those it gets alone): jobs that reach their fits at different rounds still share a call.
A job's random state
(``random``, numpy, torch) is its own: saved when it yields its turn and restored when it
gets it back, so its seeded draws are those it makes alone. Every shareable method asks for
its passes through the context (a probe its feature capture, then its fits), so the jobs run
their own method code. When the packed passes (or the pooled fits) fail, each job's passes
(fits) run again by themselves, so the job at fault fails alone; a job that raises
ends with its error, and the others go on. The jobs' own code runs with torch on one CPU
thread (each job thread would otherwise start its own OpenMP team, and on a few cores the
teams' spinning made the jobs' small fits twice as slow); the shared passes use all of the
worker's threads.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from analoglab.experiments.batching import pack_passes
from analoglab.experiments.methods.common import (
    Answer,
    Encoded,
    Pass,
    Steer,
    encode_rows,
    forward,
)
from analoglab.experiments.methods.logistic import BinaryFits, solve_binary
from analoglab.interventions import Forward, hooks
from analoglab.interventions.positions import gather_positions, scatter_positions

T = TypeVar("T")


class Turns(Protocol):
    """What a job's body is given: how it asks for forward passes and for two-class fits."""

    def passes(self, passes: list[Pass]) -> list[Answer]: ...

    def fits(self, fits: BinaryFits) -> tuple[Tensor, Tensor]: ...


def _rows(p: Pass) -> list[list[int]]:
    """Each row's real token ids (its left padding dropped)."""
    ids, mask = p.enc.input_ids, p.enc.attention_mask
    n = int(mask.shape[1])
    return [ids[b, n - int(mask[b].sum()) :].tolist() for b in range(int(ids.shape[0]))]


def _steer_key(p: Pass) -> tuple[Any, ...] | None:
    """What makes two rows' steering the same edit: its point, scale, positions and vector."""
    s = p.steer
    if s is None:
        return None
    vector = s.vector.detach().to("cpu", torch.float32).contiguous()
    return (s.point, float(s.scale), s.positions, vector.numpy().tobytes())


class _Row:
    """One distinct row of a packed pass: its real token ids, its steering edit (the key of
    :func:`_steer_key`; the ``Steer`` is that of ``owners[0]``'s pass, every owner's being
    the same) and the passes' rows it answers for."""

    __slots__ = ("edit", "ids", "owners")

    def __init__(self, ids: list[int], edit: tuple[Any, ...] | None, owner: tuple[int, int]):
        self.ids = ids
        self.edit = edit
        self.owners = [owner]


def run_packed(
    model: Any,
    passes: Sequence[Pass],
    pad: int = 0,
    batch_tokens: int | None = None,
    pass_tokens: int | None = None,
) -> list[Answer]:
    """``passes`` run in forward passes of ``model`` of at most ``batch_tokens`` tokens,
    cut where :func:`~.batching.pack_passes` finds them cheapest for a pass's fixed cost of
    ``pass_tokens`` tokens (default: the fewest passes), each row with its own pass's hooks:
    see the module docstring."""
    distinct: dict[tuple[Any, ...], _Row] = {}
    for k, p in enumerate(passes):
        edit = _steer_key(p)
        for b, ids in enumerate(_rows(p)):
            key = (tuple(ids), edit)
            if key in distinct:
                distinct[key].owners.append((k, b))
            else:
                distinct[key] = _Row(ids, edit, (k, b))
    rows = sorted(distinct.values(), key=lambda r: len(r.ids))  # like widths together
    bound = batch_tokens if batch_tokens is not None else 2**62
    # rows of one width in runs (each within the bound), the runs packed into passes
    runs: list[list[_Row]] = []
    for r in rows:
        last = runs[-1] if runs else None
        if last and len(last[0].ids) == len(r.ids) and (len(last) + 1) * len(r.ids) <= bound:
            last.append(r)
        else:
            runs.append([r])
    packs = pack_passes([(len(run), len(run[0].ids)) for run in runs], bound, pass_tokens)
    logits: list[Tensor | None] = [None] * len(passes)
    caches: list[dict[str, Tensor]] = [{} for _ in passes]
    # no autograd graph: grad mode is per thread, and the coordinator's thread may have it on
    with torch.no_grad():
        for indices in packs:
            members = [r for i in indices for r in runs[i]]
            _run_rows(model, passes, members, pad, logits, caches)
    out = []
    for k in range(len(passes)):
        found = logits[k]
        assert found is not None
        out.append(Answer(found, caches[k]))
    return out


def _run_rows(
    model: Any,
    passes: Sequence[Pass],
    members: list[_Row],
    pad: int,
    logits: list[Tensor | None],
    caches: list[dict[str, Tensor]],
) -> None:
    """One forward pass of the distinct rows ``members``, left padded; each row's logits and
    captures written into the place of every pass's row it answers for."""
    device = passes[0].enc.input_ids.device
    enc = encode_rows([r.ids for r in members], pad, device)
    width = int(enc.input_ids.shape[1])
    # the rows of each pass in this forward pass, and where they sit in their own pass
    at: dict[int, tuple[list[int], list[int]]] = {}
    for i, r in enumerate(members):
        for k, b in r.owners:
            in_pack, in_pass = at.setdefault(k, ([], []))
            in_pack.append(i)
            in_pass.append(b)
    mine = {
        k: (torch.tensor(in_pack, device=device), torch.tensor(in_pass, device=device))
        for k, (in_pack, in_pass) in at.items()
    }
    # each steering edit once, on the rows it applies to (their first owner's pass says it)
    groups: dict[tuple[Any, ...], tuple[Steer, list[int]]] = {}
    for i, r in enumerate(members):
        steer = passes[r.owners[0][0]].steer
        if r.edit is not None and steer is not None:
            groups.setdefault(r.edit, (steer, []))[1].append(i)
    edits: dict[str, list[tuple[Steer, Tensor]]] = {}
    for s, where in groups.values():
        edits.setdefault(s.point, []).append((s, torch.tensor(where, device=device)))
    points = list(dict.fromkeys([*edits, *(name for k in mine for name in passes[k].capture)]))
    real_cols: dict[int, Tensor] = {}

    def real_columns(k: int, w: int) -> Tensor:
        """Which of the ``w`` columns of pass ``k``'s rows in this forward pass hold real
        tokens (left padding: a row of ``n`` tokens fills the last ``n``), made once."""
        found = real_cols.get(k)
        if found is None:
            lengths = torch.tensor([enc.lengths[i] for i in at[k][0]], device=device)
            found = torch.arange(w, device=device).unsqueeze(0) >= (w - lengths).unsqueeze(1)
            real_cols[k] = found
        return found

    def edit_at(point: str) -> Callable[[Tensor, Forward], Tensor | None]:
        def edit(x: Tensor, fwd: Forward) -> Tensor | None:
            new = x
            for s, here in edits.get(point, []):
                if new is x:
                    new = x.clone()
                delta = (s.vector * s.scale).to(device=x.device, dtype=x.dtype)
                sub = x[here]
                if s.positions is None:
                    new[here] = sub + delta
                else:
                    cols = fwd.token_indices(s.positions, x)[here]
                    new[here] = scatter_positions(sub, cols, gather_positions(sub, cols) + delta)
            for k, (here, own) in mine.items():
                p = passes[k]
                if point not in p.capture:
                    continue
                if p.positions is not None:
                    # the pass's rows at their positions, gathered from the whole batch at once
                    cols = fwd.token_indices(p.positions, new)[here]
                    value = new[here.unsqueeze(1), cols].detach()
                    shape = (int(p.enc.input_ids.shape[0]), *value.shape[1:])
                    store = _slot(caches[k], point, shape, value)
                    store[own] = value
                else:
                    # each row's real tokens, right-aligned in the pass's own width (its left
                    # padding kept as it is): one masked copy for all the pass's rows here
                    sub = new[here].detach()
                    w = int(p.enc.input_ids.shape[1])
                    shape = (int(p.enc.input_ids.shape[0]), w, *sub.shape[2:])
                    store = _slot(caches[k], point, shape, sub)
                    if w <= width:
                        window = sub[:, width - w :]
                    else:
                        window = sub.new_zeros((sub.shape[0], *shape[1:]))
                        window[:, w - width :] = sub
                    real = real_columns(k, w).view(*window.shape[:2], *[1] * (sub.dim() - 2))
                    store[own] = torch.where(real, window, store[own])
            return None if new is x else new

        return edit

    with hooks(model, {point: edit_at(point) for point in points}):
        out = forward(model, enc)
    for k, (here, own) in mine.items():
        store = logits[k]
        if store is None:
            store = out.new_zeros((int(passes[k].enc.input_ids.shape[0]), out.shape[1]))
            logits[k] = store
        store[own] = out[here]


def measure_pass_tokens(model: Any, bound: int, repeats: int = 3) -> int:
    """A forward pass's fixed cost on ``model`` where it sits, counted in tokens (at most
    ``bound``): the best of ``repeats`` timings of a pass of one row of 8 tokens and one of
    16 rows of 64 give the cost of a token and what a pass costs beyond its tokens. On a CPU
    a few dozen tokens (padding then costs about as much as a real token: rows of very
    different lengths go in passes of their own); on an accelerator, where a small pass
    costs its launches, ``bound`` (as few passes as fit). Only the packing's speed depends
    on it, never a result."""
    import time

    device = next(model.parameters()).device

    def timed(rows: int, width: int) -> float:
        ids = torch.ones((rows, width), dtype=torch.long, device=device)
        enc = Encoded(ids, torch.ones_like(ids), (width,) * rows)
        best = float("inf")
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first is a warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                forward(model, enc)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - start)
        return best

    small, large = timed(1, 8), timed(16, 64)
    per_token = (large - small) / (16 * 64 - 8)
    if per_token <= 0:
        return bound
    fixed = max(0.0, small - 8 * per_token)
    return int(min(bound, round(fixed / per_token)))


def _slot(cache: dict[str, Tensor], name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The capture ``name`` of a pass, zeros of ``shape`` until its rows are filled in (a
    row's left padding stays zero: every method reads real tokens only)."""
    store = cache.get(name)
    if store is None:
        store = cache[name] = like.new_zeros(shape)
    return store


def _rng_state() -> tuple[Any, ...]:
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.get_rng_state_all() if initialized else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Any, ...]) -> None:
    py, npy, cpu, cuda = state
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class _Job(Generic[T]):
    """One job's method in its own thread, running only while it holds the turn."""

    def __init__(self, body: Callable[[Turns], T]) -> None:
        self.body = body
        self.turn = threading.Event()
        self.yielded = threading.Event()
        self.asked: list[Pass] | None = None
        self.answers: list[Answer] | None = None
        self.asked_fits: BinaryFits | None = None
        self.fitted: tuple[Tensor, Tensor] | None = None
        self.failure: BaseException | None = None
        self.value: T | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.rng: tuple[Any, ...] | None = None
        self.thread = threading.Thread(target=self._main, name="batched-job", daemon=True)

    def _main(self) -> None:
        self.turn.wait()
        self.turn.clear()
        try:
            self.value = self.body(self)
        except BaseException as exc:  # the job's own failure, reported as its outcome
            self.error = exc
        self.finished = True
        self.yielded.set()

    def passes(self, passes: list[Pass]) -> list[Answer]:
        """Ask for ``passes`` and wait for the coordinator to run them (the job's ``shared``)."""
        self.asked = list(passes)
        self._wait()
        answers, self.answers = self.answers, None
        assert answers is not None
        return answers

    def fits(self, fits: BinaryFits) -> tuple[Tensor, Tensor]:
        """Ask for ``fits`` and wait for the coordinator to solve them (``shared_fits``)."""
        self.asked_fits = fits
        self._wait()
        fitted, self.fitted = self.fitted, None
        assert fitted is not None
        return fitted

    def _wait(self) -> None:
        """Yield the turn until the coordinator has answered; raise the request's failure."""
        self.yielded.set()
        self.turn.wait()
        self.turn.clear()
        failure, self.failure = self.failure, None
        if failure is not None:
            self.answers = self.fitted = None
            raise failure

    def resume(self) -> None:
        """Let the job run until it asks for passes or fits, or ends (its own random state
        restored)."""
        if self.rng is not None:
            _set_rng_state(self.rng)
        self.yielded.clear()
        self.turn.set()
        self.yielded.wait()
        self.rng = _rng_state()


def _answer_passes(
    jobs: list[_Job[Any]], model: Any, pad: int, batch_tokens: int, pass_tokens: int | None
) -> None:
    """Run the passes the ``jobs`` asked for, packed; each job's answers or its failure."""
    if not jobs:
        return
    asked = [p for job in jobs for p in (job.asked or [])]
    try:
        answers = run_packed(model, asked, pad, batch_tokens, pass_tokens)
        at = 0
        for job in jobs:
            n = len(job.asked or [])
            job.answers, at = answers[at : at + n], at + n
    except Exception:  # find the job at fault: each job's passes alone
        for job in jobs:
            try:
                job.answers = run_packed(model, job.asked or [], pad, batch_tokens, pass_tokens)
            except Exception as exc:
                job.failure = exc


def _answer_fits(jobs: list[_Job[Any]]) -> None:
    """Solve the fits the ``jobs`` asked for, pooled; each job's weights or its failure."""
    if not jobs:
        return
    requests = [job.asked_fits for job in jobs if job.asked_fits is not None]
    try:
        for job, fitted in zip(jobs, solve_binary(requests), strict=True):
            job.fitted = fitted
    except Exception:  # find the job at fault: each job's fits alone
        for job, request in zip(jobs, requests, strict=True):
            try:
                job.fitted = solve_binary([request])[0]
            except Exception as exc:
                job.failure = exc


def run_together(
    bodies: Sequence[Callable[[Turns], T]],
    model: Any,
    *,
    batch_tokens: int,
    pad: int = 0,
    pass_tokens: int | None = None,
) -> list[T | BaseException]:
    """Run each body (a job: given its :class:`Turns`, through which it asks for passes and
    fits, it returns its outcome) with their passes packed together (a pass's fixed cost
    ``pass_tokens``, as :func:`run_packed`) and their fits pooled; each body's value, or the
    exception it raised. See the module docstring."""
    jobs = [_Job(body) for body in bodies]
    outside = _rng_state()
    threads = torch.get_num_threads()
    for job in jobs:
        job.thread.start()
    live, ready = list(jobs), list(jobs)
    try:
        while live:
            # the jobs' own code (statistics, the rest) on one CPU thread; the shared passes
            # and the pooled fits on all
            torch.set_num_threads(1)
            for job in ready:
                job.resume()
            torch.set_num_threads(threads)
            live = [job for job in live if not job.finished]
            passes = [job for job in live if job.asked is not None]
            if passes:  # passes first: the jobs asking for fits wait, so more fits pool
                _answer_passes(passes, model, pad, batch_tokens, pass_tokens)
                ready = passes
            else:
                ready = [job for job in live if job.asked_fits is not None]
                _answer_fits(ready)
            for job in ready:
                job.asked = None
                job.asked_fits = None
    finally:
        _set_rng_state(outside)
        torch.set_num_threads(threads)
    out: list[T | BaseException] = []
    for job in jobs:
        job.thread.join(timeout=5)
        if job.error is not None:
            out.append(job.error)
        else:
            out.append(job.value)  # type: ignore[arg-type]
    return out
