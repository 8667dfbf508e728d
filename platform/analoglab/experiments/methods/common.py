"""What every method shares: the run context, batching, layer selection, data, answers, sums.

- :class:`Context`: the model being run (and the reference, for fidelity; the residual map,
  for the mapped methods), the layout, the
  spec's batch size and token budget, progress and per-phase timings.
- :func:`encode`: prompts as one left-padded batch, each truncated to its *last*
  ``max_tokens`` tokens (the end of a prompt is what the next token depends on most).
- :func:`select_blocks`: ``spec.layers`` as block indices of one model. Depths ``d`` give
  ``layout.block_at_depth(d)`` (deduplicated, in order), indices may count from the end
  (``-1`` = last block), no layers means every block. Block ``i`` of ``L`` sits at relative
  depth ``i / (L - 1)`` (0 where ``L = 1``): what profiles record and transfer compares.
- data views (:func:`texts_of`, :func:`prompts_of`, :func:`choices_of`, ...), answer ids
  (:func:`answer_ids`: the first token of each answer, as it follows the prompt);
- streamed sums (:class:`Moments`, :class:`CrossMoments`) for statistics over many tokens
  without keeping the activations.
- forward passes as data (:class:`Pass`: a batch, what to capture, what to add): a method
  asks :meth:`Context.run_pass` / :meth:`Context.run_passes` for them, which run them at
  once (:func:`run_alone`) or, when the job runs batched with others
  (:mod:`analoglab.experiments.packed`), hand them to the pass they share; a method whose
  passes over its data do not depend on each other streams them
  (:meth:`Context.stream`): alone one at a time, batched as many at once as a packed pass
  holds, so the job's rows join its batch's passes in one round instead of one round per
  chunk.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from analoglab.errors import AnalogLabError
from analoglab.experiments.batching import DEFAULT_BATCH_TOKENS
from analoglab.experiments.mapping import ResidualMap
from analoglab.experiments.methods.logistic import BinaryFits, solve_binary
from analoglab.experiments.result import LayerProfile, Replicates
from analoglab.experiments.spec import (
    Choice,
    Choices,
    Data,
    Labelled,
    Layers,
    Pair,
    Pairs,
    PatchPair,
    PatchPairs,
    Prompts,
    TaskSetRef,
    inline_task_set,
)
from analoglab.experiments.uncertainty import resample_weights
from analoglab.foundry.fidelity import first_token_ids
from analoglab.interventions import (
    ModelLayout,
    Site,
    add_vector,
    block_at_depth,
    capture,
    position_ids_from_mask,
)
from analoglab.models.loading import LoadedModel
from analoglab.models.tokencache import encode_texts

T = TypeVar("T")
Concrete = Prompts | Choices | Pairs | Labelled | PatchPairs


class ExperimentError(AnalogLabError):
    """An experiment that cannot run as specified; the message says what to change."""


# -- outcome and context ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a method found; the runner wraps it into an :class:`ExperimentResult`."""

    metrics: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, LayerProfile] = field(default_factory=dict)
    tables: dict[str, list[list[float]]] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    bootstrap: Replicates | None = None


class Progress:
    """Units of work done out of a total, reported to an optional ``(done, total)`` callback."""

    def __init__(self, callback: Callable[[int, int], None] | None = None) -> None:
        self.callback = callback
        self.done = 0
        self.total = 0

    def plan(self, total: int) -> None:
        self.total = total
        self._report()

    def step(self, n: int = 1) -> None:
        self.done += n
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))


