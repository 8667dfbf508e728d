"""Token ids of texts a loaded tokenizer has encoded before, kept for the next job.

A warm worker serves many jobs on one loaded model, and jobs on the same task set read the
same prompts and answers again and again: :func:`encode_texts` keeps each text's ids (per
tokenizer object and per ``add_special_tokens``) in a bounded least-recently-used table, so
a text is run through the tokenizer once. The ids are those the tokenizer gives for the text
alone, which is what a batch of texts encodes to without padding or truncation (a fast
tokenizer encodes each text of a batch on its own), so a cached row is the same whatever
texts it was first encoded with. A tokenizer object is never changed after loading; a new
load is a new object with a table of its own, and a table goes when its tokenizer does.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

#: Texts kept per tokenizer and flag (a task set's prompts are a few thousand; ids are short).
MAX_TEXTS = 1 << 16

_tables: weakref.WeakKeyDictionary[Any, dict[bool, OrderedDict[str, tuple[int, ...]]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool = True
) -> list[list[int]]:
    """Each text's token ids (a new list each), as ``tokenizer(list(texts),
    add_special_tokens=...)["input_ids"]`` gives them; only texts not seen before are
    encoded, in one call."""
    try:
        with _lock:
            table = _tables.setdefault(tokenizer, {}).setdefault(add_special_tokens, OrderedDict())
    except TypeError:  # an object that cannot be weakly referenced: nothing kept
        return [
            list(r)
            for r in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
        ]
    found: dict[str, tuple[int, ...]] = {}
    with _lock:
        for text in texts:
            row = table.get(text)
            if row is not None:
                table.move_to_end(text)
                found[text] = row
    missing = list(dict.fromkeys(t for t in texts if t not in found))
    if missing:
        rows = tokenizer(missing, add_special_tokens=add_special_tokens)["input_ids"]
        with _lock:
            for text, row in zip(missing, rows, strict=True):
                found[text] = table[text] = tuple(row)
            while len(table) > MAX_TEXTS:
                table.popitem(last=False)
    return [list(found[t]) for t in texts]


def forget(tokenizer: Any) -> None:
    """Drop what is kept for ``tokenizer`` (tests; a tokenizer changed in place)."""
    with _lock:
        _tables.pop(tokenizer, None)
