"""The token-id cache gives what the tokenizer gives, encodes a text once per tokenizer and
flag, keeps at most its bound, and hands out rows a caller may change."""

from __future__ import annotations

from typing import Any

import pytest

from analoglab.foundry.tokenizer import train_tokenizer
from analoglab.models import tokencache
from analoglab.models.tokencache import encode_texts

DOCS = [
    f"the {w} sat on the {v} near {n} stones"
    for w in ("cat", "dog", "owl")
    for v in ("mat", "log")
    for n in range(30)
]


class Counting:
    """A real tokenizer, counting the texts it is asked to encode."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.texts: list[str] = []

    def __call__(self, texts: list[str], **kw: Any) -> Any:
        self.texts += texts
        return self.tok(texts, **kw)


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer(DOCS, vocab_size=300)


def test_ids_are_the_tokenizers_and_each_text_is_encoded_once(tok: Any) -> None:
    counting = Counting(tok)
    first = ["the cat sat", "an owl", "the cat sat"]
    assert encode_texts(counting, first) == tok(first)["input_ids"]
    assert counting.texts == ["the cat sat", "an owl"]  # a repeat within a call: once
    mixed = ["an owl", "a new text here", "the cat sat"]
    assert encode_texts(counting, mixed) == tok(mixed)["input_ids"]
    assert counting.texts[2:] == ["a new text here"]  # only what was not seen before
    # the flag is part of the key: without special tokens (no BOS) it is encoded again
    plain = encode_texts(counting, ["an owl"], add_special_tokens=False)
    assert plain == tok(["an owl"], add_special_tokens=False)["input_ids"]
    assert plain[0] != encode_texts(counting, ["an owl"])[0]
    assert counting.texts[3:] == ["an owl"]


def test_a_row_handed_out_can_be_changed_without_changing_the_next(tok: Any) -> None:
    counting = Counting(tok)
    row = encode_texts(counting, ["the dog sat"])[0]
    row.append(-1)
    row[0] = -7
    assert encode_texts(counting, ["the dog sat"]) == tok(["the dog sat"])["input_ids"]


def test_the_table_is_bounded_and_forgets_the_least_recently_used(
    tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def size(text: str) -> int:  # what a kept text counts: its characters, 4 bytes an id
        return len(text) + 4 * len(tok([text])["input_ids"][0])

    monkeypatch.setattr(tokencache, "MAX_BYTES", size("a") + size("b") + size("c"))
    counting = Counting(tok)
    encode_texts(counting, ["a", "b", "c"])
    encode_texts(counting, ["a"])  # "a" used again: "b" is now the oldest
    encode_texts(counting, ["d"])  # over the bound: "b" goes
    assert counting.texts == ["a", "b", "c", "d"]
    encode_texts(counting, ["a", "c", "d"])
    assert counting.texts == ["a", "b", "c", "d"]  # all still kept
    encode_texts(counting, ["b"])
    assert counting.texts[-1] == "b"  # encoded again
    # a text larger than the whole bound pushes out all the others, and goes at the next
    big = "the cat sat " * 40
    monkeypatch.setattr(tokencache, "MAX_BYTES", size(big) - 1)
    assert encode_texts(counting, [big, "a"]) == tok([big, "a"])["input_ids"]
    seen = len(counting.texts)
    encode_texts(counting, ["a"])  # kept: the newest
    encode_texts(counting, ["c"])  # pushed out by the big one
    encode_texts(counting, [big])  # gone when "a" came in after it
    assert counting.texts[seen:] == ["c", big]


def test_each_tokenizer_has_its_own_table(tok: Any) -> None:
    one, two = Counting(tok), Counting(tok)
    encode_texts(one, ["the owl sat"])
    encode_texts(two, ["the owl sat"])
    assert one.texts == two.texts == ["the owl sat"]
