"""Opening a store for analysis: lazily loaded dask arrays and a labelled view per hook.

:func:`open_activations` reads a store's metadata and wraps each of its arrays in a dask
array (one dask chunk per zarr chunk of rows; nothing is read until computed), so the same
code runs on a laptop and on a Dask cluster. ``dataset[hook]`` is a :class:`HookView`: the
``[row, feature]`` activations with their per-row coordinates (``token_id``, ``prompt``,
``position``, ``label``), in the manner of an ``xarray.DataArray`` without needing xarray::

    ds = open_activations("sentiment-s")
    view = ds["blocks.1.hook_resid_post"]      # or ds[1.0]: the hook at relative depth 1.0
    positives = view.sel(label="positive")     # rows labelled positive
    positives.data.mean(axis=0).compute()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analoglab.activations.errors import ActivationError, IncompleteStoreError
from analoglab.activations.matrix import DaskArray, dask_modules
from analoglab.activations.store import StoreMeta, require_meta, resolve_store

COORDS = ("token_id", "prompt", "position", "label")
_COORD_ARRAYS = {
    "token_id": "token_ids",
    "prompt": "prompt_index",
    "position": "position",
    "label": "labels",
}


@dataclass(frozen=True)
class HookView:
    """The activations of one hook point, ``[row, feature]``, with per-row coordinates."""

    hook: str
    data: DaskArray
    coords: Mapping[str, DaskArray]
    label_names: tuple[str, ...] = ()
    feature_shape: tuple[int, ...] = ()
    dims: tuple[str, str] = ("row", "feature")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.data.dtype)
        return dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        rows, width = self.shape
        names = ", ".join(self.coords)
        return (
            f"<HookView {self.hook}: {rows:,} rows × {width} features, {self.dtype} "
            f"({self.nbytes / 2**20:.1f} MiB), {self.data.numblocks[0]} chunks; coords: {names}>"
        )

    def label_codes(self, labels: str | Sequence[str]) -> list[int]:
        """The codes of label names, with an error naming the labels there are."""
        wanted = [labels] if isinstance(labels, str) else list(labels)
        codes = []
        for name in wanted:
            if name not in self.label_names:
                known = ", ".join(self.label_names) or "none: this store is unlabelled"
                raise ActivationError(f"no label {name!r} in this dataset; its labels: {known}")
            codes.append(self.label_names.index(name))
        return codes

    def mask(
        self,
        *,
        label: str | Sequence[str] | None = None,
        prompt: int | Sequence[int] | None = None,
        position: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """Boolean ``[row]`` of the rows matching every condition given (computed: small)."""
        dask, _ = dask_modules()

        conditions: list[Any] = []
        if label is not None:
            if "label" not in self.coords:
                raise ActivationError("this dataset has no labels to select on")
            conditions.append(_isin(self.coords["label"], self.label_codes(label)))
        for key, value in (("prompt", prompt), ("position", position)):
            if value is not None:
                values = [value] if isinstance(value, int) else list(value)
                conditions.append(_isin(self.coords[key], values))
        if not conditions:
            return np.ones(self.n_rows, dtype=bool)
        computed = dask.compute(*conditions)
        out: np.ndarray = np.logical_and.reduce([np.asarray(c, dtype=bool) for c in computed])
        return out

    def sel(
        self,
        *,
        label: str | Sequence[str] | None = None,
        prompt: int | Sequence[int] | None = None,
        position: int | Sequence[int] | None = None,
    ) -> HookView:
        """The rows with these labels / prompts / positions (still lazy)."""
        return self.isel(np.flatnonzero(self.mask(label=label, prompt=prompt, position=position)))

    def isel(self, rows: slice | np.ndarray | Sequence[int]) -> HookView:
        """The rows at these indices (a slice, integers or a boolean mask)."""
        index: Any = rows if isinstance(rows, slice) else np.asarray(rows)
        if isinstance(index, np.ndarray) and index.dtype == bool:
            index = np.flatnonzero(index)
        return HookView(
            self.hook,
            self.data[index],
            {k: v[index] for k, v in self.coords.items()},
            self.label_names,
            self.feature_shape,
        )

    def compute(self) -> np.ndarray:
        """The activations as one NumPy array (only for what fits in memory)."""
        return np.asarray(self.data.compute())

    def labels(self) -> np.ndarray:
        """Each row's label name (``""`` where unlabelled), computed."""
        if "label" not in self.coords:
            raise ActivationError("this dataset has no labels")
        codes = np.asarray(self.coords["label"].compute())
        names = np.array([*self.label_names, ""], dtype=object)
        return names[np.where(codes >= 0, codes, len(self.label_names))]


