"""The toy-world corpus and its task sets: deterministic, and every answer true to the world."""

from __future__ import annotations

import re

import pytest

from analoglab.errors import FoundryError
from analoglab.foundry import corpus, tasks
from analoglab.foundry import world as w
from analoglab.foundry.world import World


def test_same_seed_same_documents_other_seed_others() -> None:
    a = list(corpus.generate(500, seed=3))
    assert a == list(corpus.generate(500, seed=3))
    assert a != list(corpus.generate(500, seed=4))
    assert corpus.corpus_hash(a) == corpus.corpus_hash(list(corpus.generate(500, seed=3)))


def test_world_is_fixed_by_its_seed_and_balanced() -> None:
    assert World.create(1) == World.create(1)
    assert World.create(1).city_country != World.create(2).city_country
    counts = [list(World.create(0).city_country.values()).count(c) for c in w.COUNTRIES]
    assert len(set(counts)) == 1  # every country has as many cities


def test_corpus_mixes_every_kind_of_document() -> None:
    docs = list(corpus.generate(2000, seed=0))
    assert any("overall it was good" in d for d in docs)
    assert any("overall it was bad" in d for d in docs)
    assert any(d.startswith("true or false") for d in docs)
    assert any(" is not in " in d for d in docs)
    assert any(" gave the " in d or " handed a " in d or " passed the " in d for d in docs)
    assert any(d.startswith("roll call") for d in docs)


def test_corpus_facts_agree_with_the_world() -> None:
    world = World.create(0)
    seen = 0
    for doc in corpus.generate(3000, seed=1, world=world):
        if m := re.fullmatch(r"(\w+) is a city in (\w+) \.", doc):
            assert world.city_country[m[1]] == m[2]
        elif m := re.fullmatch(r"(\w+) lives in (\w+) \.", doc):
            assert world.person_city[m[1]] == m[2]
        elif m := re.fullmatch(r"(\w+) works as a (\w+) \.", doc):
            assert world.person_job[m[1]] == m[2]
        elif m := re.fullmatch(
            r"true or false : (\w+) (is|is not) in (\w+) \. answer : (\w+)", doc
        ):
            truly_in = world.city_country[m[1]] == m[3]
            assert (truly_in == (m[2] == "is")) == (m[4] == "true")
        else:
            continue
        seen += 1
    assert seen > 500


def test_corpus_ioi_sentences_end_with_the_name_mentioned_once() -> None:
    for doc in corpus.generate(2000, seed=2):
        if doc[0].isupper() and doc.endswith(".") and " to " in doc and "walked" not in doc:
            names = re.findall(r"\b(" + "|".join(w.PEOPLE) + r")\b", doc)
            if len(names) != 4:
                continue
            *context, answer = names
            assert context.count(answer) == 1
            assert len(set(context)) == 2


def test_every_ioi_answer_is_the_indirect_object() -> None:
    items = tasks.task_set("ioi", 300).items
    for it in items:
        io, s = it.target.strip(), it.foil.strip()
        assert io != s and io in w.PEOPLE and s in w.PEOPLE
        names = re.findall(r"\b(" + "|".join(w.PEOPLE) + r")\b", it.prompt)
        assert names.count(io) == 1 and names.count(s) == 2
        assert names[-1] == s  # the subject is the one who gives
    # Both name orders (ABBA and BABA) and every template occur.
    assert {it.label for it in items} == {f"template-{i}" for i in range(3)}
    firsts = {
        re.findall(r"\b(" + "|".join(w.PEOPLE) + r")\b", it.prompt)[0] == it.target.strip()
        for it in items
    }
    assert firsts == {True, False}


def test_fact_and_truth_items_agree_with_the_world() -> None:
    world = World.create(0)
    for it in tasks.task_set("facts", 100).items:
        city = it.prompt.split()[0]
        assert it.target.strip() == world.city_country[city]
        assert it.foil.strip() != world.city_country[city]
    for it in tasks.task_set("truth", 200).items:
        m = re.fullmatch(r"true or false : (\w+) (is|is not) in (\w+) \. answer :", it.prompt)
        assert m
        statement_true = (world.city_country[m[1]] == m[3]) == (m[2] == "is")
        assert it.target == (" true" if statement_true else " false")
        assert {it.target, it.foil} == {" true", " false"}


def test_sentiment_items_and_pairs_carry_their_label() -> None:
    items = tasks.task_set("sentiment", 100).items
    assert {it.label for it in items} == {"positive", "negative"}
    for it in items:
        words = set(it.prompt.split())
        if it.label == "positive":
            assert it.target == " good" and words & set(w.POSITIVE) and not words & set(w.NEGATIVE)
        else:
            assert it.target == " bad" and words & set(w.NEGATIVE) and not words & set(w.POSITIVE)
    for pair in tasks.task_set("sentiment_pairs", 50).items:
        assert set(pair.positive.split()) & set(w.POSITIVE)
        assert set(pair.negative.split()) & set(w.NEGATIVE)
        assert pair.positive.split()[1] == pair.negative.split()[1]  # the same thing reviewed
    for prompt in tasks.task_set("neutral", 50).items:
        assert not set(prompt.split()) & (set(w.POSITIVE) | set(w.NEGATIVE))


def test_task_sets_are_deterministic_and_checked() -> None:
    assert tasks.task_set("ioi", 20, seed=5) == tasks.task_set("ioi", 20, seed=5)
    assert tasks.task_set("ioi", 20, seed=5) != tasks.task_set("ioi", 20, seed=6)
    with pytest.raises(FoundryError, match="unknown task set 'iio'.*ioi"):
        tasks.task_set("iio")
    with pytest.raises(FoundryError, match="at least one"):
        tasks.task_set("ioi", 0)


def test_roll_calls_read_the_same_names_twice() -> None:
    rolls = [d for d in corpus.generate(2000, seed=0) if d.startswith("roll call")]
    assert len(rolls) > 150  # about 15% of the documents
    for doc in rolls:
        m = re.fullmatch(r"roll call : ([\w ]+) \. again : ([\w ]+) \.", doc)
        assert m and m[1] == m[2]
        names = m[1].split()
        assert 3 <= len(names) <= 6 and len(set(names)) == len(names)
        assert set(names) <= set(w.PEOPLE)