@dataclass
class Context:
    """One run of one method: the model, the spec's budgets, progress and timings."""

    loaded: LoadedModel
    layout: ModelLayout
    batch_size: int
    max_tokens: int
    seed: int
    resamples: int = 200
    bootstrap_seed: int = 0
    progress: Progress = field(default_factory=Progress)
    timings: dict[str, float] = field(default_factory=dict)
    reference: LoadedModel | None = None
    residual_map: ResidualMap | None = None
    #: Where forward passes go when the job shares them with others (batched execution);
    #: None runs each at once on ``loaded``.
    shared: Callable[[list[Pass]], list[Answer]] | None = None
    #: Where two-class fits go when the job shares them with others (batched execution:
    #: pooled with the other jobs' fits); None solves them at once.
    shared_fits: Callable[[BinaryFits], tuple[Tensor, Tensor]] | None = None
    #: Batched, the tokens (rows × width) of the passes :meth:`stream` asks for at once.
    window_tokens: int = DEFAULT_BATCH_TOKENS

    def fit_binary(self, fits: BinaryFits) -> tuple[Tensor, Tensor]:
        """Two-class logistic regressions by Newton's method (:mod:`.logistic`): alone
        solved at once, batched pooled with the other jobs' fits; the same weights either
        way (each fit converges on its own)."""
        if self.shared_fits is not None:
            return self.shared_fits(fits)
        return solve_binary([fits])[0]

    def run_pass(self, p: Pass) -> Answer:
        """One forward pass of the model: last-position logits and what ``p`` captures."""
        return self.run_passes([p])[0]

    def run_passes(self, passes: list[Pass]) -> list[Answer]:
        """Forward passes that do not depend on each other; alone they run one after the
        other, batched they may share packed passes with other jobs' rows."""
        if self.shared is not None:
            return self.shared(passes)
        return [run_alone(self.model, p) for p in passes]

    def stream(self, passes: Iterable[Pass]) -> Iterator[tuple[Pass, Answer]]:
        """Each of ``passes`` with its answer, in order, for passes that do not depend on
        each other's answers (a method's chunks of its data). Alone each pass runs as its
        answer is asked for (one chunk's captures held at a time, as a loop of
        :meth:`run_pass` would); batched they are asked for in windows of at most
        :attr:`window_tokens` tokens (at least one pass a window), each window's rows sharing
        one round of packed passes with the other jobs'
        (:mod:`analoglab.experiments.packed`). The answers are the same either way."""
        if self.shared is None:
            for p in passes:
                yield p, run_alone(self.model, p)
            return
        window: list[Pass] = []
        tokens = 0
        for p in passes:
            size = int(p.enc.input_ids.numel())
            if window and tokens + size > self.window_tokens:
                yield from zip(window, self.shared(window), strict=True)
                window, tokens = [], 0
            window.append(p)
            tokens += size
        if window:
            yield from zip(window, self.shared(window), strict=True)

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def device(self) -> torch.device:
        device: torch.device = self.loaded.device
        return device

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the seconds spent in the block to ``timings[name + "_seconds"]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_seconds"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def weights(self, n: int, stream: str) -> Any:
        """``[resamples, n]`` bootstrap weights of the ``n`` items of one named item set
        (:func:`analoglab.experiments.uncertainty.resample_weights`)."""
        return resample_weights(n, self.resamples, self.bootstrap_seed, stream)

    def chunks(self, items: Sequence[T]) -> list[Sequence[T]]:
        return chunked(items, self.batch_size)

    def encode(self, texts: Sequence[str], loaded: LoadedModel | None = None) -> Encoded:
        target = loaded or self.loaded
        return encode(target.tokenizer, texts, self.max_tokens, target.device)

    def blocks(self, layers: Layers) -> Blocks:
        return select_blocks(layers, self.layout.n_layers, self.loaded.name)

    def hook_names(self, site: Site, blocks: Blocks) -> list[str]:
        return [self.layout.hook_name(site, block=i) for i in blocks.indices]


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """A left-padded batch: ``input_ids`` and ``attention_mask`` ``[batch, seq]``."""

    input_ids: Tensor
    attention_mask: Tensor
    lengths: tuple[int, ...]

    def inputs(self) -> dict[str, Tensor]:
        """The model's keyword arguments (position ids count real tokens, as ``generate``)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": position_ids_from_mask(self.attention_mask),
        }

    def to(self, device: Any) -> Encoded:
        return Encoded(self.input_ids.to(device), self.attention_mask.to(device), self.lengths)

    @property
    def real(self) -> Tensor:
        """``[batch, seq]`` booleans, True on real tokens."""
        return self.attention_mask.bool()


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids as the model sees them (special tokens included), untruncated."""
    ids = encode_texts(tokenizer, texts)  # each text encoded once per loaded tokenizer
    for text, row in zip(texts, ids, strict=True):
        if not row:
            raise ExperimentError(f"the text {text[:60]!r} encodes to no tokens; drop it")
    return ids


