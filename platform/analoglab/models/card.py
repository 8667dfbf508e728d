"""The analog card: what a lab publishes with each analog (``analog.json`` + ``README.md``).

The card says where the analog comes from (lab, frontier, how it was distilled, on what data,
with which seed), how big it is against its frontier, when it was released and how long after
the frontier, how faithful it is (KL, top-1 agreement, linear CKA of the residual streams at
matched depths, task accuracies of both models and how often they choose alike), and
under which licence. :func:`render_readme` writes the human-readable version of the same facts.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analoglab.errors import CorruptModelError
from analoglab.files import atomic_write

CARD_FILE = "analog.json"
README_FILE = "README.md"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Architecture(_Strict):
    model_type: str = Field(description="transformers model_type, e.g. llama")
    layers: int
    hidden_size: int
    heads: int
    intermediate_size: int | None = None
    vocab_size: int
    context_length: int | None = None


class Distillation(_Strict):
    method: Literal["logit-kl", "logit-kl+hidden", "scratch", "other"]
    teacher: str = Field(description="frontier id the analog was distilled from")
    temperature: float | None = None
    ce_weight: float | None = None
    hidden_weight: float | None = None
    matched_layers: list[tuple[int, int]] = Field(
        default_factory=list, description="(analog block, frontier block) pairs at equal depth"
    )
    data: str = Field(description="what the analog was trained on")
    data_sha256: str | None = None
    steps: int
    batch_size: int
    seq_len: int
    tokens_seen: int
    seed: int
    seconds: float | None = None
    lr: float | None = Field(default=None, description="peak learning rate")
    teacher_top_k: int | None = Field(
        default=None, description="the teacher's top-k log-probabilities the analog learnt from"
    )
    init: Literal["random", "teacher-embeddings"] | None = Field(
        default=None,
        description="where the analog started: random weights, or its token embeddings the "
        "teacher's on their top principal directions",
    )


class TaskScore(_Strict):
    frontier: float
    analog: float
    items: int
    agreement: float | None = Field(
        default=None, description="share of items where analog and frontier chose alike"
    )


class LayerCKA(_Strict):
    """Linear CKA of the residual streams after an analog block and the frontier block at the
    same relative depth, on held-out text."""

    analog_layer: int
    frontier_layer: int
    cka: float


class BaselineFidelity(_Strict):
    """The same student architecture trained on the same tokens without the teacher."""

    kl: float
    top1_agreement: float
    tasks: dict[str, float] = Field(default_factory=dict)
    cka: float | None = Field(default=None, description="mean linear CKA at matched depths")
    task_agreement: dict[str, float] = Field(
        default_factory=dict, description="per task set, share of items chosen as the frontier"
    )


class Fidelity(_Strict):
    heldout_tokens: int
    kl: float = Field(description="mean next-token KL(frontier ‖ analog) in nats per token")
    top1_agreement: float = Field(description="share of tokens with the same top-1 prediction")
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    cka: float | None = Field(
        default=None, description="mean linear CKA of the residual streams at matched depths"
    )
    cka_layers: list[LayerCKA] = Field(default_factory=list)
    scratch_baseline: BaselineFidelity | None = None


class Release(_Strict):
    date: dt.date
    frontier_date: dt.date
    lag_days: int


class AnalogCard(_Strict):
    card_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    lab: str = Field(pattern=NAME_PATTERN)
    frontier: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    architecture: Architecture
    parameters: int
    frontier_parameters: int
    parameter_ratio: float = Field(description="analog parameters / frontier parameters")
    distillation: Distillation
    fidelity: Fidelity | None = None
    release: Release
    license: str = "Apache-2.0"
    weights_sha256: str = Field(description="sha256 of model.safetensors")


def read_card(folder: Path) -> AnalogCard:
    """Read and validate ``analog.json`` in ``folder``."""
    path = folder / CARD_FILE
    if not path.is_file():
        raise CorruptModelError(f"{folder} has no {CARD_FILE}: it is not an analog folder")
    try:
        return AnalogCard.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise CorruptModelError(f"{path} is not a valid analog card: {first}") from exc


def write_card(folder: Path, card: AnalogCard) -> None:
    """Write ``analog.json`` and ``README.md`` (each atomically) into ``folder``."""
    for name, text in (
        (CARD_FILE, card.model_dump_json(indent=2) + "\n"),
        (README_FILE, render_readme(card)),
    ):
        atomic_write(folder / name, text)


def render_readme(card: AnalogCard) -> str:
    a, d = card.architecture, card.distillation
    lines = [
        f"# {card.name}",
        "",
        f"An analog of **{card.frontier}** released by **{card.lab}**. {card.description}".rstrip(),
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {card.parameters:,} ({card.parameter_ratio:.2%} of the frontier's "
        f"{card.frontier_parameters:,}) |",
        f"| architecture | {a.model_type}, {a.layers} layers, hidden {a.hidden_size}, "
        f"{a.heads} heads, vocabulary {a.vocab_size} |",
        f"| distillation | {d.method} from {d.teacher}, {d.steps} steps of {d.batch_size}×"
        f"{d.seq_len} tokens, seed {d.seed}"
        + (f", temperature {d.temperature}" if d.temperature else "")
        + " |",
        f"| data | {d.data} |",
        f"| released | {card.release.date} ({card.release.lag_days} days after the frontier) |",
        f"| licence | {card.license} |",
        f"| weights sha256 | `{card.weights_sha256}` |",
        "",
    ]
    if card.fidelity:
        f = card.fidelity
        lines += [
            "## Fidelity",
            "",
            f"On {f.heldout_tokens:,} held-out tokens: next-token KL(frontier ‖ analog) "
            f"**{f.kl:.4f}** nats/token, top-1 agreement **{f.top1_agreement:.1%}**"
            + (
                f", linear CKA of the residual streams at matched depths **{f.cka:.3f}** "
                "("
                + ", ".join(
                    f"block {c.analog_layer}↔{c.frontier_layer}: {c.cka:.3f}" for c in f.cka_layers
                )
                + ")"
                if f.cka is not None
                else ""
            )
            + ".",
        ]
        if f.scratch_baseline:
            b = f.scratch_baseline
            lines.append(
                f"The same architecture trained from scratch on the same tokens: KL {b.kl:.4f}, "
                f"top-1 agreement {b.top1_agreement:.1%}"
                + (f", CKA {b.cka:.3f}" if b.cka is not None else "")
                + "."
            )
        if f.tasks:
            lines += [
                "",
                "| task | frontier | analog | same choice as the frontier | items |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {k} | {v.frontier:.3f} | {v.analog:.3f} | "
                f"{'—' if v.agreement is None else f'{v.agreement:.3f}'} | {v.items} |"
                for k, v in f.tasks.items()
            ]
        lines.append("")
    return "\n".join(lines)
