"""Atomic folder writes for the model store and lab sites.

A model folder is filled in a staging folder beside its target and renamed into place only
when complete; an existing folder is replaced only after the new one is there, so readers
never see a half-written model and a failure leaves the old one as it was. Before the swap
every file and folder of the staging folder is ``fsync``-ed, and after it the parent folder,
so a power loss leaves the old folder or the complete new one, never empty files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from analoglab.files import fsync_dir


def staging_folder(target: Path) -> Path:
    """A fresh, empty folder on the same file system as ``target`` (so renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".staging-{target.name}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    return staging


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and every folder's entries to disk."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def swap_into_place(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``, replacing any existing one.

    The staging folder's contents are made durable first, the parent's new entry after."""
    sync_tree(staging)
    if target.exists():
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            old.rename(target)
            raise
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
        fsync_dir(target.parent)


def write_folder(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a staging folder with ``fill``, make it world-readable, swap it into place."""
    staging = staging_folder(target)
    try:
        fill(staging)
        # Published folders are read by other users and by pods: files 0644, folders 0755.
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
