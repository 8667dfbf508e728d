"""The writer thread: batches of rows in, whole chunks out, progress committed after each write.

The extraction loop hands each batch's rows to :class:`ChunkWriter` and goes on with the next
forward pass while this thread writes. Rows are buffered until they fill the chunks up to a
chunk boundary, then written in one aligned write per array (a chunk is written once, not
read back and rewritten per batch); the first write after a resume may start mid-chunk.

After every write the writer commits the last *batch boundary* now on disk, i.e.
``(prompts_done, rows_done)`` of the latest batch whose rows are all written. A resumed
extraction restarts at that batch, so rows past the commit (written, but of a batch not yet
complete) are simply written again with the same values.

Memory is bounded: at most ``max_pending`` batches wait in the queue (extraction allows
about one chunk's worth) and the buffer holds less than one chunk plus one batch per array.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from analoglab.activations.errors import ActivationError


def _lower_priority() -> None:
    """Where the OS allows it (Linux), run this thread at a lower priority than the forward
    passes: on a machine whose cores the model keeps busy, writing waits for idle moments
    instead of stalling the model's threads (a full queue then lets it catch up)."""
    import os

    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(current + 10, 19))
        except OSError:  # not permitted here: write at the normal priority
            pass


class RowArray(Protocol):
    """What the writer needs of an array: assignment of a row range (a zarr array)."""

    def __setitem__(self, key: Any, value: Any) -> None: ...


@dataclass(frozen=True)
class Batch:
    """The rows of one batch of prompts, by array name, and where the batch ends."""

    end_prompt: int
    end_row: int
    rows: Mapping[str, np.ndarray]


Commit = Callable[[int, int], None]


class ChunkWriter:
    """Writes batches' rows to arrays on a background thread, in chunk-aligned writes."""

    def __init__(
        self,
        arrays: Mapping[str, RowArray],
        *,
        chunk_rows: int,
        start_row: int,
        commit: Commit,
        max_pending: int = 2,
    ) -> None:
        self._arrays = dict(arrays)
        self._chunk = chunk_rows
        self._commit = commit
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="activation-writer", daemon=True)
        self._buffers: dict[str, list[np.ndarray]] = {name: [] for name in self._arrays}
        self._buffered = 0
        self._boundaries: deque[tuple[int, int]] = deque()
        self.written = start_row
        self.committed: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self.busy_seconds = 0.0

    def start(self) -> None:
        self._thread.start()

    def put(self, batch: Batch) -> None:
        """Queue a batch; blocks while ``max_pending`` batches wait. Raises the writer's
        error if it failed."""
        while True:
            self._raise_error()
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Write everything queued and buffered, commit, and stop the thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            if isinstance(self.error, ActivationError):
                raise self.error
            raise ActivationError(
                f"writing activations failed: {type(self.error).__name__}: {self.error}"
            ) from self.error

    def _run(self) -> None:
        import time

        _lower_priority()
        try:
            while True:
                item = self._queue.get()
                start = time.perf_counter()
                if item is None:
                    if self._buffered:
                        self._flush(self.written + self._buffered)
                    return
                n = self._add(item)
                self._boundaries.append((item.end_prompt, item.end_row))
                if item.end_row != self.written + self._buffered:
                    raise ActivationError(
                        f"internal error: a batch of {n} rows ends at row {item.end_row}, "
                        f"expected {self.written + self._buffered}"
                    )
                aligned = (self.written + self._buffered) // self._chunk * self._chunk
                if aligned > self.written:
                    self._flush(aligned)
                self.busy_seconds += time.perf_counter() - start
        except BaseException as exc:
            self.error = exc
            # Drain so that a producer blocked on a full queue wakes up and sees the error.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def _add(self, batch: Batch) -> int:
        sizes = {len(v) for v in batch.rows.values()}
        if set(batch.rows) != set(self._arrays) or len(sizes) != 1:
            raise ActivationError("internal error: a batch must give every array the same rows")
        for name, rows in batch.rows.items():
            self._buffers[name].append(rows)
        n = sizes.pop()
        self._buffered += n
        return n

    def _flush(self, upto: int) -> None:
        n = upto - self.written
        for name, parts in self._buffers.items():
            data = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self._arrays[name][self.written : upto] = data[:n]
            self._buffers[name] = [data[n:]] if len(data) > n else []
        self.written = upto
        self._buffered -= n
        last = None
        while self._boundaries and self._boundaries[0][1] <= self.written:
            last = self._boundaries.popleft()
        if last is not None:
            self._commit(*last)
            self.committed = last
