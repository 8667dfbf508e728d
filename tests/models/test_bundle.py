"""Release bundles: pack, sign, verify, install atomically; damaged, altered or unsigned
bundles change nothing."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analoglab import signing
from analoglab.config import Settings
from analoglab.errors import BundleError, ModelNotFoundError
from analoglab.models.bundle import MANIFEST, SIGNATURE, install, pack
from analoglab.models.catalog import Catalog, save_lab
from analoglab.models.loading import load_analog


@pytest.fixture
def bundle(tiny_home: Settings, tmp_path: Path) -> Path:
    return pack("tiny-analog-s", tmp_path, tiny_home)


@pytest.fixture
def lab_key(tiny_home: Settings) -> str:
    """The tiny lab's public key, as the catalog the foundry wrote records it."""
    key = Catalog.load(tiny_home).lab("tiny-lab").public_key
    assert key is not None and key.startswith("ed25519:")
    return key


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


def test_pack_then_install_elsewhere(
    bundle: Path, tiny_home: Settings, home: Settings, lab_key: str
) -> None:
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
    path = install(bundle, home, public_key=lab_key)
    assert path == home.models_path / "tiny-analog-s"
    for rel in manifest["files"]:
        assert (path / rel).read_bytes() == (
            tiny_home.models_path / "tiny-analog-s" / rel
        ).read_bytes()
    loaded = load_analog("tiny-analog-s", device="cpu", settings=home)
    assert loaded.card and loaded.card.name == "tiny-analog-s"
    with pytest.raises(BundleError, match="already installed.*--force"):
        install(bundle, home, public_key=lab_key)
    assert install(bundle, home, force=True, public_key=lab_key) == path
    assert not [p for p in home.models_path.iterdir() if p.name.startswith(".")]