def encode(tokenizer: Any, texts: Sequence[str], max_tokens: int, device: Any) -> Encoded:
    """``texts`` as one batch, left padded, each cut to its last ``max_tokens`` tokens."""
    rows = [row[-max_tokens:] for row in token_ids(tokenizer, texts)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return encode_rows(rows, pad, device)


def encode_rows(rows: Sequence[Sequence[int]], pad: int, device: Any) -> Encoded:
    """Token id rows as one left-padded batch (``pad`` fills the left)."""
    width = max(len(r) for r in rows)
    # built as lists and made tensors once (a tensor a row costs more than the row)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return Encoded(ids.to(device), mask.to(device), tuple(len(r) for r in rows))


@dataclass(frozen=True)
class Steer:
    """Add ``scale * vector`` at hook point ``point`` (at ``positions``, else everywhere)."""

    point: str
    vector: Tensor
    scale: float
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Pass:
    """One forward pass a method asks for: the batch, the hook points to capture (at
    ``positions``, else every position) and at most one steering edit (applied before the
    capture where both touch one point)."""

    enc: Encoded
    capture: tuple[str, ...] = ()
    positions: tuple[int, ...] | None = None
    steer: Steer | None = None


@dataclass(frozen=True)
class Answer:
    """A pass's float32 last-position logits ``[batch, vocab]`` and its captures by name
    (``[batch, len(positions) or seq, ...]``, aligned with the pass's own batch; captured at
    every position in a shared pass, a row's left padding is zeros: read real tokens only)."""

    logits: Tensor
    cache: dict[str, Tensor]


def run_alone(model: Any, p: Pass) -> Answer:
    """``p`` on ``model`` by itself: :func:`capture` and :func:`add_vector` around one
    :func:`forward`."""
    with ExitStack() as stack:
        if p.steer is not None:
            s = p.steer
            stack.enter_context(
                add_vector(model, s.point, s.vector, scale=s.scale, positions=s.positions)
            )
        cache: dict[str, Tensor] = {}
        if p.capture:
            cache = stack.enter_context(capture(model, list(p.capture), positions=p.positions))
        logits = forward(model, p.enc)
    return Answer(logits, dict(cache))


#: Per model class, which of ``logits_to_keep`` and ``use_cache`` its ``forward`` takes.
_FORWARD_OPTIONS: dict[type, tuple[bool, bool]] = {}


def forward(model: Any, enc: Encoded, *, last_only: bool = True) -> Tensor:
    """Float32 logits ``[batch, vocab]`` at the last position (``last_only``), else
    ``[batch, seq, vocab]``. Asks the model for the last position's logits only where it
    can (``logits_to_keep``), saving the unembedding of every other position, and for no
    key/value cache where it can (``use_cache=False``: one pass, nothing to continue)."""
    kwargs: dict[str, Any] = dict(enc.inputs())
    cls = type(model)
    options = _FORWARD_OPTIONS.get(cls)
    if options is None:
        params = inspect.signature(model.forward).parameters
        options = _FORWARD_OPTIONS[cls] = ("logits_to_keep" in params, "use_cache" in params)
    keeps_logits, takes_cache = options
    if last_only and keeps_logits:
        kwargs["logits_to_keep"] = 1
    if takes_cache:
        kwargs["use_cache"] = False
    logits: Tensor = model(**kwargs).logits
    return logits[:, -1].float() if last_only else logits.float()


def masked_mean(x: Tensor, real: Tensor) -> Tensor:
    """Mean over the real tokens of each row: ``[batch, seq, ...]`` → ``[batch, ...]``."""
    weights = real.to(x.dtype).reshape(*real.shape, *([1] * (x.dim() - 2)))
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1)


