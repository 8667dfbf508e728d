"""Where the prompts of an extraction come from: a :class:`Source`, read in a fixed order.

A source is a list of prompts (optionally labelled), a foundry task set, any experiment-spec
data (``Prompts``, ``Choices``, ``Pairs``, ``Labelled``, ``PatchPairs``, ``TaskSetRef``), or a
text file: one prompt per line (blank lines skipped), or JSON Lines (``.jsonl``) of
``{"text": ..., "label": ...}`` with an optional label. Items are read again from the start
whenever asked, so a file is streamed, never held in memory.

:meth:`Source.scan` reads everything once, before a store is written: each prompt's token
count, the set of labels, the sha256 of the content and the sha256 of the token ids after
truncation (what a resumed extraction must match).

Labels per kind: a task set of choices keeps each item's label (``sentiment``: positive /
negative); contrast pairs become two prompts, ``positive`` then ``negative``; patch pairs
``clean`` then ``corrupt``; ``Labelled`` data its integer labels as text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from analoglab.activations.errors import ActivationError
from analoglab.errors import AnalogLabError

MAX_LABELS = 4096
_SCAN_BATCH = 512

Record: TypeAlias = tuple[str, str | None]
"""One prompt and its label (``None``: unlabelled)."""


@dataclass(frozen=True)
class Scan:
    """What a pass over a source found: token counts (after truncation), labels, hash."""

    lengths: np.ndarray  # int64 [n_prompts]
    label_names: tuple[str, ...]
    sha256: str
    tokens_sha256: str = ""
    """The sha256 of every prompt's token ids as the model sees them (cut to its last
    ``max_tokens``) and their counts: another tokenization or truncation changes it."""

    @property
    def n_prompts(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


@dataclass(frozen=True)
class Source:
    """Prompts to extract from, in order; build one with the class methods."""

    kind: str
    """``prompts``, ``task_set`` or ``text_file``."""
    description: str
    items: Sequence[Record] | None = field(default=None, repr=False)
    path: Path | None = None

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def prompts(
        cls, texts: Sequence[str], labels: Sequence[str | int | None] | None = None
    ) -> Source:
        """In-memory prompts, with one label per prompt where given."""
        if isinstance(texts, str):
            raise ActivationError("give prompts as a list of strings, not one string")
        texts = list(texts)
        if labels is not None and len(labels) != len(texts):
            raise ActivationError(f"{len(labels)} labels for {len(texts)} prompts; give one each")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ActivationError(f"prompt {i} is a {type(text).__name__}, not a string")
        labs = [None if v is None else str(v) for v in labels] if labels else [None] * len(texts)
        items = list(zip(texts, labs, strict=True))
        return cls("prompts", f"{len(items)} prompts", items=items)

    @classmethod
    def task_set(cls, name: str, n: int = 200, seed: int | None = None) -> Source:
        """``n`` items of a named foundry task set (``sentiment``, ``ioi``, ...), drawn with
        ``seed``; pairs and patch pairs give two prompts per item."""
        from analoglab.experiments.spec import TaskSetRef
        from analoglab.foundry.tasks import DEFAULT_TASK_SEED, TASK_SET_NAMES

        if name not in TASK_SET_NAMES:
            raise ActivationError(
                f"unknown task set {name!r}; known task sets: {', '.join(TASK_SET_NAMES)}"
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ActivationError(f"a task set needs n >= 1 items, not {n!r}")
        ref = TaskSetRef(name=name, n=n, seed=DEFAULT_TASK_SEED if seed is None else seed)
        return cls.from_data(ref)

    @classmethod
    def from_data(cls, data: Any) -> Source:
        """Any experiment-spec data kind (a ``TaskSetRef`` is drawn first)."""
        from analoglab.experiments.spec import (
            Choices,
            Labelled,
            Pairs,
            PatchPairs,
            Prompts,
            TaskSetRef,
            inline_task_set,
        )

        description = ""
        if isinstance(data, TaskSetRef):
            description = f"task set {data.name} (n={data.n}, seed={data.seed})"
            data = inline_task_set(data)
        items: list[Record]
        if isinstance(data, Prompts):
            items = [(p, None) for p in data.prompts]
        elif isinstance(data, Choices):
            items = [(c.prompt, c.label) for c in data.items]
        elif isinstance(data, Pairs):
            items = [
                x for p in data.pairs for x in ((p.positive, "positive"), (p.negative, "negative"))
            ]
        elif isinstance(data, Labelled):
            items = [(t.text, str(t.label)) for t in data.items]
        elif isinstance(data, PatchPairs):
            items = [x for p in data.items for x in ((p.clean, "clean"), (p.corrupt, "corrupt"))]
        else:
            raise ActivationError(f"cannot read prompts from {type(data).__name__}")
        kind = "task_set" if description else "prompts"
        return cls(kind, description or f"{len(items)} {data.kind}", items=items)

    @classmethod
    def text_file(cls, path: str | Path) -> Source:
        """A text file, one prompt per line, or a ``.jsonl`` file of ``{"text", "label"}``."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise ActivationError(f"no prompts file at {file}")
        return cls("text_file", f"file {file.name}", path=file.resolve())

    # -- reading ------------------------------------------------------------------------------

    def records(self, start: int = 0) -> Iterator[Record]:
        """The prompts and their labels in order, from the ``start``-th."""
        if self.items is not None:
            yield from islice(self.items, start, None)
            return
        yield from islice(self._file_records(), start, None)

    def _file_records(self) -> Iterator[Record]:
        assert self.path is not None
        is_jsonl = self.path.suffix.lower() == ".jsonl"
        try:
            with self.path.open(encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    if not is_jsonl:
                        yield line.rstrip("\r\n"), None
                        continue
                    yield _json_record(line, self.path, number)
        except UnicodeDecodeError as exc:
            raise ActivationError(f"{self.path} is not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ActivationError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def scan(self, tokenizer: Any, max_tokens: int) -> Scan:
        """One pass: each prompt's token count (cut to ``max_tokens``), labels and hash.

        Raises :class:`ActivationError` for an empty source, a prompt with no tokens or too
        many distinct labels, before anything is written.
        """
        digest = hashlib.sha256()
        token_digest = hashlib.sha256()
        lengths: list[np.ndarray] = []
        labels: set[str] = set()
        index = 0
        batch: list[Record] = []

        def flush() -> None:
            nonlocal index
            texts = [t for t, _ in batch]
            try:
                ids = tokenizer(texts)["input_ids"]
            except AnalogLabError:
                raise
            except Exception as exc:  # tokenizers raise many types on bad input
                raise ActivationError(f"the tokenizer cannot encode prompts: {exc}") from exc
            counts = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
            if (counts == 0).any():
                bad = int(np.argmax(counts == 0))
                raise ActivationError(
                    f"prompt {index + bad} ({texts[bad][:60]!r}) encodes to no tokens; drop it"
                )
            for row in ids:
                kept = np.asarray(row[-max_tokens:], dtype=np.int64)
                token_digest.update(np.int64(len(kept)).tobytes() + kept.tobytes())
            lengths.append(np.minimum(counts, max_tokens))
            index += len(batch)
            batch.clear()

        for text, label in self.records():
            digest.update(text.encode("utf-8"))
            digest.update(b"\x1f" + (b"\x00" if label is None else label.encode("utf-8")) + b"\x1e")
            if label is not None:
                labels.add(label)
                if len(labels) > MAX_LABELS:
                    raise ActivationError(
                        f"{self.description} has more than {MAX_LABELS} distinct labels; labels "
                        "are classes (such as positive / negative), not free text"
                    )
            batch.append((text, label))
            if len(batch) >= _SCAN_BATCH:
                flush()
        if batch:
            flush()
        if index == 0:
            raise ActivationError(f"{self.description} holds no prompts")
        return Scan(
            np.concatenate(lengths),
            tuple(sorted(labels)),
            digest.hexdigest(),
            token_digest.hexdigest(),
        )


def _json_record(line: str, path: Path, number: int) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ActivationError(f"{path}:{number} is not JSON: {exc.msg}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise ActivationError(f'{path}:{number} needs an object with a "text" string')
    label = obj.get("label")
    if label is not None and not isinstance(label, str | int):
        raise ActivationError(f"{path}:{number}: a label must be a string or an integer")
    return obj["text"], None if label is None else str(label)


SourceLike: TypeAlias = Source | Sequence[str] | Path | Any
"""A :class:`Source`, a list of prompts, a path to a text file, or experiment-spec data."""


def as_source(value: SourceLike) -> Source:
    """``value`` as a :class:`Source` (see :data:`SourceLike`)."""
    if isinstance(value, Source):
        return value
    if isinstance(value, Path):
        return Source.text_file(value)
    if isinstance(value, str):
        raise ActivationError(
            f"a bare string is ambiguous ({value[:40]!r}): pass Source.text_file(path), "
            "Source.task_set(name, n) or a list of prompts"
        )
    if isinstance(value, Sequence):
        return Source.prompts(list(value))
    from analoglab.foundry.tasks import ChoiceItem, ContrastPair, PatchItem, TaskSet

    if isinstance(value, TaskSet):
        items: list[Record] = []
        for item in value.items:
            if isinstance(item, ChoiceItem):
                items.append((item.prompt, item.label))
            elif isinstance(item, ContrastPair):
                items += [(item.positive, "positive"), (item.negative, "negative")]
            elif isinstance(item, PatchItem):
                items += [(item.clean, "clean"), (item.corrupt, "corrupt")]
            else:
                items.append((str(item), None))
        return Source("task_set", f"task set {value.name} ({len(value.items)} items)", items=items)
    return Source.from_data(value)
