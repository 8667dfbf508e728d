"""Token ids of texts a loaded tokenizer has encoded before, kept for the next job.

A warm worker serves many jobs on one loaded model, and jobs on the same task set read the
same prompts and answers again and again: :func:`encode_texts` keeps each text's ids (per
tokenizer object and per ``add_special_tokens``) in a least-recently-used table bounded by
its size (:data:`MAX_BYTES`, counting a text's characters and 4 bytes a token id, the ids
kept as an ``array``), so a text is run through the tokenizer once. The ids are those the
tokenizer gives for the text alone, which is what a batch of texts encodes to without padding
or truncation (a fast tokenizer encodes each text of a batch on its own), so a kept row is the
same whatever texts it was first encoded with. A tokenizer object is never changed after
loading; a new load is a new object with a table of its own, and a table goes when its
tokenizer does.
"""

from __future__ import annotations

import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

#: What one tokenizer's table holds at most: characters of text and 4 bytes a token id (a
#: task set's prompts are a few hundred kilobytes: this keeps dozens of them, little beside
#: the model).
MAX_BYTES = 16 << 20


class _Table:
    """One tokenizer's texts (with one ``add_special_tokens``) and their ids, oldest first."""

    def __init__(self) -> None:
        self.rows: OrderedDict[str, array[int]] = OrderedDict()
        self.size = 0

    def put(self, text: str, row: array[int]) -> None:
        old = self.rows.pop(text, None)
        if old is not None:
            self.size -= len(text) + 4 * len(old)
        self.rows[text] = row
        self.size += len(text) + 4 * len(row)
        while self.size > MAX_BYTES and len(self.rows) > 1:
            gone, ids = self.rows.popitem(last=False)
            self.size -= len(gone) + 4 * len(ids)


_tables: weakref.WeakKeyDictionary[Any, dict[bool, _Table]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool = True
) -> list[list[int]]:
    """Each text's token ids (a new list each), as ``tokenizer(list(texts),
    add_special_tokens=...)["input_ids"]`` gives them; only texts not seen before are
    encoded, in one call."""
    try:
        with _lock:
            table = _tables.setdefault(tokenizer, {}).setdefault(add_special_tokens, _Table())
    except TypeError:  # an object that cannot be weakly referenced: nothing kept
        return [
            list(r)
            for r in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
        ]
    found: dict[str, array[int]] = {}
    with _lock:
        for text in texts:
            row = table.rows.get(text)
            if row is not None:
                table.rows.move_to_end(text)
                found[text] = row
    missing = list(dict.fromkeys(t for t in texts if t not in found))
    if missing:
        rows = tokenizer(missing, add_special_tokens=add_special_tokens)["input_ids"]
        with _lock:
            for text, row in zip(missing, rows, strict=True):
                found[text] = array("i", row)
                table.put(text, found[text])
    return [found[t].tolist() for t in texts]
