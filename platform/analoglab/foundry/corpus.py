"""The demo corpus: a seeded generator of documents about the toy world.

Grammar (each document is one short line; ``{A}``/``{B}`` are two distinct people):

- **ioi** -- indirect-object sentences, the subject repeated and the answer the other name:
  ``When {A} and {B} went to the {place}, {B} gave the {object} to {A}.`` (three templates,
  the two names in either order).
- **review** -- sentiment-bearing reviews whose cues all agree, ending in a verdict:
  ``the {thing} was {adj} and {adj} . i {verb} it . overall it was {good|bad} .``
- **fact** -- ``{city} is a city in {country} .``, ``{person} lives in {city} .``,
  ``{person} works as a {job} .``
- **truth** -- true/false statements, with negation:
  ``true or false : {city} is [not] in {country} . answer : {true|false}``
- **filler** -- neutral sentences without sentiment, used as the side-effect set of steering.
- **roll** -- a roll call read twice: ``roll call : {P1} {P2} ... . again : {P1} {P2} ... .``
  The second reading is predictable only by looking back, so these teach copying from
  context (induction), which the frontier builds IOI on.

The same seed always yields the same documents; held-out text uses another seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from analoglab.foundry import world as w
from analoglab.foundry.world import World

IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave the {obj} to",
    "After {A} and {B} arrived at the {place}, {S} handed a {obj} to",
    "{A} and {B} were at the {place}. {S} passed the {obj} to",
)

# Relative frequency of each kind of document in the training corpus.
# Roll calls are what made the demo frontier learn IOI within its time budget: without them
# a 1.9M-parameter frontier was still at chance on IOI after 1,700 steps; with them it passed
# 0.97 by step 1,300 (docs/foundry.md).
DEFAULT_MIX = {
    "ioi": 0.35,
    "review": 0.20,
    "fact": 0.15,
    "truth": 0.08,
    "filler": 0.07,
    "roll": 0.15,
}


@dataclass(frozen=True)
class IOIExample:
    prompt: str  # ends right before the answer
    io: str  # indirect object: the right answer
    s: str  # subject: the repeated name, the wrong answer
    template: int
    first: str  # the names of the first clause, in order
    second: str
    place: str
    obj: str

    def with_subject(self, subject: str) -> str:
        """The same prompt with another subject in the second clause (the first kept)."""
        return IOI_TEMPLATES[self.template].format(
            A=self.first, B=self.second, S=subject, place=self.place, obj=self.obj
        )


def ioi_example(rng: random.Random) -> IOIExample:
    a, b = rng.sample(w.PEOPLE, 2)
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    template = rng.randrange(len(IOI_TEMPLATES))
    place, obj = rng.choice(w.PLACES), rng.choice(w.OBJECTS)
    # a is the indirect object, b the subject (named twice).
    prompt = IOI_TEMPLATES[template].format(A=first, B=second, S=b, place=place, obj=obj)
    return IOIExample(prompt, a, b, template, first, second, place, obj)


@dataclass(frozen=True)
class Review:
    body: str  # everything up to "overall it was"
    sentiment: str  # "positive" | "negative"

    @property
    def prompt(self) -> str:
        return f"{self.body} overall it was"

    @property
    def text(self) -> str:
        return f"{self.prompt} {w.SENTIMENT_WORDS[self.sentiment]} ."


def review(rng: random.Random, sentiment: str | None = None, thing: str | None = None) -> Review:
    sentiment = sentiment or rng.choice(("positive", "negative"))
    adjectives = w.POSITIVE if sentiment == "positive" else w.NEGATIVE
    verbs = w.POSITIVE_VERBS if sentiment == "positive" else w.NEGATIVE_VERBS
    adj1, adj2 = rng.sample(adjectives, 2)
    body = f"the {thing or rng.choice(w.THINGS)} was {adj1} and {adj2} . i {rng.choice(verbs)} it ."
    return Review(body=body, sentiment=sentiment)


def fact_sentence(world: World, rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        city = rng.choice(w.CITIES)
        return f"{city} is a city in {world.city_country[city]} ."
    person = rng.choice(w.PEOPLE)
    if kind == 1:
        return f"{person} lives in {world.person_city[person]} ."
    return f"{person} works as a {world.person_job[person]} ."


@dataclass(frozen=True)
class TruthStatement:
    statement: str  # "true or false : X is [not] in Y . answer :"
    label: bool


def truth_statement(world: World, rng: random.Random) -> TruthStatement:
    city = rng.choice(w.CITIES)
    in_country = rng.random() < 0.5
    country = world.city_country[city] if in_country else world.other_country(city, rng)
    negated = rng.random() < 0.3
    label = in_country != negated
    relation = "is not in" if negated else "is in"
    return TruthStatement(f"true or false : {city} {relation} {country} . answer :", label)


def filler(rng: random.Random) -> str:
    person = rng.choice(w.PEOPLE)
    return (
        f"{person} walked to the {rng.choice(w.PLACES)} with a "
        f"{rng.choice(w.NEUTRAL_ADJECTIVES)} {rng.choice(w.OBJECTS)} ."
    )


def roll_call(rng: random.Random) -> str:
    names = " ".join(rng.sample(w.PEOPLE, rng.randint(3, 6)))
    return f"roll call : {names} . again : {names} ."


def document(world: World, rng: random.Random, kind: str) -> str:
    if kind == "ioi":
        ex = ioi_example(rng)
        return f"{ex.prompt} {ex.io}."
    if kind == "review":
        return review(rng).text
    if kind == "fact":
        return fact_sentence(world, rng)
    if kind == "truth":
        st = truth_statement(world, rng)
        return f"{st.statement} {w.TRUTH_WORDS[st.label]}"
    if kind == "filler":
        return filler(rng)
    if kind == "roll":
        return roll_call(rng)
    raise ValueError(f"unknown document kind {kind!r}")


def generate(
    n_documents: int, seed: int, world: World | None = None, mix: dict[str, float] | None = None
) -> Iterator[str]:
    """Yield ``n_documents`` documents, the same ones for the same arguments."""
    world = world or World.create(0)
    mix = mix or DEFAULT_MIX
    kinds, weights = zip(*sorted(mix.items()), strict=True)
    rng = random.Random(f"corpus-{seed}")
    for _ in range(n_documents):
        yield document(world, rng, rng.choices(kinds, weights)[0])


def corpus_hash(documents: list[str]) -> str:
    """sha256 of the corpus text, recorded in cards as the distillation data's identity."""
    h = hashlib.sha256()
    for doc in documents:
        h.update(doc.encode())
        h.update(b"\n")
    return h.hexdigest()
