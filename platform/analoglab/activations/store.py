"""The on-disk activation store: one zarr v3 group, its metadata, and its life cycle.

Layout of a store folder (a zarr v3 group)::

    zarr.json                    group metadata; attribute "analoglab_activations" holds
                                 :class:`StoreMeta` (identity, layout, progress, state)
    hooks/<hook name>            [rows, features] float16/float32, one array per hook point
    token_ids                    [rows] int32  (-1 for positions="mean")
    prompt_index                 [rows] int64  the prompt each row comes from
    position                     [rows] int32  the token's position among its prompt's real
                                 tokens (-1 for positions="mean")
    labels                       [rows] int32  index into label_names, -1 unlabelled (only
                                 where the source has labels)

Every array has the same row chunks, so one chunk of rows is one write. A row is a token
(``positions="all"``) or a prompt (``"last"``, ``"mean"``); the number of rows is known before
anything is written, and prompt ``p``'s rows always sit at the same offset.

Life cycle: :func:`open_for_writing` creates the group atomically (built in a hidden sibling
folder, then renamed), or reopens an unfinished store whose :class:`Identity` matches and
refuses one that does not. Progress is committed as ``(prompts_done, rows_done)`` after the
rows are on disk, and ``state`` becomes ``complete`` only at the end. Zarr writes each file
atomically, so a kill at any moment leaves the last commit valid. An advisory lock keeps two
processes from writing one store. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analoglab.activations.errors import ActivationError, StoreMismatchError
from analoglab.experiments.result import ModelIdentity
from analoglab.files import fsync_dir

if TYPE_CHECKING:
    import zarr

ATTR = "analoglab_activations"
FORMAT: Literal[1] = 1
Positions = Literal["all", "last", "mean"]
StoreDtype = Literal["float16", "float32"]
Compression = Literal["none", "zstd"]
AUX_ARRAYS = ("token_ids", "prompt_index", "position")
_AUX_DTYPES = {
    "token_ids": "int32",
    "prompt_index": "int64",
    "position": "int32",
    "labels": "int32",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TokenizerInfo(_Strict):
    name: str
    vocab_size: int
    sha256: str


class SourceInfo(_Strict):
    kind: str
    description: str
    prompts: int
    tokens: int
    sha256: str
    label_names: list[str] = Field(default_factory=list)
    tokens_sha256: str = ""
    """sha256 of every prompt's token ids (after truncation) and counts."""


class Identity(_Strict):
    """What a store was made from; a rerun must match it to continue the store."""

    model: ModelIdentity
    tokenizer: TokenizerInfo
    hooks: list[str]
    positions: Positions
    dtype: StoreDtype
    batch_size: int
    max_tokens: int
    source: SourceInfo
    torch_dtype: str = ""
    """The model's parameter dtype (``float32``, ``bfloat16``, ...)."""
    device_type: str = ""
    """The kind of device the model ran on (``cpu``, ``cuda``, ``mps``)."""


class Layout(_Strict):
    rows: int
    chunk_rows: int
    feature_shapes: dict[str, list[int]]
    compression: Compression = "none"


class Progress(_Strict):
    prompts_done: int = 0
    rows_done: int = 0


class StoreMeta(_Strict):
    format: Literal[1] = FORMAT
    state: Literal["writing", "complete"] = "writing"
    identity: Identity
    layout: Layout
    progress: Progress = Field(default_factory=Progress)
    model_path: str | None = None
    device: str = "cpu"
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = ""
    completed: str | None = None
    extract_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def hooks(self) -> list[str]:
        return self.identity.hooks

    @property
    def label_names(self) -> list[str]:
        return self.identity.source.label_names


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- reading ----------------------------------------------------------------------------------


def read_meta(path: Path) -> StoreMeta | None:
    """The store's metadata; ``None`` where ``path`` holds no activation store."""
    import zarr

    if not (path / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise ActivationError(f"{path} holds damaged zarr metadata: {exc}") from exc
    raw = group.attrs.get(ATTR)
    if raw is None:
        return None
    try:
        return StoreMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ActivationError(
            f"{path} has unreadable activation metadata ({where}: {first['msg']}); it was "
            "written by another version of analoglab or damaged"
        ) from None


def require_meta(path: Path) -> StoreMeta:
    """The store's metadata, or an error saying there is no store at ``path``."""
    meta = read_meta(path)
    if meta is None:
        what = "does not exist" if not path.exists() else "is not an activation store"
        raise ActivationError(f"{path} {what}; make one with `analoglab activations extract`")
    return meta


def mismatches(found: Identity, wanted: Identity) -> list[str]:
    """The fields where two identities differ (the model's display name does not count)."""
    a = found.model_dump(mode="json")
    b = wanted.model_dump(mode="json")
    a["model"].pop("name", None)
    b["model"].pop("name", None)
    out: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key), y.get(key), f"{where}.{key}" if where else key)
        elif x != y:
            out.append(f"{where} {_short(x)} (store) vs {_short(y)} (this run)")

    walk(a, b, "")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- writing ----------------------------------------------------------------------------------


