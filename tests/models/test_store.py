"""Atomic folder writes: a failed fill changes nothing; a replacement is whole or absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from analoglab.models.store import write_folder


def test_write_folder_replaces_whole_and_fails_clean(tmp_path: Path) -> None:
    target = tmp_path / "model"
    write_folder(target, lambda d: (d / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"
    assert oct((target / "a.txt").stat().st_mode & 0o777) == "0o644"

    def broken(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder(target, broken)
    assert (target / "a.txt").read_text() == "one"  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left

    write_folder(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
