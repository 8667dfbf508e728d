"""The demo's model side: the analogs, loaded once and shared, and what the views ask of them.

:class:`Analogs` holds every analog of the model store, each loaded once (at start, or on
first use) and shared by all visitors. Forward passes on one model are taken one at a time
under that model's lock, because steering installs hooks on the shared model for the length
of a pass: a pass of one visitor must never see another's hooks. A streamed completion
takes the lock per token, so visitors talking to the same analog take turns token by token.

- :meth:`Analogs.stream`: a sampled completion, token by token (optionally steered);
- :meth:`Analogs.lens`: the logit lens (the top next token read off the residual stream
  after every block) and the residual stream's norm per block;
- :meth:`Analogs.demo_vector` and :meth:`Analogs.vector_from_pairs`: steering vectors
  (mean difference of the residual stream at the last token of contrast pairs);
- :meth:`Analogs.moved`: the next tokens whose probability a steering vector moved most.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from analoglab.config import Settings
from analoglab.demos.limits import DemoInputError
from analoglab.models.card import AnalogCard
from analoglab.models.catalog import AnalogEntry, Catalog
from analoglab.models.loading import LoadedModel, load_analog

DEMO_VECTOR_DEPTH = 0.5
DEMO_VECTOR_PAIRS = 32


@dataclass(frozen=True)
class Sampling:
    """How to draw a completion (already checked against the limits)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int


@dataclass(frozen=True)
class Vector:
    """A steering vector on one analog: added to ``blocks.{block}.hook_resid_post``."""

    key: str
    label: str
    analog: str
    block: int
    values: Tensor
    source: str
    """Where it came from, in a sentence (shown under the choice)."""
    checked: str = ""
    """Whether its finding was checked on the frontier, and with what verdict."""


@dataclass(frozen=True)
class Lens:
    """The logit lens of one prompt: ``top[layer][pos]`` the top token after each block
    (the last row is the model's own prediction), ``prob`` its probability; ``norms[layer]``
    the mean norm of the residual stream after each block."""

    tokens: list[str]
    top: list[list[str]]
    prob: list[list[float]]
    norms: list[float]


@dataclass(frozen=True)
class Moved:
    token: str
    before: float
    after: float


@dataclass
class _Slot:
    entry: AnalogEntry
    loaded: LoadedModel | None = None
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    run_lock: threading.Lock = field(default_factory=threading.Lock)
    vectors: dict[str, Vector] = field(default_factory=dict)