@dataclass
class WritableStore:
    """A store opened for extraction: its arrays, its metadata, and the writer's lock."""

    path: Path
    meta: StoreMeta
    arrays: dict[str, zarr.Array[Any]]
    _group: zarr.Group
    _lock: Any

    def commit(self, prompts_done: int, rows_done: int) -> None:
        """Record that the rows of the first ``prompts_done`` prompts are on disk."""
        self.meta.progress = Progress(prompts_done=prompts_done, rows_done=rows_done)
        self._save()

    def add_seconds(self, seconds: float) -> None:
        self.meta.extract_seconds = round(self.meta.extract_seconds + seconds, 3)

    def mark_complete(self) -> None:
        layout = self.meta.layout
        if self.meta.progress.rows_done != layout.rows:
            raise ActivationError(
                f"internal error: {self.meta.progress.rows_done} of {layout.rows} rows written"
            )
        self.meta.state = "complete"
        self.meta.completed = now()
        self._save()

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None

    def _save(self) -> None:
        try:
            self._group.attrs.update({ATTR: self.meta.model_dump(mode="json")})
        except OSError as exc:  # disk full, permissions: one line, not a traceback
            raise ActivationError(
                f"cannot record progress in {self.path}: {exc.strerror or exc}"
            ) from None


def chunk_rows_for(rows: int, row_bytes: int, chunk_mb: float) -> int:
    """Rows per chunk: about ``chunk_mb`` MiB of the widest array, at least 64 rows."""
    target = int(chunk_mb * 2**20 / max(row_bytes, 1))
    return max(1, min(rows, max(64, target)))


def open_for_writing(path: Path, meta: StoreMeta, *, overwrite: bool = False) -> WritableStore:
    """Create the store at ``path`` or reopen the unfinished store there.

    An existing store whose identity differs is refused (or, with ``overwrite``, deleted and
    made again); a folder or file that is not an activation store is never touched.
    """
    path = path.expanduser().absolute()
    _clean_creations(path)
    found = read_meta(path) if path.exists() else None
    if path.exists() and found is None and not _is_empty_dir(path):
        raise ActivationError(
            f"{path} exists and is not an activation store; choose another --store path"
        )
    if found is not None:
        diffs = mismatches(found.identity, meta.identity)
        if diffs and not overwrite:
            raise StoreMismatchError(
                f"{path} was made from other inputs, so this run cannot continue it: "
                + "; ".join(diffs[:3])
                + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "")
                + "; use another store path, or overwrite it (--overwrite)"
            )
        if overwrite:
            lock = _acquire_lock(path)
            try:  # held through the deletion: no other writer can open it meanwhile
                shutil.rmtree(path)
            except OSError as exc:
                raise ActivationError(f"cannot delete {path}: {exc.strerror or exc}") from None
            finally:
                lock.close()
            found = None
    if found is None:
        _create(path, meta)
    return _reopen(path)


def _reopen(path: Path) -> WritableStore:
    import zarr

    lock = _acquire_lock(path)
    try:
        _clean_partials(path)
        meta = require_meta(path)
        group = zarr.open_group(store=str(path), mode="r+")
        names = [f"hooks/{h}" for h in meta.hooks] + list(AUX_ARRAYS)
        if meta.label_names:
            names.append("labels")
        arrays: dict[str, zarr.Array[Any]] = {}
        for name in names:
            node = group.get(name)
            if not isinstance(node, zarr.Array):
                raise ActivationError(f"{path} lacks its array {name}: the store is damaged")
            arrays[name] = node
    except BaseException:
        lock.close()
        raise
    return WritableStore(path, meta, arrays, group, lock)