def _isin(array: DaskArray, values: Sequence[int]) -> DaskArray:
    _, da = dask_modules()

    return da.isin(array, np.asarray(values))


@dataclass(frozen=True)
class ActivationDataset:
    """An opened store: its metadata and lazily loaded arrays (see :func:`open_activations`)."""

    path: Path
    meta: StoreMeta
    arrays: Mapping[str, DaskArray] = field(repr=False)

    @property
    def hooks(self) -> list[str]:
        return list(self.meta.hooks)

    @property
    def n_rows(self) -> int:
        return int(self.arrays["token_ids"].shape[0])

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.meta.label_names)

    @property
    def complete(self) -> bool:
        return self.meta.complete

    @property
    def token_ids(self) -> DaskArray:
        return self.arrays["token_ids"]

    @property
    def prompt_index(self) -> DaskArray:
        return self.arrays["prompt_index"]

    @property
    def position(self) -> DaskArray:
        return self.arrays["position"]

    @property
    def labels(self) -> DaskArray | None:
        return self.arrays.get("labels")

    def coords(self) -> dict[str, DaskArray]:
        return {c: self.arrays[a] for c, a in _COORD_ARRAYS.items() if a in self.arrays}

    def hook_at(self, depth: float) -> str:
        """The dataset's hook at relative depth ``depth`` (0.0 first block, 1.0 last): at the
        block ``depth`` names on this model (as extraction resolves it), else the nearest."""
        from analoglab.interventions import HookPoint, InterventionError, block_at_depth

        try:
            target = block_at_depth(depth, self.meta.identity.model.layers)
        except InterventionError as exc:
            raise ActivationError(str(exc)) from None
        blocks = [HookPoint.parse(h).block for h in self.hooks]
        best = min(range(len(blocks)), key=lambda i: (abs(blocks[i] - target), i))
        return self.hooks[best]

    def __getitem__(self, key: str | float) -> HookView:
        if isinstance(key, float):
            key = self.hook_at(key)
        if key not in self.hooks:
            raise ActivationError(
                f"no hook {key!r} in {self.path.name}; its hooks: {', '.join(self.hooks)}"
            )
        return HookView(
            key,
            self.arrays[f"hooks/{key}"],
            self.coords(),
            self.label_names,
            tuple(self.meta.layout.feature_shapes[key]),
        )

    def __iter__(self) -> Any:
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def __repr__(self) -> str:
        ident = self.meta.identity
        state = "" if self.complete else f", INCOMPLETE: {self.n_rows:,} rows so far"
        return (
            f"<ActivationDataset {self.path.name}: {ident.model.name}, {ident.source.description}, "
            f"positions={ident.positions}, {self.meta.layout.rows:,} rows, dtype {ident.dtype}, "
            f"hooks {', '.join(self.hooks)}; labels {list(self.label_names)}{state}>"
        )

    def tokenizer(self) -> Any:
        """The tokenizer of the model the store was made with (from its recorded folder)."""
        from analoglab.models.loading import quiet_transformers

        folder = self.meta.model_path
        if folder is None or not Path(folder).is_dir():
            raise ActivationError(
                f"the model folder {folder} of this store is not on this machine; pass a "
                "tokenizer yourself"
            )
        from transformers import AutoTokenizer

        quiet_transformers()
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def open_activations(store: str | Path, *, allow_incomplete: bool = False) -> ActivationDataset:
    """Open the store at ``store`` (a path, or a name under ``<data folder>/activations``).

    An unfinished store is refused unless ``allow_incomplete``; then only its committed rows
    are shown.
    """
    _, da = dask_modules()

    path = resolve_store(store).absolute()
    meta = require_meta(path)
    if not meta.complete and not allow_incomplete:
        raise IncompleteStoreError(
            f"{path.name} is incomplete ({meta.progress.prompts_done:,} of "
            f"{meta.identity.source.prompts:,} prompts): rerun the extraction to finish it, "
            "or open it with allow_incomplete=True"
        )
    rows = meta.layout.rows if meta.complete else meta.progress.rows_done
    names = [f"hooks/{h}" for h in meta.hooks] + ["token_ids", "prompt_index", "position"]
    if meta.label_names:
        names.append("labels")
    arrays: dict[str, DaskArray] = {}
    for name in names:
        try:
            arr = da.from_zarr(str(path), component=name)
        except Exception as exc:  # zarr raises several types for a missing or damaged array
            raise ActivationError(f"{path.name} lacks a readable array {name}: {exc}") from exc
        arrays[name] = arr[:rows] if rows < arr.shape[0] else arr
    return ActivationDataset(path, meta, arrays)