def logit_diff(logits: Tensor, target: Tensor, foil: Tensor) -> Tensor:
    """``logit[target] - logit[foil]`` per row of ``[batch, vocab]`` logits."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, target.to(logits.device)] - logits[rows, foil.to(logits.device)]


# -- layers -----------------------------------------------------------------------------------


def relative_depth(block: int, n_layers: int) -> float:
    """Block ``i`` of ``L`` sits at ``i / (L - 1)``; the only block of one sits at 0."""
    return 0.0 if n_layers <= 1 else block / (n_layers - 1)


@dataclass(frozen=True)
class Blocks:
    """The selected blocks of one model, with their relative depths."""

    indices: tuple[int, ...]
    depths: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def profile(self, values: Sequence[float] | Tensor) -> LayerProfile:
        vals = values.tolist() if isinstance(values, Tensor) else list(values)
        if len(vals) != len(self.indices):
            raise ValueError(f"{len(vals)} values for {len(self.indices)} blocks")
        return LayerProfile(
            indices=list(self.indices), depths=list(self.depths), values=[float(v) for v in vals]
        )


def select_blocks(layers: Layers, n_layers: int, model_name: str = "the model") -> Blocks:
    """``layers`` resolved on a model of ``n_layers`` blocks (see the module docstring)."""
    if layers.depths is not None:
        chosen = [block_at_depth(d, n_layers) for d in layers.depths]
        if not chosen:
            raise ExperimentError("layers.depths is empty; give at least one depth in [0, 1]")
    elif layers.indices is not None:
        if not layers.indices:
            raise ExperimentError("layers.indices is empty; give at least one block index")
        chosen = []
        for i in layers.indices:
            j = i + n_layers if i < 0 else i
            if not 0 <= j < n_layers:
                raise ExperimentError(
                    f"layer index {i} is out of range: {model_name} has {n_layers} blocks "
                    f"(indices 0 to {n_layers - 1}, or -{n_layers} to -1 from the end); "
                    "address layers by relative depth (layers.depths) to run on any size"
                )
            chosen.append(j)
    else:
        chosen = list(range(n_layers))
    unique = list(dict.fromkeys(chosen))
    return Blocks(tuple(unique), tuple(relative_depth(i, n_layers) for i in unique))


def headline(profile: LayerProfile) -> tuple[float, float]:
    """The profile's value of largest magnitude (signed; the first on ties) and its depth."""
    best = max(range(len(profile.values)), key=lambda k: abs(profile.values[k]))
    return profile.values[best], profile.depths[best]


# -- data -------------------------------------------------------------------------------------


def concrete(data: Data) -> Concrete:
    """The data itself: a task-set reference is drawn (the runner resolves them first)."""
    return inline_task_set(data) if isinstance(data, TaskSetRef) else data


def texts_of(data: Data) -> list[str]:
    """Every text in the data: prompts, the prompts of choices, both sides of pairs (positives
    first), labelled texts, clean then corrupted prompts of patch pairs."""
    d = concrete(data)
    if isinstance(d, Prompts):
        return list(d.prompts)
    if isinstance(d, Choices):
        return [item.prompt for item in d.items]
    if isinstance(d, Pairs):
        return [p.positive for p in d.pairs] + [p.negative for p in d.pairs]
    if isinstance(d, Labelled):
        return [item.text for item in d.items]
    return [p.clean for p in d.items] + [p.corrupt for p in d.items]


def prompts_of(data: Data, field_name: str) -> list[str]:
    """Prompts, or the prompts of choices; other kinds are an error naming ``field_name``."""
    d = concrete(data)
    if isinstance(d, Prompts):
        return list(d.prompts)
    if isinstance(d, Choices):
        return [item.prompt for item in d.items]
    raise ExperimentError(
        f"{field_name} must be prompts or choices (or a task set of them), not {d.kind}"
    )


def choices_of(data: Data, field_name: str, method: str) -> list[Choice]:
    d = concrete(data)
    if not isinstance(d, Choices):
        raise ExperimentError(
            f"{method} needs choices in {field_name} (prompt, target, foil), not {d.kind}; "
            "use kind 'choices' or a choice task set such as 'ioi' or 'sentiment'"
        )
    return list(d.items)


def pairs_of(data: Data, field_name: str, method: str) -> list[Pair]:
    d = concrete(data)
    if not isinstance(d, Pairs):
        raise ExperimentError(
            f"{method} needs contrast pairs in {field_name} (positive, negative), not {d.kind}; "
            "use kind 'pairs' or the task set 'sentiment_pairs'"
        )
    return list(d.pairs)