def test_damaged_bundle_installs_nothing(
    bundle: Path, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    with tarfile.open(bundle) as tar:
        weights = tar.extractfile("tiny-analog-s/model.safetensors").read()  # type: ignore[union-attr]
    flipped = bytes([weights[0] ^ 1]) + weights[1:]
    bad = _rewrite(bundle, tmp_path / "bad.tar", {"tiny-analog-s/model.safetensors": flipped})
    before = _store_listing(home)
    with pytest.raises(BundleError, match="checksum mismatch.*nothing was installed"):
        install(bad, home, public_key=lab_key)
    assert _store_listing(home) == before
    with pytest.raises(ModelNotFoundError):
        Catalog.load(home).analog("tiny-analog-s")


def test_bundle_must_match_its_manifest(
    bundle: Path, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    extra = _rewrite(bundle, tmp_path / "extra.tar", {}, {"tiny-analog-s/run.sh": b"echo hi"})
    with pytest.raises(BundleError, match="files not in the manifest: \\['run.sh'\\]"):
        install(extra, home, public_key=lab_key)
    missing = _rewrite(bundle, tmp_path / "missing.tar", {"tiny-analog-s/tokenizer.json": None})
    with pytest.raises(BundleError, match="files missing: \\['tokenizer.json'\\]"):
        install(missing, home, public_key=lab_key)
    no_manifest = _rewrite(bundle, tmp_path / "nm.tar", {f"tiny-analog-s/{MANIFEST}": None})
    with pytest.raises(BundleError, match="no tiny-analog-s/MANIFEST.json"):
        install(no_manifest, home, public_key=lab_key)
    assert _store_listing(home) == []


def test_bundle_cannot_write_outside_the_store(
    bundle: Path, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    evil = _rewrite(bundle, tmp_path / "evil.tar", {}, {"tiny-analog-s/../../escape.txt": b"x"})
    with pytest.raises(BundleError, match="outside the folder"):
        install(evil, home, public_key=lab_key)
    assert not (tmp_path / "escape.txt").exists()
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive at all" * 20)
    with pytest.raises(BundleError, match="not a readable bundle"):
        install(tmp_path / "junk.tar", home)
    with pytest.raises(BundleError, match="no bundle file"):
        install(tmp_path / "absent.tar", home)


def test_unknown_analog_cannot_be_packed(tiny_home: Settings, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no analog named 'nope'"):
        pack("nope", tmp_path, tiny_home)


def _signed_again(manifest: dict[str, object], key: Ed25519PrivateKey) -> dict[str, bytes | None]:
    """A manifest re-serialised and signed with ``key`` (what a forger can do)."""
    data = json.dumps(manifest, indent=2).encode()
    sig = json.dumps({"key_id": signing.key_id(key), "signature": signing.sign(key, data)})
    return {f"tiny-analog-s/{MANIFEST}": data, f"tiny-analog-s/{SIGNATURE}": sig.encode()}


def _altered(bundle: Path, tmp_path: Path) -> tuple[dict[str, object], bytes]:
    """The bundle's manifest recomputed for a changed README, and the new README."""
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile(f"tiny-analog-s/{MANIFEST}").read())  # type: ignore[union-attr]
    readme = b"# tiny-analog-s\n\nNow with a different story.\n"
    manifest["files"]["README.md"] = {
        "sha256": hashlib.sha256(readme).hexdigest(), "size": len(readme)
    }
    return manifest, readme


def test_a_bundle_altered_with_a_recomputed_manifest_is_refused(
    bundle: Path, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    manifest, readme = _altered(bundle, tmp_path)
    forged = _rewrite(
        bundle,
        tmp_path / "forged.tar",
        {f"tiny-analog-s/{MANIFEST}": json.dumps(manifest, indent=2).encode(),
         "tiny-analog-s/README.md": readme},
    )
    with pytest.raises(BundleError, match="not signed by lab 'tiny-lab'.*altered"):
        install(forged, home, public_key=lab_key)
    # Signed again by whoever altered it: the bundle now carries *their* key; still refused.
    mallory = Ed25519PrivateKey.generate()
    resigned = _rewrite(
        bundle, tmp_path / "resigned.tar",
        {**_signed_again(manifest, mallory), "tiny-analog-s/README.md": readme},
    )
    with pytest.raises(BundleError, match="not signed by lab 'tiny-lab'"):
        install(resigned, home, public_key=lab_key)
    with pytest.raises(BundleError, match="not signed by lab"):
        install(resigned, home, public_key=lab_key, allow_unsigned=True)
    assert _store_listing(home) == []


def test_an_unsigned_bundle_needs_allow_unsigned(
    tiny_home: Settings, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    unsigned = pack("tiny-analog-s", tmp_path, tiny_home, unsigned=True)
    with tarfile.open(unsigned) as tar:
        assert f"tiny-analog-s/{SIGNATURE}" not in tar.getnames()
    with pytest.raises(BundleError, match="is not signed.*--allow-unsigned"):
        install(unsigned, home, public_key=lab_key)
    assert _store_listing(home) == []
    path = install(unsigned, home, allow_unsigned=True)
    assert (path / "analog.json").is_file()


def test_the_key_comes_from_the_installing_catalog(
    bundle: Path, tiny_home: Settings, home: Settings
) -> None:
    # No catalog entry for the lab here, and no --public-key: nothing to check against.
    with pytest.raises(BundleError, match="no public key for lab 'tiny-lab'.*--public-key"):
        install(bundle, home)
    # The hub's catalog records the lab's key: a good signature installs.
    save_lab(Catalog.load(tiny_home).lab("tiny-lab"), home)
    assert install(bundle, home).name == "tiny-analog-s"
    # Another lab's key is not the tiny lab's.
    other = signing.public_key_text(Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="not signed by lab"):
        install(bundle, home, force=True, public_key=other)


def test_the_card_must_match_the_signed_manifest(
    tiny_home: Settings, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    key = signing.load_private_key(tiny_home.lab_sites_path / "tiny-lab" / "signing.key")
    bundle = pack("tiny-analog-s", tmp_path, tiny_home)
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile(f"tiny-analog-s/{MANIFEST}").read())  # type: ignore[union-attr]
    manifest["weights_sha256"] = "0" * 64  # a lab's own mistake, signed: still caught
    bad = _rewrite(bundle, tmp_path / "bad.tar", _signed_again(manifest, key))
    with pytest.raises(BundleError, match="does not match its signed manifest"):
        install(bad, home, public_key=lab_key)
    assert _store_listing(home) == []


def test_packing_without_a_key_is_refused(tiny_home: Settings, tmp_path: Path) -> None:
    elsewhere = Settings(home=tmp_path / "h", model_store=tiny_home.models_path)
    with pytest.raises(BundleError, match="no signing key for lab 'tiny-lab'.*--unsigned"):
        pack("tiny-analog-s", tmp_path, elsewhere)


def test_the_install_command_refuses_in_one_line_and_allows_unsigned(
    tiny_home: Settings, home: Settings, tmp_path: Path, lab_key: str
) -> None:
    from typer.testing import CliRunner

    from analoglab.cli import app

    runner = CliRunner()
    unsigned = pack("tiny-analog-s", tmp_path, tiny_home, unsigned=True)
    res = runner.invoke(app, ["models", "install", str(unsigned), "--public-key", lab_key])
    assert res.exit_code == 1, res.output
    assert len(res.output.strip().splitlines()) == 1 and "is not signed" in res.output
    assert _store_listing(home) == []
    res = runner.invoke(app, ["models", "install", str(unsigned), "--allow-unsigned"])
    assert res.exit_code == 0, res.output
    signed = pack("tiny-analog-s", tmp_path / "s.tar", tiny_home)
    res = runner.invoke(
        app, ["models", "install", str(signed), "--force", "--public-key", lab_key]
    )
    assert res.exit_code == 0 and "installed tiny-analog-s" in res.output
    res = runner.invoke(app, ["models", "install", str(signed), "--public-key", "ed25519:x"])
    assert res.exit_code == 1 and "--public-key" in res.output
