"""Release bundles: how a lab hands an analog to a public hub.

A bundle is one tar archive holding ``<name>/`` (weights, tokenizer, config, card, README),
``<name>/MANIFEST.json`` with the sha256 and size of every other file, the lab, the frontier
and the card's weights hash, and ``<name>/MANIFEST.json.sig``: the lab's Ed25519 signature
over the manifest's exact bytes, with the signing key's id and public key.

A manifest only vouches for the files if someone other than the bundle vouches for the
manifest: installing checks the signature against the lab's public key *from the installing
side's catalog* (or one given explicitly), never against the key the bundle carries. It then
extracts into a staging folder beside the store, verifies every checksum, the file list, the
card and its weights hash, and only then renames the folder into place: a bundle that fails
leaves the store exactly as it was. An unsigned bundle installs only when the caller allows
it (``--allow-unsigned``, for local builds); a mis-signed one never does.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analoglab import signing
from analoglab.config import Settings, get_settings
from analoglab.errors import BundleError, CorruptModelError, ModelNotFoundError
from analoglab.files import atomic_writer
from analoglab.models.card import read_card
from analoglab.models.catalog import Catalog
from analoglab.models.loading import weights_sha256
from analoglab.models.store import staging_folder, swap_into_place

MANIFEST = "MANIFEST.json"
SIGNATURE = MANIFEST + ".sig"
BUNDLE_VERSION = 2
SUFFIX = ".analog.tar"
#: Where a lab site keeps its signing key (``<lab_sites>/<lab>/signing.key``).
SITE_KEY = "signing.key"

Progress = Callable[[int], None]  # bytes done


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(folder: Path, name: str) -> dict[str, Any]:
    """The manifest of a model folder: every file (but the manifest) with sha256 and size."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, SIGNATURE) or rel.endswith(".tmp"):
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"bundle_version": BUNDLE_VERSION, "name": name, "files": files}


def site_key_path(lab: str, settings: Settings) -> Path:
    """Where the lab site of ``lab`` keeps its Ed25519 signing key."""
    return settings.lab_sites_path / lab / SITE_KEY