def patch_pairs_of(data: Data, field_name: str, method: str) -> list[PatchPair]:
    d = concrete(data)
    if not isinstance(d, PatchPairs):
        raise ExperimentError(
            f"{method} needs patch pairs in {field_name} (clean, corrupt, target, foil), not "
            f"{d.kind}; use kind 'patch_pairs' or the task set 'ioi_patch'"
        )
    return list(d.items)


def answer_ids(tokenizer: Any, answers: Sequence[str]) -> Tensor:
    """The first token of each answer, encoded as it follows other text (no BOS)."""
    try:
        return torch.tensor(first_token_ids(tokenizer, list(answers)), dtype=torch.long)
    except IndexError:
        empty = next(a for a in answers if not tokenizer(a, add_special_tokens=False)["input_ids"])
        raise ExperimentError(f"the answer {empty!r} encodes to no tokens; change it") from None


# -- streamed statistics ----------------------------------------------------------------------


def accumulator_device(device: torch.device) -> torch.device:
    """Where float64 sums live: the GPU where it is CUDA, else the CPU (MPS has no float64)."""
    return device if device.type == "cuda" else torch.device("cpu")


class Moments:
    """Streamed count, sum, sum of norms and second moment ``XᵀX`` of rows ``[n, d]``
    (float64): mean, norms and the covariance's eigenvalues without keeping the rows — but
    for fewer rows than ``d``, which are kept: the covariance then has at most ``n`` nonzero
    eigenvalues, those of the rows' ``n × n`` centred Gram matrix, a smaller problem."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.device = accumulator_device(device)
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.norm_sum = 0.0
        self.xtx = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)
        self.rows: list[Tensor] | None = []  # while fewer than dim

    def add(self, rows: Tensor) -> None:
        x = rows.to(device=self.device, dtype=torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.norm_sum += float(x.norm(dim=1).sum())
        self.xtx += x.T @ x
        if self.rows is not None and self.n < self.sum.shape[0]:
            self.rows.append(x)
        else:
            self.rows = None  # as many rows as the width, or more: the moments serve alone

    @property
    def mean(self) -> Tensor:
        return self.sum / max(self.n, 1)

    def covariance_eigenvalues(self) -> Tensor:
        """Eigenvalues of the (population) covariance, largest first, clamped at 0."""
        mean = self.mean
        if self.rows:
            centred = torch.cat(self.rows) - mean
            gram = centred @ centred.T / self.n
            few: Tensor = torch.linalg.eigvalsh((gram + gram.T) / 2)
            rest = torch.zeros(self.sum.shape[0] - self.n, dtype=few.dtype, device=few.device)
            return torch.cat([few.clamp_min(0).flip(0), rest])
        cov = self.xtx / max(self.n, 1) - torch.outer(mean, mean)
        cov = (cov + cov.T) / 2
        eigenvalues: Tensor = torch.linalg.eigvalsh(cov)
        return eigenvalues.clamp_min(0).flip(0)


class CrossMoments:
    """Streamed sums of two row sets ``X [n, d1]``, ``Y [n, d2]`` for linear CKA."""

    def __init__(self, dx: int, dy: int, device: torch.device) -> None:
        self.device = accumulator_device(device)
        f64, dev = torch.float64, self.device
        self.n = 0
        self.sx = torch.zeros(dx, dtype=f64, device=dev)
        self.sy = torch.zeros(dy, dtype=f64, device=dev)
        self.xtx = torch.zeros(dx, dx, dtype=f64, device=dev)
        self.yty = torch.zeros(dy, dy, dtype=f64, device=dev)
        self.xty = torch.zeros(dx, dy, dtype=f64, device=dev)

    def add(self, x: Tensor, y: Tensor) -> None:
        x = x.to(device=self.device, dtype=torch.float64)
        y = y.to(device=self.device, dtype=torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xtx += x.T @ x
        self.yty += y.T @ y
        self.xty += x.T @ y

    def linear_cka(self) -> float:
        """``‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)`` with ``Xc``, ``Yc`` centred; 0 if degenerate."""
        if self.n == 0:
            return 0.0
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xtx - self.n * torch.outer(mx, mx)
        cyy = self.yty - self.n * torch.outer(my, my)
        cxy = self.xty - self.n * torch.outer(mx, my)
        denom = float(torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy))
        if denom <= 0.0:
            return 0.0
        return float(torch.linalg.matrix_norm(cxy) ** 2) / denom
