"""Durable file writes: the one ``atomic_write`` every writer of Analog Lab uses.

A file is written to a uniquely named temporary file in the same folder, flushed and
``fsync``-ed, renamed over its target, and the folder is ``fsync``-ed too, so after a crash or
a power loss a reader sees either the old file or the new one, complete, never a torn or empty
one. Two writers never share a temporary name. A failed write leaves the target untouched and
removes its temporary file. :func:`atomic_write_many` replaces several files the same way
and syncs each folder once for all of them (a batch's results, say), not once a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal, overload

__all__ = ["atomic_write", "atomic_write_many", "atomic_writer", "fsync_dir"]


def fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (a rename, a new file) durable. A no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@overload
def atomic_writer(
    path: str | Path, mode: Literal["wb"] = "wb", *, perms: int | None = None
) -> contextlib.AbstractContextManager[IO[bytes]]: ...


@overload
def atomic_writer(
    path: str | Path, mode: Literal["w"], *, perms: int | None = None
) -> contextlib.AbstractContextManager[IO[str]]: ...


def atomic_writer(
    path: str | Path, mode: str = "wb", *, perms: int | None = None
) -> contextlib.AbstractContextManager[IO[bytes]] | contextlib.AbstractContextManager[IO[str]]:
    """A context manager yielding a file that replaces ``path`` atomically when it closes.

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text). ``perms`` sets the file's permission bits
    before it becomes visible (``0o600`` for secrets); by default they follow the umask as a
    plain ``open`` would. If the body raises, the target is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer mode must be 'wb' or 'w', not {mode!r}")
    return _atomic_writer(Path(path), mode, perms)  # type: ignore[return-value]


@contextlib.contextmanager
def _atomic_writer(path: Path, mode: str, perms: int | None) -> Iterator[IO[bytes] | IO[str]]:
    with _synced_temp(path, mode, perms) as (tmp, handle):
        yield handle
    _replace_all([(tmp, path)])


@contextlib.contextmanager
def _synced_temp(
    path: Path, mode: str, perms: int | None
) -> Iterator[tuple[Path, IO[bytes] | IO[str]]]:
    """A temporary file beside ``path`` and its handle; once the body ends, its data is
    flushed and ``fsync``-ed and the file closed. If the body (or the sync) raises, it is
    removed."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        if perms is not None:
            os.fchmod(fd, perms)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as handle:  # type: ignore[call-overload]
            yield tmp, handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | Path, data: bytes | str, *, perms: int | None = None) -> None:
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8) durably and atomically."""
    atomic_write_many([(path, data)], perms=perms)


def atomic_write_many(
    files: Sequence[tuple[str | Path, bytes | str]], *, perms: int | None = None
) -> None:
    """Replace each ``(path, data)`` as :func:`atomic_write` does, syncing each folder once
    for all of them instead of once a file. Every file is written and synced under its
    temporary name before any is renamed: if a write fails, no target is touched and no
    temporary file is left."""
    written: list[tuple[Path, Path]] = []
    try:
        for target, data in files:
            path = Path(target)
            mode = "w" if isinstance(data, str) else "wb"
            with _synced_temp(path, mode, perms) as (tmp, handle):
                handle.write(data)  # type: ignore[arg-type]
            written.append((tmp, path))
    except BaseException:
        _remove(tmp for tmp, _ in written)
        raise
    _replace_all(written)


def _replace_all(written: Sequence[tuple[Path, Path]]) -> None:
    """Rename each synced temporary file over its target, then sync each folder once; if a
    rename fails, the temporary files not renamed yet are removed (those renamed stay)."""
    renamed: set[Path] = set()
    try:
        for k, (tmp, path) in enumerate(written):
            try:
                os.replace(tmp, path)
            except BaseException:
                _remove(t for t, _ in written[k:])
                raise
            renamed.add(path.parent)
    finally:
        for folder in renamed:
            fsync_dir(folder)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
