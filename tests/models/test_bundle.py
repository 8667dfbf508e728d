"""Release bundles: pack, verify, install atomically; damaged bundles change nothing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.errors import BundleError, ModelNotFoundError
from analoglab.models.bundle import MANIFEST, install, pack
from analoglab.models.catalog import Catalog
from analoglab.models.loading import load_analog


@pytest.fixture
def bundle(tiny_home: Settings, tmp_path: Path) -> Path:
    return pack("tiny-analog-s", tmp_path, tiny_home)


def _rewrite(
    src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> Path:
    """Copy a bundle, replacing (or dropping, with None) members and adding others."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if m.name in change:
                data = change[m.name]
                if data is None:
                    continue
            info = tarfile.TarInfo(m.name)
            info.size = len(data or b"")
            tout.addfile(info, io.BytesIO(data or b""))
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return dst


def _store_listing(s: Settings) -> list[str]:
    return (
        sorted(p.relative_to(s.models_path).as_posix() for p in s.models_path.rglob("*"))
        if s.models_path.exists()
        else []
    )


def test_pack_then_install_elsewhere(bundle: Path, tiny_home: Settings, home: Settings) -> None:
    assert bundle.name == "tiny-analog-s.analog.tar"
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile(f"tiny-analog-s/{MANIFEST}").read())  # type: ignore[union-attr]
    assert {
        "model.safetensors",
        "analog.json",
        "README.md",
        "tokenizer.json",
        "config.json",
    } <= set(manifest["files"])
    path = install(bundle, home)
    assert path == home.models_path / "tiny-analog-s"
    for rel in manifest["files"]:
        assert (path / rel).read_bytes() == (
            tiny_home.models_path / "tiny-analog-s" / rel
        ).read_bytes()
    loaded = load_analog("tiny-analog-s", device="cpu", settings=home)
    assert loaded.card and loaded.card.name == "tiny-analog-s"
    with pytest.raises(BundleError, match="already installed.*--force"):
        install(bundle, home)
    assert install(bundle, home, force=True) == path
    assert not [p for p in home.models_path.iterdir() if p.name.startswith(".")]


def test_damaged_bundle_installs_nothing(bundle: Path, home: Settings, tmp_path: Path) -> None:
    with tarfile.open(bundle) as tar:
        weights = tar.extractfile("tiny-analog-s/model.safetensors").read()  # type: ignore[union-attr]
    flipped = bytes([weights[0] ^ 1]) + weights[1:]
    bad = _rewrite(bundle, tmp_path / "bad.tar", {"tiny-analog-s/model.safetensors": flipped})
    before = _store_listing(home)
    with pytest.raises(BundleError, match="checksum mismatch.*nothing was installed"):
        install(bad, home)
    assert _store_listing(home) == before
    with pytest.raises(ModelNotFoundError):
        Catalog.load(home).analog("tiny-analog-s")


def test_bundle_must_match_its_manifest(bundle: Path, home: Settings, tmp_path: Path) -> None:
    extra = _rewrite(bundle, tmp_path / "extra.tar", {}, {"tiny-analog-s/run.sh": b"echo hi"})
    with pytest.raises(BundleError, match="files not in the manifest: \\['run.sh'\\]"):
        install(extra, home)
    missing = _rewrite(bundle, tmp_path / "missing.tar", {"tiny-analog-s/tokenizer.json": None})
    with pytest.raises(BundleError, match="files missing: \\['tokenizer.json'\\]"):
        install(missing, home)
    no_manifest = _rewrite(bundle, tmp_path / "nm.tar", {f"tiny-analog-s/{MANIFEST}": None})
    with pytest.raises(BundleError, match="no tiny-analog-s/MANIFEST.json"):
        install(no_manifest, home)
    assert _store_listing(home) == []


def test_bundle_cannot_write_outside_the_store(
    bundle: Path, home: Settings, tmp_path: Path
) -> None:
    evil = _rewrite(bundle, tmp_path / "evil.tar", {}, {"tiny-analog-s/../../escape.txt": b"x"})
    with pytest.raises(BundleError, match="outside the folder"):
        install(evil, home)
    assert not (tmp_path / "escape.txt").exists()
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive at all" * 20)
    with pytest.raises(BundleError, match="not a readable bundle"):
        install(tmp_path / "junk.tar", home)
    with pytest.raises(BundleError, match="no bundle file"):
        install(tmp_path / "absent.tar", home)


def test_unknown_analog_cannot_be_packed(tiny_home: Settings, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no analog named 'nope'"):
        pack("nope", tmp_path, tiny_home)
