"""Labelled task sets drawn from the toy world: the ground truth later methods are checked on.

Two shapes:

- :class:`ChoiceItem` -- after ``prompt`` a model that has the capability prefers the token(s)
  of ``target`` over those of ``foil`` (``target``/``foil`` start with a space, as they follow
  a word). ``sentiment``, ``ioi``, ``facts`` and ``truth`` are choice sets.
- :class:`ContrastPair` -- two texts alike but for one feature (``sentiment_pairs``: the same
  review written positive and negative), the input of contrastive steering.

``neutral`` is a list of sentiment-free prompts, for measuring side effects.
Sets are drawn with their own seed, apart from the training corpus's.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from analoglab.errors import FoundryError
from analoglab.foundry import corpus
from analoglab.foundry import world as w
from analoglab.foundry.world import World

DEFAULT_TASK_SEED = 12345


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    target: str
    foil: str
    label: str


@dataclass(frozen=True)
class ContrastPair:
    positive: str
    negative: str


@dataclass(frozen=True)
class PatchItem:
    """A clean prompt and a corrupted one of the same token length; ``target``/``foil`` tell
    the clean answer from the corrupted one."""

    clean: str
    corrupt: str
    target: str
    foil: str


@dataclass(frozen=True)
class TaskSet:
    name: str
    description: str
    kind: str  # "choice" | "pairs" | "prompts"
    items: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        items = [asdict(i) if not isinstance(i, str) else i for i in self.items]
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "items": items,
        }


def _sentiment(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    items = []
    for i in range(n):
        r = corpus.review(rng, sentiment=("positive", "negative")[i % 2])
        target = w.SENTIMENT_WORDS[r.sentiment]
        foil = w.SENTIMENT_WORDS["negative" if r.sentiment == "positive" else "positive"]
        items.append(ChoiceItem(r.prompt, " " + target, " " + foil, r.sentiment))
    return items


def _sentiment_pairs(world: World, rng: random.Random, n: int) -> list[ContrastPair]:
    pairs = []
    for _ in range(n):
        thing = rng.choice(w.THINGS)
        pos = corpus.review(rng, "positive", thing).prompt
        neg = corpus.review(rng, "negative", thing).prompt
        pairs.append(ContrastPair(pos, neg))
    return pairs


def _ioi(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    items = []
    for _ in range(n):
        ex = corpus.ioi_example(rng)
        items.append(ChoiceItem(ex.prompt, " " + ex.io, " " + ex.s, f"template-{ex.template}"))
    return items


def _ioi_patch(world: World, rng: random.Random, n: int) -> list[PatchItem]:
    """IOI prompts and their corruption: the second clause's subject is the indirect object
    instead, so the answer turns from the indirect object to the subject (the target is
    right for the clean prompt, the foil for the corrupted one). A corruption that flips the
    answer, with the tokens of the prompt kept but for one name, is what a logit-difference
    recovery reads best (Zhang & Nanda, arXiv 2309.16042); the "ABC" corruption (two other
    names in the first clause) leaves no answer to flip to, so whether a model's answer
    changes under it says little about its IOI."""
    items = []
    for _ in range(n):
        ex = corpus.ioi_example(rng)
        items.append(PatchItem(ex.prompt, ex.with_subject(ex.io), " " + ex.io, " " + ex.s))
    return items


def _facts(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    items = []
    for i in range(n):
        city = w.CITIES[i % len(w.CITIES)] if i < len(w.CITIES) else rng.choice(w.CITIES)
        country = world.city_country[city]
        foil = world.other_country(city, rng)
        items.append(ChoiceItem(f"{city} is a city in", " " + country, " " + foil, country))
    return items


def _truth(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    items = []
    for _ in range(n):
        st = corpus.truth_statement(world, rng)
        target, foil = w.TRUTH_WORDS[st.label], w.TRUTH_WORDS[not st.label]
        items.append(ChoiceItem(st.statement, " " + target, " " + foil, target))
    return items


def _neutral(world: World, rng: random.Random, n: int) -> list[str]:
    return [corpus.filler(rng).removesuffix(" .") for _ in range(n)]


_BUILDERS: dict[str, tuple[str, str, Any]] = {
    "sentiment": ("choice", "Reviews ending 'overall it was': ' good' vs ' bad'.", _sentiment),
    "sentiment_pairs": (
        "pairs",
        "The same review written positive and negative: contrast pairs for steering.",
        _sentiment_pairs,
    ),
    "ioi": ("choice", "Indirect-object sentences: the indirect object vs the subject.", _ioi),
    "ioi_patch": (
        "patch_pairs",
        "IOI prompts and their corruption (the indirect object as the subject), for patching.",
        _ioi_patch,
    ),
    "facts": ("choice", "'<city> is a city in': its country vs another.", _facts),
    "truth": ("choice", "True/false statements, some negated: ' true' vs ' false'.", _truth),
    "neutral": ("prompts", "Sentences without sentiment, for side-effect measures.", _neutral),
}

TASK_SET_NAMES = tuple(_BUILDERS)


def task_set(
    name: str, n: int = 200, seed: int = DEFAULT_TASK_SEED, world: World | None = None
) -> TaskSet:
    """Draw ``n`` items of the named task set; the same arguments give the same items."""
    if name not in _BUILDERS:
        raise FoundryError(
            f"unknown task set {name!r}; known task sets: {', '.join(TASK_SET_NAMES)}"
        )
    if n < 1:
        raise FoundryError(f"a task set needs at least one item, got n={n}")
    kind, description, build = _BUILDERS[name]
    rng = random.Random(f"task-{name}-{seed}")
    return TaskSet(name, description, kind, build(world or World.create(0), rng, n))
