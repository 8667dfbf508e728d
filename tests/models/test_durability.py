"""Every writer of the model store and the catalog makes its files durable: each file is
``fsync``-ed under a unique temporary name before it is renamed into place, and so is the
folder that gained the new name (what a power loss would otherwise undo)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.models.card import write_card
from analoglab.models.catalog import Catalog, Lab, save_lab
from analoglab.models.store import write_folder


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The paths of every file and folder ``os.fsync`` was called on (through /proc)."""
    seen: list[Path] = []
    real = os.fsync

    def recording(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    yield seen


def test_a_model_folder_is_durable_before_and_after_the_swap(
    tmp_path: Path, synced: list[Path]
) -> None:
    target = tmp_path / "model"
    write_folder(target, lambda d: ((d / "sub").mkdir(), (d / "sub" / "w.bin").write_bytes(b"w")))
    names = {p.name for p in synced}
    assert "w.bin" in names  # the file's bytes, in the staging folder
    assert tmp_path in synced  # the parent, after the rename


def test_the_catalog_and_the_card_are_written_durably(
    tmp_path: Path, synced: list[Path], tiny_home: Settings
) -> None:
    settings = Settings(home=tmp_path)
    path = save_lab(Lab(id="a-lab", name="A lab"), settings)
    assert path.parent in synced
    assert any(p.name.startswith(".a-lab.json.") for p in synced)  # a unique temporary name
    assert Catalog.load(settings).lab("a-lab").name == "A lab"
    assert not [p for p in path.parent.iterdir() if p.name != "a-lab.json"]

    card = Catalog.load(tiny_home).analogs[0].card
    folder = tmp_path / "analog"
    folder.mkdir()
    synced.clear()
    write_card(folder, card.model_copy(update={"release": card.release.model_copy(
        update={"date": dt.date(2026, 1, 1)})}))
    assert folder in synced and sorted(p.name for p in folder.iterdir()) == [
        "README.md", "analog.json"
    ]
