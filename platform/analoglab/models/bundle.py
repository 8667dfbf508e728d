"""Release bundles: how a lab hands an analog to a public hub.

A bundle is one tar archive holding ``<name>/`` (weights, tokenizer, config, card, README)
and ``<name>/MANIFEST.json`` with the sha256 and size of every other file. Installing
extracts into a staging folder beside the store, verifies every checksum, the file list and
the card, and only then renames the folder into place: a bundle that fails leaves the store
exactly as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from analoglab.config import Settings, get_settings
from analoglab.errors import BundleError, CorruptModelError
from analoglab.models.card import read_card
from analoglab.models.catalog import Catalog
from analoglab.models.store import staging_folder, swap_into_place

MANIFEST = "MANIFEST.json"
BUNDLE_VERSION = 1
SUFFIX = ".analog.tar"

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
        if rel == MANIFEST or rel.endswith(".tmp"):
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"bundle_version": BUNDLE_VERSION, "name": name, "files": files}


def pack(name: str, out: Path | None = None, settings: Settings | None = None) -> Path:
    """Write the bundle of analog ``name``; returns the archive's path."""
    settings = settings or get_settings()
    entry = Catalog.load(settings).analog(name)
    manifest = build_manifest(entry.path, name)
    target = Path(out) if out else Path.cwd() / f"{name}{SUFFIX}"
    if target.is_dir():
        target = target / f"{name}{SUFFIX}"
    tmp = target.with_name(target.name + f".{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(f"{name}/{MANIFEST}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for rel in manifest["files"]:
                tar.add(entry.path / rel, arcname=f"{name}/{rel}", recursive=False)
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write bundle {target}: {exc.strerror or exc}") from exc
    return target


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
) -> Path:
    """Verify and install a bundle into the model store; returns the installed folder."""
    settings = settings or get_settings()
    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"no bundle file at {bundle}")
    store = settings.models_path
    store.mkdir(parents=True, exist_ok=True)
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
        try:
            fh = tar.extractfile(members[MANIFEST])
            manifest = json.loads(fh.read() if fh else b"")
            files: dict[str, dict[str, Any]] = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BundleError(f"the manifest in {bundle} is unreadable: {exc}") from exc
        if manifest.get("name") != name:
            raise BundleError(
                f"the manifest names {manifest.get('name')!r}, the folder is {name!r}"
            )
        listed, present = set(files), set(members) - {MANIFEST}
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
        staging = staging_folder(target)
        try:
            for rel, expected in files.items():
                _extract_checked(tar, members[rel], staging / rel, expected, progress)
            card = read_card(staging)
            if card.name != name:
                raise BundleError(f"the card inside names {card.name!r}, the bundle is {name!r}")
            swap_into_place(staging, target)
        except CorruptModelError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise BundleError(f"bundle {bundle} holds no valid analog: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


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
