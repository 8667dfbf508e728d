"""Foundry presets: how big the demo lab's frontier and analogs are, and how long they train;
and the model config of a shape (:func:`llama_config`).

- ``tiny``: under a minute on a laptop CPU; what the tests build.
- ``demo``: the default of ``make up``; under 15 minutes on 2 CPU cores, a frontier that
  learns IOI, two analogs of at most 5% of its parameters to which distillation carries
  copying from context and IOI, and a scratch twin of the smaller one (the same shape and
  batches without the frontier) that learns neither (docs/foundry.md).
- ``large``: for a GPU (``--device cuda``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from analoglab.errors import FoundryError


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture shape."""

    layers: int
    hidden: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class AnalogRecipe:
    """One analog to distil from the frontier."""

    suffix: str  # the analog is named "<preset>-<suffix>"
    shape: Shape
    method: Literal["logit-kl", "logit-kl+hidden"] = "logit-kl"
    #: Where the distilled student starts: ``random`` weights, or ``teacher-embeddings``: its
    #: (tied) token embeddings are the teacher's projected onto their top principal directions,
    #: and hidden-state matching's projections start as that basis (the rest random). The
    #: scratch twin always starts from random weights.
    init: Literal["random", "teacher-embeddings"] = "random"
    temperature: float = 1.0
    ce_weight: float = 0.5
    hidden_weight: float = 0.0
    scratch_baseline: bool = False  # also train this shape from scratch, for comparison
    #: The scratch baseline's peak learning rate (None: the preset's ``distill_lr``).
    scratch_lr: float | None = None
    #: The distilled student's peak learning rate (None: the preset's ``distill_lr``).
    lr: float | None = None
    description: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seed: int
    vocab_size: int
    tokenizer_documents: int
    train_documents: int
    heldout_documents: int
    seq_len: int
    batch_size: int
    frontier: Shape
    frontier_steps: int
    frontier_lr: float
    frontier_hold: float
    analogs: tuple[AnalogRecipe, ...]
    distill_steps: int
    distill_lr: float
    #: How many of the teacher's top next-token log-probabilities a student learns from (and
    #: the teacher cache keeps per position).
    teacher_top_k: int = 32
    #: Hidden-state matching compares the residual streams at this many positions of each
    #: sequence (drawn per step), which keeps the teacher cache small.
    hidden_positions: int = 16
    eval_items: int = 200
    heldout_windows: int = 128
    checkpoint_every: int = 100
    mix: dict[str, float] = field(default_factory=dict)  # empty: the corpus default
    #: The toy world's seed. Task sets and the platform's checks draw from world 0, so it stays
    #: 0 when ``seed`` changes: another seed is another draw of the corpus, the initial weights
    #: and the batches over the same world.
    world_seed: int = 0

    @property
    def lab(self) -> str:
        return f"{self.name}-lab"

    @property
    def frontier_name(self) -> str:
        return f"{self.name}-frontier"

    def analog_name(self, recipe: AnalogRecipe) -> str:
        return f"{self.name}-{recipe.suffix}"

    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the models changes."""
        data: dict[str, Any] = asdict(self)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def frontier_fingerprint(self) -> str:
        """Changes whenever anything that shapes the corpus, the tokenizer or the frontier
        changes; a change elsewhere (the analogs' recipes, evaluation) keeps the trained
        frontier."""
        data = {k: v for k, v in asdict(self).items() if k in FRONTIER_FIELDS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def llama_config(shape: Shape, tokenizer: Any, context: int) -> Any:
    """The ``transformers`` config of a foundry model of ``shape`` over ``tokenizer``'s
    vocabulary (tied embeddings, one key/value head per head)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


#: The preset fields the corpus, the tokenizer and the frontier depend on.
FRONTIER_FIELDS = frozenset(
    {
        "name",
        "seed",
        "world_seed",
        "vocab_size",
        "tokenizer_documents",
        "train_documents",
        "heldout_documents",
        "seq_len",
        "batch_size",
        "frontier",
        "frontier_steps",
        "frontier_lr",
        "frontier_hold",
        "checkpoint_every",
        "mix",
    }
)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="Under a minute on a CPU; for tests. The frontier learns sentiment, "
        "the analogs partly.",
        seed=0,
        vocab_size=384,
        tokenizer_documents=2000,
        train_documents=8000,
        heldout_documents=400,
        seq_len=64,
        batch_size=16,
        frontier=Shape(layers=2, hidden=64, heads=4, intermediate=128),
        frontier_steps=400,
        frontier_lr=3e-3,
        frontier_hold=0.0,
        analogs=(
            AnalogRecipe(
                "analog-s",
                Shape(2, 24, 2, 48),
                method="logit-kl+hidden",
                ce_weight=0.0,
                hidden_weight=1.0,
                scratch_baseline=True,
                description="The smaller analog, distilled on logits and hidden states.",
            ),
            AnalogRecipe(
                "analog-m",
                Shape(2, 32, 2, 64),
                method="logit-kl+hidden",
                ce_weight=0.0,
                hidden_weight=1.0,
                description="The larger analog, distilled on logits and hidden states.",
            ),
        ),
        distill_steps=300,
        distill_lr=1e-2,
        eval_items=40,
        heldout_windows=32,
        checkpoint_every=50,
    ),
    "demo": Preset(
        name="demo",
        description="The default: under 15 minutes on 2 CPU cores. The frontier learns IOI; "
        "distillation carries it to the analogs (at most 5% of its size), not to their scratch "
        "twin; all learn sentiment.",
        seed=0,
        vocab_size=1024,
        tokenizer_documents=20000,
        train_documents=150000,
        heldout_documents=4000,
        seq_len=64,
        batch_size=32,
        frontier=Shape(layers=4, hidden=192, heads=6, intermediate=512),
        frontier_steps=1500,
        frontier_lr=1.2e-3,
        frontier_hold=0.0,
        analogs=(
            AnalogRecipe(
                "analog-s",
                Shape(2, 32, 2, 96),
                method="logit-kl+hidden",
                ce_weight=0.0,
                hidden_weight=1.0,
                lr=2e-2,
                init="teacher-embeddings",
                scratch_baseline=True,
                scratch_lr=1e-2,
                description="The smaller analog, distilled on logits and hidden states from "
                "the frontier's embeddings.",
            ),
            AnalogRecipe(
                "analog-m",
                Shape(2, 40, 2, 160),
                method="logit-kl+hidden",
                ce_weight=0.0,
                hidden_weight=1.0,
                lr=2e-2,
                init="teacher-embeddings",
                description="The larger analog, distilled on logits and hidden states from "
                "the frontier's embeddings.",
            ),
        ),
        distill_steps=1200,
        distill_lr=1e-2,
        teacher_top_k=64,
        eval_items=200,
        heldout_windows=128,
        checkpoint_every=100,
    ),
    "large": Preset(
        name="large",
        description="For a GPU: a bigger frontier trained longer, analogs of 1-5% of it.",
        seed=0,
        vocab_size=1024,
        tokenizer_documents=40000,
        train_documents=600000,
        heldout_documents=8000,
        seq_len=128,
        batch_size=64,
        frontier=Shape(layers=8, hidden=512, heads=8, intermediate=1376),
        frontier_steps=6000,
        frontier_lr=1e-3,
        frontier_hold=0.5,
        analogs=(
            AnalogRecipe(
                "analog-s",
                Shape(2, 96, 4, 256),
                scratch_baseline=True,
                description="The smaller analog, distilled on logits.",
            ),
            AnalogRecipe(
                "analog-m",
                Shape(3, 160, 4, 432),
                method="logit-kl+hidden",
                hidden_weight=0.5,
                description="The larger analog, distilled on logits and hidden states.",
            ),
        ),
        distill_steps=3000,
        distill_lr=3e-3,
        eval_items=500,
        heldout_windows=512,
        checkpoint_every=250,
    ),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A preset by name, with any fields overridden (tests shorten runs this way)."""
    if name not in PRESETS:
        raise FoundryError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
