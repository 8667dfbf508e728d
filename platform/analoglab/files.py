"""Durable file writes: the one ``atomic_write`` every writer of Analog Lab uses.

A file is written to a uniquely named temporary file in the same folder, flushed and
``fsync``-ed, renamed over its target, and the folder is ``fsync``-ed too, so after a crash or
a power loss a reader sees either the old file or the new one, complete, never a torn or empty
one. Two writers never share a temporary name. A failed write leaves the target untouched and
removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal, overload

__all__ = ["atomic_write", "atomic_writer", "fsync_dir"]


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
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)


def atomic_write(path: str | Path, data: bytes | str, *, perms: int | None = None) -> None:
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8) durably and atomically."""
    if isinstance(data, str):
        with atomic_writer(path, "w", perms=perms) as text:
            text.write(data)
    else:
        with atomic_writer(path, "wb", perms=perms) as binary:
            binary.write(data)
