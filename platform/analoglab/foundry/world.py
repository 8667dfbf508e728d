"""The toy world: the entities, facts and vocabulary the demo corpus is written about.

A :class:`World` is fixed by its seed: who lives where, which city lies in which country,
who works as what. The corpus (:mod:`analoglab.foundry.corpus`) describes this world and the
task sets (:mod:`analoglab.foundry.tasks`) quiz it, so every answer has a ground truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PEOPLE = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "Sarah",
    "Tom",
    "Emma",
    "James",
    "Lucy",
    "Peter",
    "Anna",
    "David",
    "Kate",
    "Paul",
    "Rose",
    "Mark",
    "Jane",
    "Sam",
    "Nora",
    "Leo",
)
PLACES = (
    "market",
    "park",
    "school",
    "station",
    "library",
    "garden",
    "beach",
    "cafe",
    "museum",
    "river",
    "shop",
    "farm",
)
OBJECTS = (
    "apple",
    "book",
    "ball",
    "key",
    "letter",
    "cup",
    "flower",
    "hat",
    "coin",
    "map",
    "ring",
    "bag",
)
COUNTRIES = ("Norland", "Sudia", "Estar", "Wesmar", "Ombra", "Calde")
CITIES = (
    "Varo",
    "Lumen",
    "Tessa",
    "Brill",
    "Doran",
    "Felt",
    "Gosk",
    "Hale",
    "Istra",
    "Jorn",
    "Kell",
    "Lorn",
    "Mirra",
    "Nessa",
    "Orlo",
    "Pell",
    "Quill",
    "Rusk",
    "Sorn",
    "Tamm",
    "Ulla",
    "Vesk",
    "Wend",
    "Yarr",
)
JOBS = ("baker", "doctor", "farmer", "teacher", "painter", "sailor", "singer", "builder")
THINGS = ("soup", "film", "book", "song", "hotel", "bread", "play", "game", "room", "cake")
POSITIVE = (
    "great",
    "wonderful",
    "lovely",
    "excellent",
    "delicious",
    "charming",
    "bright",
    "superb",
)
NEGATIVE = ("awful", "terrible", "bland", "boring", "dirty", "dull", "rude", "horrible")
POSITIVE_VERBS = ("loved", "enjoyed", "liked", "adored")
NEGATIVE_VERBS = ("hated", "disliked", "regretted", "loathed")
NEUTRAL_ADJECTIVES = ("long", "short", "old", "new", "large", "small")
SENTIMENT_WORDS = {"positive": "good", "negative": "bad"}
TRUTH_WORDS = {True: "true", False: "false"}


@dataclass(frozen=True)
class World:
    """The facts of one toy world, all derived from ``seed``."""

    seed: int
    city_country: dict[str, str] = field(default_factory=dict)
    person_city: dict[str, str] = field(default_factory=dict)
    person_job: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, seed: int = 0) -> World:
        rng = random.Random(f"world-{seed}")
        cities = list(CITIES)
        rng.shuffle(cities)
        # Every country gets the same number of cities, so no answer is favoured by base rate.
        city_country = {c: COUNTRIES[i % len(COUNTRIES)] for i, c in enumerate(cities)}
        person_city = {p: rng.choice(CITIES) for p in PEOPLE}
        person_job = {p: rng.choice(JOBS) for p in PEOPLE}
        return cls(seed, city_country, person_city, person_job)

    def other_country(self, city: str, rng: random.Random) -> str:
        """A country the city is *not* in."""
        return rng.choice([c for c in COUNTRIES if c != self.city_country[city]])