def pack(
    name: str,
    out: Path | None = None,
    settings: Settings | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
    unsigned: bool = False,
) -> Path:
    """Write the signed bundle of analog ``name``; returns the archive's path.

    ``key`` defaults to the lab site's key (``<lab_sites>/<lab>/signing.key``); without one
    the bundle is refused unless ``unsigned`` (a local build nobody else installs).
    """
    settings = settings or get_settings()
    entry = Catalog.load(settings).analog(name)
    card = entry.card
    if key is None and not unsigned:
        path = site_key_path(card.lab, settings)
        if not path.is_file():
            raise BundleError(
                f"no signing key for lab {card.lab!r} at {path}: pack on the lab site, give "
                "the key (--key), or pack --unsigned for a local build"
            )
        key = signing.load_private_key(path)
    manifest = build_manifest(entry.path, name) | {
        "lab": card.lab,
        "frontier": card.frontier,
        "weights_sha256": card.weights_sha256,
    }
    data = json.dumps(manifest, indent=2).encode()
    signature = None
    if key is not None:
        signature = json.dumps(
            {
                "key_id": signing.key_id(key),
                "public_key": signing.public_key_text(key),
                "signature": signing.sign(key, data),
            },
            indent=2,
        ).encode()
    target = Path(out) if out else Path.cwd() / f"{name}{SUFFIX}"
    if target.is_dir():
        target = target / f"{name}{SUFFIX}"
    try:
        with atomic_writer(target, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
            for member, blob in ((MANIFEST, data), (SIGNATURE, signature)):
                if blob is None:
                    continue
                info = tarfile.TarInfo(f"{name}/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            for rel in manifest["files"]:
                tar.add(entry.path / rel, arcname=f"{name}/{rel}", recursive=False)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {target}: {exc.strerror or exc}") from exc
    return target


def signer(bundle: Path) -> str | None:
    """The key id a bundle says signed it (unchecked: :func:`install` checks), or None."""
    with tarfile.open(bundle, "r:*") as tar:
        for member in tar.getmembers():
            if member.isfile() and PurePosixPath(member.name).name == SIGNATURE:
                try:
                    return str(json.loads(_read(tar, member))["key_id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    return None
    return None


def trusted_key(lab: str, settings: Settings) -> str | None:
    """The lab's public key as this side's catalog records it (None: not recorded)."""
    try:
        return Catalog.load(settings).lab(lab).public_key
    except ModelNotFoundError:
        return None


def check_signature(
    manifest: bytes,
    sig: bytes | None,
    lab: str,
    *,
    public_key: str | None,
    allow_unsigned: bool,
    where: str,
) -> str | None:
    """Check a manifest's signature; the signer's key id, or None for an allowed unsigned one.

    A mis-signed manifest is refused even with ``allow_unsigned``: it was altered.
    """
    if sig is None:
        if allow_unsigned:
            return None
        raise BundleError(
            f"{where} is not signed: nothing vouches for its manifest; install it only if you "
            "built it yourself (--allow-unsigned)"
        )
    try:
        doc = json.loads(sig)
        signature, claimed = str(doc["signature"]), str(doc.get("key_id", ""))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"the signature file in {where} is unreadable: {exc}") from None
    if public_key is None:
        if allow_unsigned:
            return None
        raise BundleError(
            f"cannot check {where}: the catalog records no public key for lab {lab!r}; give "
            "the lab's key with --public-key"
        )
    try:
        signing.verify(public_key, manifest, signature)
    except signing.SignatureError as exc:
        raise BundleError(
            f"{where} is not signed by lab {lab!r} ({exc}; the bundle claims key "
            f"{claimed or '?'}): it was altered or comes from someone else; nothing was installed"
        ) from None
    return signing.key_id(public_key)


def _member_path(member: tarfile.TarInfo, name: str) -> str:
    """The member's path inside the model folder; refuses anything that could escape it."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != name:
        raise BundleError(f"bundle member {member.name!r} lies outside the folder {name}/")
    if not (member.isfile() or member.isdir()):
        raise BundleError(f"bundle member {member.name!r} is not a plain file")
    return PurePosixPath(*path.parts[1:]).as_posix() if len(path.parts) > 1 else ""


def _bundle_name(tar: tarfile.TarFile) -> str:
    tops = {PurePosixPath(m.name).parts[0] for m in tar.getmembers() if m.name.strip("/")}
    if len(tops) != 1:
        raise BundleError(f"a bundle holds exactly one model folder, this one holds {sorted(tops)}")
    return tops.pop()


def install(
    bundle: Path,
    settings: Settings | None = None,
    force: bool = False,
    progress: Progress | None = None,
    *,
    public_key: str | None = None,
    allow_unsigned: bool = False,
) -> Path:
    """Verify and install a bundle into the model store; returns the installed folder.

    The manifest's signature is checked against ``public_key``, else against the lab's key in
    ``settings``' catalog; see the module docstring.
    """
    settings = settings or get_settings()
    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"no bundle file at {bundle}")
    if public_key is not None:
        try:
            signing.parse_public_key(public_key)
        except signing.SignatureError as exc:
            raise BundleError(f"--public-key: {exc}") from None
    store = settings.models_path
    try:
        tar = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{bundle} is not a readable bundle archive: {exc}") from exc
    with tar:
        name = _bundle_name(tar)
        members = {_member_path(m, name): m for m in tar.getmembers() if m.isfile()}
        for m in tar.getmembers():
            _member_path(m, name)
        if MANIFEST not in members:
            raise BundleError(f"{bundle} has no {name}/{MANIFEST}: not an Analog Lab bundle")
        raw = _read(tar, members[MANIFEST])
        sig = _read(tar, members[SIGNATURE]) if SIGNATURE in members else None
        try:
            manifest = json.loads(raw)
            files: dict[str, dict[str, Any]] = manifest["files"]
            lab = str(manifest.get("lab", ""))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BundleError(f"the manifest in {bundle} is unreadable: {exc}") from exc
        check_signature(
            raw,
            sig,
            lab,
            public_key=public_key or (trusted_key(lab, settings) if lab else None),
            allow_unsigned=allow_unsigned,
            where=f"bundle {bundle}",
        )
        if manifest.get("name") != name:
            raise BundleError(
                f"the manifest names {manifest.get('name')!r}, the folder is {name!r}"
            )
        listed, present = set(files), set(members) - {MANIFEST, SIGNATURE}
        if listed != present:
            extra, missing = sorted(present - listed), sorted(listed - present)
            raise BundleError(
                f"bundle {bundle} does not match its manifest"
                + (f"; files not in the manifest: {extra}" if extra else "")
                + (f"; files missing: {missing}" if missing else "")
            )
        target = store / name
        if target.exists() and not force:
            raise BundleError(
                f"analog {name!r} is already installed at {target}; pass --force to replace it"
            )
        store.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(target)
        try:
            for rel, expected in files.items():
                _extract_checked(tar, members[rel], staging / rel, expected, progress)
            card = read_card(staging)
            if card.name != name:
                raise BundleError(f"the card inside names {card.name!r}, the bundle is {name!r}")
            if "weights_sha256" in manifest:
                if card.lab != lab or card.weights_sha256 != manifest["weights_sha256"]:
                    raise BundleError(
                        f"the card in {bundle} does not match its signed manifest (lab or "
                        "weights hash); nothing was installed"
                    )
                if weights_sha256(staging) != card.weights_sha256:
                    raise BundleError(
                        f"the weights in {bundle} do not hash to the card's weights_sha256; "
                        "nothing was installed"
                    )
            swap_into_place(staging, target)
        except CorruptModelError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise BundleError(f"bundle {bundle} holds no valid analog: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int = 16 * 2**20) -> bytes:
    if member.size > limit:
        raise BundleError(f"bundle member {member.name!r} is too large to be a manifest")
    fh = tar.extractfile(member)
    return fh.read() if fh else b""


def _extract_checked(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    dest: Path,
    expected: dict[str, Any],
    progress: Progress | None,
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    if src is None:
        raise BundleError(f"bundle member {member.name!r} cannot be read")
    h, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    if h.hexdigest() != expected.get("sha256") or size != expected.get("size"):
        raise BundleError(
            f"checksum mismatch for {member.name}: the bundle is damaged or was altered; "
            f"nothing was installed"
        )
