"""Durable writes: one file, or several with one sync of their folder; a failed write leaves
every target as it was and no temporary file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from analoglab import files
from analoglab.files import atomic_write, atomic_write_many


def test_several_files_are_written_whole_with_their_permissions(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("old")
    atomic_write_many(
        [
            (tmp_path / "a.json", "α\n"),
            (tmp_path / "b.json", b"\x00\x01"),
            (tmp_path / "sub/c", ""),
        ],
        perms=0o600,
    )
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "α\n"
    assert (tmp_path / "b.json").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub/c").read_text() == ""
    for name in ("a.json", "b.json", "sub/c"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "sub"]


def test_each_folder_is_synced_once_not_once_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(files, "fsync_dir", lambda folder: synced.append(Path(folder)))
    atomic_write_many([(tmp_path / f"job-{k}.json", "{}") for k in range(16)])
    atomic_write_many([(tmp_path / "x", "1"), (tmp_path / "y/z", "2"), (tmp_path / "w", "3")])
    assert sorted(synced) == sorted([tmp_path, tmp_path, tmp_path / "y"])
    atomic_write(tmp_path / "one", "1")
    assert synced[-1] == tmp_path


def test_a_failed_write_touches_no_target_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("old a")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_many(
            [(tmp_path / "a", "new a"), (tmp_path / "b", "new b"), (tmp_path / "c", "\ud800")]
        )
    assert (tmp_path / "a").read_text() == "old a"
    assert not (tmp_path / "b").exists()
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no temporary file left


def test_a_failed_rename_keeps_those_done_and_cleans_up_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    calls = []

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_many([(tmp_path / k, k) for k in ("a", "b", "c")])
    assert (tmp_path / "a").read_text() == "a"  # renamed before the failure: whole and kept
    assert sorted(os.listdir(tmp_path)) == ["a"]