def _create(path: Path, meta: StoreMeta) -> None:
    """Build the empty store beside ``path`` and rename it into place (atomic)."""
    import zarr
    from zarr.codecs import ZstdCodec

    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ActivationError(f"cannot create {parent}: {exc.strerror or exc}") from None
    tmp = parent / f".{path.name}.creating-{uuid.uuid4().hex[:12]}"
    layout = meta.layout
    rows, chunk = layout.rows, layout.chunk_rows
    heavy = None if layout.compression == "none" else [ZstdCodec(level=1)]
    lock: _FolderLock | None = None
    try:
        tmp.mkdir()
        lock = _acquire_lock(tmp)  # another process's cleanup leaves a locked folder alone
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        hooks = group.create_group("hooks")
        for hook in meta.hooks:
            width = 1
            for n in layout.feature_shapes[hook]:
                width *= n
            hooks.create_array(
                hook,
                shape=(rows, width),
                chunks=(chunk, width),
                dtype=meta.identity.dtype,
                fill_value=0,
                compressors=heavy,
                dimension_names=("row", "feature"),
                # Activations are never a whole chunk of zeros: skip zarr's check for one.
                config={"write_empty_chunks": True},
            )
        for name in (*AUX_ARRAYS, *(("labels",) if meta.label_names else ())):
            group.create_array(
                name,
                shape=(rows,),
                chunks=(chunk,),
                dtype=_AUX_DTYPES[name],
                fill_value=-1,
                compressors=[ZstdCodec(level=1)],
                dimension_names=("row",),
            )
        group.attrs.update({ATTR: meta.model_dump(mode="json")})
        if path.exists():  # an empty folder the user made for it
            path.rmdir()
        os.rename(tmp, path)
        fsync_dir(parent)  # the new store's name survives a power loss
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ActivationError(f"cannot create the store {path}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.close()


class _FolderLock:
    """An advisory lock on the store folder itself (no file of its own inside the store)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _acquire_lock(path: Path) -> _FolderLock:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer per store is on the user
        return _FolderLock(None)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ActivationError(
            f"another extraction is writing {path}; wait for it, or stop it first"
        ) from None
    return _FolderLock(fd)


def _clean_creations(path: Path) -> None:
    """Remove half-built siblings left by an interrupted creation of ``path``."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.creating-*"):
            try:
                lock = _acquire_lock(tmp)
            except (ActivationError, OSError):
                continue  # locked: another process is building it right now
            try:
                shutil.rmtree(tmp, ignore_errors=True)
            finally:
                lock.close()


def _clean_partials(path: Path) -> None:
    """Remove the temporary files of zarr writes a kill interrupted (under the lock)."""
    for partial in path.rglob("*.partial"):
        with contextlib.suppress(OSError):
            partial.unlink()


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def delete_store(path: Path) -> None:
    """Delete an activation store (only one: any other folder is refused)."""
    require_meta(path)
    lock = _acquire_lock(path)
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise ActivationError(f"cannot delete {path}: {exc.strerror or exc}") from None
    finally:
        lock.close()


# -- describing -------------------------------------------------------------------------------


def default_folder(settings: Any = None) -> Path:
    """Where stores named without a path live: ``<data folder>/activations``."""
    from analoglab.config import get_settings

    return Path((settings or get_settings()).home).expanduser() / "activations"


def resolve_store(name_or_path: str | Path, settings: Any = None) -> Path:
    """A path as given, or a bare name (no separator) under :func:`default_folder`."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or os.sep in text or "/" in text or text.startswith("."):
        return Path(text).expanduser()
    return default_folder(settings) / text


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / f).stat().st_size
    return total


def summary(path: Path, meta: StoreMeta) -> dict[str, Any]:
    """One store in a few keys (what ``analoglab activations ls`` shows)."""
    ident = meta.identity
    return {
        "name": path.name,
        "path": str(path),
        "state": meta.state,
        "model": ident.model.name,
        "hooks": ident.hooks,
        "positions": ident.positions,
        "dtype": ident.dtype,
        "rows": meta.layout.rows,
        "prompts": ident.source.prompts,
        "prompts_done": meta.progress.prompts_done,
        "tokens": ident.source.tokens,
        "source": ident.source.description,
        "bytes_on_disk": disk_bytes(path),
        "created": meta.created,
    }


def describe(path: Path) -> dict[str, Any]:
    """Everything about one store: its summary, full metadata and arrays."""
    import zarr

    meta = require_meta(path)
    group = zarr.open_group(store=str(path), mode="r")
    arrays: dict[str, Any] = {}
    for name, node in sorted(group.members(max_depth=None)):
        if isinstance(node, zarr.Array):
            arrays[name] = {
                "shape": list(node.shape),
                "chunks": list(node.chunks),
                "dtype": str(node.dtype),
            }
    return {**summary(path, meta), "meta": meta.model_dump(mode="json"), "arrays": arrays}


def list_stores(folder: Path) -> list[dict[str, Any]]:
    """The activation stores directly under ``folder`` (damaged ones reported, not fatal)."""
    if not folder.is_dir():
        return []
    found: list[dict[str, Any]] = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            meta = read_meta(child)
        except ActivationError as exc:
            found.append(
                {"name": child.name, "path": str(child), "state": "damaged", "error": str(exc)}
            )
            continue
        if meta is not None:
            found.append(summary(child, meta))
    return found