class Analogs:
    """The analogs of the model store, loaded once, shared by every visitor."""

    def __init__(self, settings: Settings, device: str | None = "cpu") -> None:
        catalog = Catalog.load(settings)
        self.settings = settings
        self.device = device
        self._slots = {entry.name: _Slot(entry) for entry in catalog.analogs}

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def card(self, name: str) -> AnalogCard:
        return self._slot(name).entry.card

    def cards(self) -> list[AnalogCard]:
        return [slot.entry.card for slot in self._slots.values()]

    def preload(self) -> None:
        """Load every analog now, so the first visitor does not wait."""
        for name in self._slots:
            self.model(name)

    def model(self, name: str) -> LoadedModel:
        slot = self._slot(name)
        with slot.load_lock:
            if slot.loaded is None:
                slot.loaded = load_analog(name, device=self.device, settings=self.settings)
            return slot.loaded

    def _slot(self, name: str) -> _Slot:
        if not isinstance(name, str) or name not in self._slots:
            known = ", ".join(self._slots) or "none"
            raise DemoInputError(f"there is no analog called {str(name)[:40]!r} (known: {known})")
        return self._slots[name]

    # -- talking ---------------------------------------------------------------------------

    def stream(
        self,
        name: str,
        prompt: str,
        sampling: Sampling,
        vector: Vector | None = None,
        strength: float = 0.0,
    ) -> Iterator[str]:
        """The completion of ``prompt`` so far, after each new token; with ``vector``, that
        vector times ``strength`` is added after its block at every position."""
        loaded = self.model(name)
        slot = self._slot(name)
        model, tokenizer = loaded.model, loaded.tokenizer
        ids = self._encode(loaded, prompt)
        limit = _context_length(model)
        generator = torch.Generator().manual_seed(sampling.seed)
        produced: list[int] = []
        eos = tokenizer.eos_token_id
        # No key-value cache: analogs are small, and a full pass per token keeps steering at
        # every position exactly as the steering experiments apply it.
        for _ in range(sampling.max_new_tokens):
            if ids.shape[1] + len(produced) >= limit:
                break
            tail = torch.tensor([produced], dtype=ids.dtype, device=ids.device)
            full = torch.cat([ids, tail], dim=1) if produced else ids
            with slot.run_lock, torch.no_grad(), self._steering(loaded, vector, strength):
                logits = model(input_ids=full).logits[0, -1].float().cpu()
            token = _sample(logits, sampling, generator)
            if eos is not None and token == eos:
                break
            produced.append(token)
            yield tokenizer.decode(produced, skip_special_tokens=True)
        if not produced:
            yield ""

    def _steering(self, loaded: LoadedModel, vector: Vector | None, strength: float) -> Any:
        from contextlib import nullcontext

        from analoglab.interventions import add_vector, hook_name

        if vector is None or strength == 0.0:
            return nullcontext()
        point = hook_name("hook_resid_post", n_layers=_n_layers(loaded), block=vector.block)
        return add_vector(loaded.model, point, vector.values.to(loaded.device), scale=strength)

    def _encode(self, loaded: LoadedModel, prompt: str) -> Tensor:
        ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            raise DemoInputError("the prompt has no tokens this analog knows")
        limit = _context_length(loaded.model)
        if ids.shape[1] >= limit:
            raise DemoInputError(
                f"the prompt is {ids.shape[1]} tokens long; this analog reads at most {limit - 1}"
            )
        result: Tensor = ids.to(loaded.device)
        return result

    # -- looking inside --------------------------------------------------------------------

    def lens(self, name: str, prompt: str, positions: int) -> Lens:
        from analoglab.interventions import capture, hook_name, layout_of

        loaded = self.model(name)
        model, tokenizer = loaded.model, loaded.tokenizer
        ids = self._encode(loaded, prompt)
        layout = layout_of(model)
        names = [
            hook_name("hook_resid_post", n_layers=layout.n_layers, block=b)
            for b in range(layout.n_layers)
        ]
        with self._slot(name).run_lock, torch.no_grad():
            with capture(model, names, copy=True) as cache:
                model(input_ids=ids)
            stream = [cache[n][0, -positions:] for n in names]
            unembed = model.get_output_embeddings()
            top: list[list[str]] = []
            prob: list[list[float]] = []
            norms: list[float] = []
            for i, resid in enumerate(stream):
                # the last block's output goes through the final norm as in the model itself
                normed = layout.final_norm(resid)
                probs = torch.softmax(unembed(normed).float(), dim=-1)
                p, t = probs.max(dim=-1)
                top.append([_show(tokenizer.decode([int(x)])) for x in t.tolist()])
                prob.append([float(x) for x in p.tolist()])
                norms.append(float(cache[names[i]][0].float().norm(dim=-1).mean()))
        shown = ids[0, -positions:].tolist()
        tokens = [_show(tokenizer.decode([int(x)])) for x in shown]
        return Lens(tokens=tokens, top=top, prob=prob, norms=norms)

    # -- steering --------------------------------------------------------------------------

    def demo_vector(self, name: str) -> Vector:
        """The sentiment vector of ``name`` from the demo's contrast set (computed once)."""
        slot = self._slot(name)
        cached = slot.vectors.get("demo")
        if cached is not None:
            return cached
        from analoglab.foundry.tasks import task_set

        contrast = task_set("sentiment_pairs", DEMO_VECTOR_PAIRS).items
        pairs = [(p.positive, p.negative) for p in contrast]
        loaded = self.model(name)
        block = _block_at(loaded, DEMO_VECTOR_DEPTH)
        vector = Vector(
            key="demo:sentiment",
            label="demo vector: sentiment (positive − negative)",
            analog=name,
            block=block,
            values=self.vector_from_pairs(name, pairs, block),
            source=(
                f"computed by the demo on {name}: the mean difference of the residual stream "
                f"after block {block} at the last token of {len(pairs)} review pairs, positive "
                "minus negative (the foundry's sentiment contrast set)"
            ),
            checked="not a published finding: a demo vector, not checked on the frontier",
        )
        slot.vectors["demo"] = vector
        return vector

    def vector_from_pairs(self, name: str, pairs: Sequence[tuple[str, str]], block: int) -> Tensor:
        """mean(resid_post at the last token of the positives) − mean(… of the negatives)."""
        from analoglab.interventions import capture, hook_name

        loaded = self.model(name)
        point = hook_name("hook_resid_post", n_layers=_n_layers(loaded), block=block)
        sums: list[Tensor] = []
        for side in (0, 1):
            texts = [pair[side] for pair in pairs]
            total = torch.zeros(_d_model(loaded), dtype=torch.float64)
            for text in texts:
                ids = self._encode(loaded, text)
                with self._slot(name).run_lock, torch.no_grad():
                    with capture(loaded.model, [point], positions=[-1], copy=True) as cache:
                        loaded.model(input_ids=ids)
                    total += cache[point][0, 0].double().cpu()
            sums.append(total / len(texts))
        return (sums[0] - sums[1]).float()

    def moved(
        self, name: str, prompt: str, vector: Vector, strength: float, top: int = 8
    ) -> list[Moved]:
        """The next tokens whose probability moved most when ``vector`` is added."""
        loaded = self.model(name)
        ids = self._encode(loaded, prompt)
        with self._slot(name).run_lock, torch.no_grad():
            before = torch.softmax(loaded.model(input_ids=ids).logits[0, -1].float(), -1).cpu()
            with self._steering(loaded, vector, strength):
                logits = loaded.model(input_ids=ids).logits[0, -1].float()
            after = torch.softmax(logits, -1).cpu()
        change = (after - before).abs()
        order = torch.argsort(change, descending=True)[:top].tolist()
        decode = loaded.tokenizer.decode
        return [Moved(_show(decode([i])), float(before[i]), float(after[i])) for i in order]


def _sample(logits: Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0.0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        k = min(sampling.top_k, logits.shape[-1])
        cutoff = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < sampling.top_p
        keep[0] = True
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _show(token: str) -> str:
    """A token as a visitor can read it: spaces as ␣, newlines as ⏎."""
    return token.replace(" ", "␣").replace("\n", "⏎") or "∅"


def _n_layers(loaded: LoadedModel) -> int:
    from analoglab.interventions import layout_of

    return layout_of(loaded.model).n_layers


def _d_model(loaded: LoadedModel) -> int:
    from analoglab.interventions import layout_of

    return layout_of(loaded.model).d_model


def _block_at(loaded: LoadedModel, depth: float) -> int:
    from analoglab.interventions import layout_of

    return layout_of(loaded.model).block_at_depth(depth)


def _context_length(model: Any) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


__all__ = ["Analogs", "Lens", "Moved", "Sampling", "Vector"]
