"""Extraction: stream prompts through a model and write the activations at hook points to a store.

:func:`extract` reads its source once to plan the store (each prompt's token count, its
labels, the content hash), creates the store (or reopens the unfinished one it matches), then
runs batches of ``batch_size`` prompts through the model's base (no unembedding), capturing
the hook points, and hands each batch's rows to the writer thread while the next batch runs.

Batches are always the same: batch ``k`` is prompts ``[k·B, (k+1)·B)``, encoded as in the
experiments (left padded, each prompt cut to its *last* ``max_tokens`` tokens, position ids
counting real tokens). So a resumed extraction recomputes exactly the rows it would have
written, and the store of an interrupted-and-resumed run equals an uninterrupted one.

Rows per ``positions``:

- ``"all"``: one row per real token, in prompt order then position order;
- ``"last"``: one row per prompt, its last real token;
- ``"mean"``: one row per prompt, the mean over its real tokens (computed in float32).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, get_args

import numpy as np

from analoglab.activations.errors import ActivationError, StoreMismatchError
from analoglab.activations.reporting import TokenMeter
from analoglab.activations.sources import Scan, Source, SourceLike, as_source
from analoglab.activations.store import (
    Compression,
    Identity,
    Layout,
    Positions,
    SourceInfo,
    StoreDtype,
    StoreMeta,
    TokenizerInfo,
    chunk_rows_for,
    now,
    open_for_writing,
)
from analoglab.activations.writer import Batch, ChunkWriter
from analoglab.progress import Reporter, SilentReporter

HookLike = str | float | int
"""A hook point name, a relative depth (a float in [0, 1]) or a block index (an int)."""


@dataclass(frozen=True)
class ExtractionSummary:
    """What one call of :func:`extract` did."""

    path: Path
    rows: int
    prompts: int
    tokens: int
    hooks: list[str]
    positions: str
    dtype: str
    resumed_from: int
    """Prompts already in the store when this call began (0: a fresh store)."""
    already_complete: bool
    seconds: float
    tokens_per_s: float
    """Tokens this call processed per second, the writing included."""
    writer_busy_seconds: float = 0.0
    labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def resolve_hooks(hooks: Sequence[HookLike] | None, site: str, layout: Any) -> list[str]:
    """Hook point names from names, relative depths (floats) and block indices (ints)."""
    from analoglab.interventions import SITES, InterventionError, hook_point

    if site not in SITES:
        raise ActivationError(f"unknown site {site!r}; the sites are {', '.join(SITES)}")
    if hooks is None:
        items: list[HookLike] = list(range(layout.n_layers))
    elif isinstance(hooks, str | float | int):
        items = [hooks]
    else:
        items = list(hooks)
    if not items:
        raise ActivationError("no hooks given; name hook points or give relative depths")
    names: list[str] = []
    try:
        for item in items:
            if isinstance(item, bool):
                raise ActivationError(f"{item!r} is not a hook: give a name, depth or index")
            if isinstance(item, str):
                name = hook_point(item, layout.n_layers).name
            elif isinstance(item, float):
                name = layout.hook_name(site, depth=item)
            elif isinstance(item, int):
                block = item + layout.n_layers if item < 0 else item
                name = layout.hook_name(site, block=block)
            else:
                raise ActivationError(f"{item!r} is not a hook: give a name, depth or index")
            if name not in names:
                names.append(name)
    except InterventionError as exc:
        raise ActivationError(str(exc)) from None
    return names


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    """The tokenizer's class, vocabulary size and a hash of its vocabulary."""
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    text = json.dumps(sorted(vocab.items()), ensure_ascii=False)
    return TokenizerInfo(
        name=type(tokenizer).__name__,
        vocab_size=len(vocab),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def library_versions() -> dict[str, str]:
    import importlib.metadata

    import zarr

    from analoglab.experiments.runner import versions

    return {
        **versions(),
        "zarr": zarr.__version__,
        "dask": importlib.metadata.version("dask"),
        "numpy": np.__version__,
    }


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ActivationError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def extract(
    model: Any,
    source: SourceLike,
    *,
    store: str | Path,
    hooks: Sequence[HookLike] | HookLike | None = None,
    site: str = "hook_resid_post",
    positions: Positions = "all",
    dtype: StoreDtype = "float32",
    batch_size: int = 16,
    max_tokens: int = 128,
    chunk_mb: float = 8.0,
    compression: Compression = "none",
    device: str | None = None,
    progress: Reporter | None = None,
    overwrite: bool = False,
) -> ExtractionSummary:
    """Extract activations of ``model`` on ``source`` into the zarr store at ``store``.

    ``model`` is a :class:`~analoglab.models.loading.LoadedModel` or a name (analog, frontier
    on a lab site here, or a model folder; loaded on ``device``). ``hooks`` are hook point
    names, relative depths (floats) or block indices (ints; negative from the end) at
    ``site``; ``None`` is every block. ``dtype`` is what the store holds. Rerunning the same
    call continues an interrupted store and returns at once on a complete one; a store made
    from other inputs is refused unless ``overwrite``.

    Example::

        from analoglab.activations import Source, extract
        extract("demo-analog-s", Source.task_set("sentiment", n=400), hooks=[0.5, 1.0],
                positions="last", store="sentiment-s")
    """
    _check_choice("positions", positions, get_args(Positions))
    _check_choice("dtype", dtype, get_args(StoreDtype))
    _check_choice("compression", compression, get_args(Compression))
    for what, value in (("batch_size", batch_size), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ActivationError(f"{what} must be a positive integer, not {value!r}")
    if not chunk_mb > 0:
        raise ActivationError(f"chunk_mb must be positive, not {chunk_mb!r}")
    from analoglab.activations.store import resolve_store

    path = resolve_store(store).absolute()
    src = as_source(source)
    loaded = _load(model, device)

    from analoglab.experiments.runner import model_identity
    from analoglab.interventions import layout_of

    layout = layout_of(loaded.model)
    names = resolve_hooks([hooks] if isinstance(hooks, str | float | int) else hooks, site, layout)
    scan = src.scan(loaded.tokenizer, max_tokens)
    per_prompt = scan.lengths if positions == "all" else np.ones_like(scan.lengths)
    offsets = np.concatenate([[0], np.cumsum(per_prompt)]).astype(np.int64)
    rows = int(offsets[-1])
    feature_shapes = {n: list(layout.activation_shape(_site_of(n))) for n in names}
    itemsize = 2 if dtype == "float16" else 4
    widest = max(int(np.prod(s)) for s in feature_shapes.values()) * itemsize
    identity = Identity(
        model=model_identity(loaded),
        tokenizer=tokenizer_info(loaded.tokenizer),
        hooks=names,
        positions=positions,
        dtype=dtype,
        batch_size=batch_size,
        max_tokens=max_tokens,
        source=SourceInfo(
            kind=src.kind,
            description=src.description,
            prompts=scan.n_prompts,
            tokens=scan.tokens,
            sha256=scan.sha256,
            label_names=list(scan.label_names),
            tokens_sha256=scan.tokens_sha256,
        ),
        torch_dtype=str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        device_type=_device_type(loaded.device),
    )
    meta = StoreMeta(
        identity=identity,
        layout=Layout(
            rows=rows,
            chunk_rows=_chunk_rows(rows, widest, chunk_mb, positions, batch_size),
            feature_shapes=feature_shapes,
            compression=compression,
        ),
        model_path=str(loaded.path),
        device=str(loaded.device),
        versions=library_versions(),
        created=now(),
    )
    writable = open_for_writing(path, meta, overwrite=overwrite)
    try:
        return _run(loaded, src, scan, writable, offsets, progress or SilentReporter())
    finally:
        writable.close()


MAX_PROMPT_CHUNK_ROWS = 1024
"""The most rows a chunk holds for ``positions="last"``/``"mean"`` (one row per prompt), so
that progress is committed at least every this many prompts (rounded up to whole batches)."""


def _chunk_rows(rows: int, row_bytes: int, chunk_mb: float, positions: str, batch: int) -> int:
    chunk = chunk_rows_for(rows, row_bytes, chunk_mb)
    if positions != "all":
        cap = max(batch, -(-MAX_PROMPT_CHUNK_ROWS // batch) * batch)
        chunk = max(1, min(chunk, cap, rows))
    return chunk


def _device_type(device: Any) -> str:
    import torch

    return torch.device(device).type


def _site_of(name: str) -> Any:
    from analoglab.interventions import HookPoint

    return HookPoint.parse(name).site


def _load(model: Any, device: str | None) -> Any:
    from analoglab.models.loading import LoadedModel, load_any

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str | Path):
        return load_any(str(model), device=device)
    raise ActivationError(
        f"model must be a LoadedModel (load_analog / load_model) or a model name, not "
        f"{type(model).__name__}"
    )


def _run(
    loaded: Any, src: Source, scan: Scan, writable: Any, offsets: np.ndarray, reporter: Reporter
) -> ExtractionSummary:
    import torch

    from analoglab.experiments.methods.common import encode
    from analoglab.interventions import capture

    meta: StoreMeta = writable.meta
    ident = meta.identity
    n = scan.n_prompts
    first = meta.progress.prompts_done
    summary = dict(
        path=writable.path,
        rows=meta.layout.rows,
        prompts=n,
        tokens=scan.tokens,
        hooks=list(ident.hooks),
        positions=ident.positions,
        dtype=ident.dtype,
        resumed_from=first,
        labels=list(ident.source.label_names),
    )
    rows_done = meta.progress.rows_done
    fits = 0 <= first <= n and int(offsets[-1]) == meta.layout.rows
    if not fits or int(offsets[min(first, n)]) != rows_done:
        raise StoreMismatchError(
            f"{writable.path} does not fit this run's prompts: its layout has "
            f"{meta.layout.rows} rows and {rows_done} written after {first} prompts, this run "
            f"makes {int(offsets[-1])} rows, {int(offsets[min(first, n)])} of them from the first "
            f"{first} prompts; start again with --overwrite"
        )
    if meta.complete:
        return ExtractionSummary(**summary, already_complete=True, seconds=0.0, tokens_per_s=0.0)

    start = time.perf_counter()
    label_code = {name: i for i, name in enumerate(ident.source.label_names)}
    torch_dtype = torch.float16 if ident.dtype == "float16" else torch.float32
    base = loaded.model.base_model
    device = loaded.device
    batch_size, max_tokens, positions = ident.batch_size, ident.max_tokens, ident.positions
    done_tokens = int(scan.lengths[:first].sum())
    meter = TokenMeter(reporter, f"extract {loaded.name}", total=scan.tokens, done=done_tokens)
    # Enough batches may wait to cover one chunk's write, so the forward passes go on while
    # the writer flushes a chunk; memory stays under about two chunks per array.
    batch_rows = max(1, int(offsets[min(first + batch_size, n)] - offsets[first]))
    writer = ChunkWriter(
        writable.arrays,
        chunk_rows=meta.layout.chunk_rows,
        start_row=int(offsets[first]),
        commit=writable.commit,
        max_pending=max(2, min(64, -(-meta.layout.chunk_rows // batch_rows))),
    )
    records = src.records(first)
    writer.start()
    try:
        with torch.inference_mode():
            for p0 in range(first, n, batch_size):
                p1 = min(p0 + batch_size, n)
                chunk = list(islice(records, p1 - p0))
                lengths = scan.lengths[p0:p1]
                texts = [t for t, _ in chunk]
                enc = encode(loaded.tokenizer, texts, max_tokens, device)
                if len(chunk) != p1 - p0 or not np.array_equal(enc.lengths, lengths):
                    raise ActivationError(
                        f"the prompts of {src.description} changed during the extraction "
                        f"(prompts {p0} to {p1 - 1}); start again with --overwrite"
                    )
                try:
                    with capture(loaded.model, ident.hooks) as cache:
                        base(**enc.inputs(), use_cache=False)
                except torch.OutOfMemoryError:
                    raise ActivationError(
                        f"out of memory on {device} in the forward pass of prompts {p0} to "
                        f"{p1 - 1}; lower --batch-size (now {batch_size}) or --max-tokens, and "
                        "rerun to continue"
                    ) from None
                rows = _rows(cache, enc, ident.hooks, positions, torch_dtype)
                counts = lengths if positions == "all" else np.ones_like(lengths)
                rows["prompt_index"] = np.repeat(np.arange(p0, p1, dtype=np.int64), counts)
                if "labels" in writable.arrays:
                    codes = np.array(
                        [label_code.get(lab, -1) if lab is not None else -1 for _, lab in chunk],
                        dtype=np.int32,
                    )
                    rows["labels"] = np.repeat(codes, counts)
                writer.put(Batch(end_prompt=p1, end_row=int(offsets[p1]), rows=rows))
                meter.advance(int(lengths.sum()))
    except BaseException:
        # Keep what is computed: the queued batches are whole, write and commit them.
        with contextlib.suppress(BaseException):  # the first error is the one to report
            writer.finish()
        reporter.close()
        raise
    writer.finish()
    reporter.close()
    seconds = time.perf_counter() - start
    writable.add_seconds(seconds)
    if writer.committed is not None and writer.committed != (n, meta.layout.rows):
        raise ActivationError(
            f"internal error: the writer stopped at {writer.committed}, not at ({n}, "
            f"{meta.layout.rows})"
        )
    if writable.meta.progress.prompts_done != n:
        writable.commit(n, meta.layout.rows)
    writable.mark_complete()
    processed = scan.tokens - done_tokens
    return ExtractionSummary(
        **summary,
        already_complete=False,
        seconds=round(seconds, 3),
        tokens_per_s=round(processed / max(seconds, 1e-9), 1),
        writer_busy_seconds=round(writer.busy_seconds, 3),
    )


def _rows(
    cache: dict[str, Any], enc: Any, hooks: list[str], positions: str, dtype: Any
) -> dict[str, np.ndarray]:
    """The batch's rows for each array: activations, token ids and positions."""
    import torch

    lengths = np.asarray(enc.lengths, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    real = enc.attention_mask.bool()
    full = bool(real.all())  # no padding: every row's tokens are its activations, in order
    for name in hooks:
        x = cache[name]
        if positions == "all":
            values = x.reshape(-1, *x.shape[2:]) if full else x[real]
        elif positions == "last":
            values = x[:, -1]  # left padding: every row's last real token is the last column
        else:
            w = real.to(torch.float32).reshape(*real.shape, *([1] * (x.dim() - 2)))
            values = (x.float() * w).sum(1) / w.sum(1)
        values = values.reshape(values.shape[0], -1)
        converted = values.to(dtype)
        overflow = dtype == torch.float16 and bool(torch.isinf(converted).any())
        if overflow and not bool(torch.isinf(values).any()):
            raise ActivationError(
                f"activations at {name} overflow float16 (|x| > 65504); extract with "
                "dtype float32 (--dtype float32 --overwrite)"
            )
        array = converted.cpu().numpy()
        if positions != "all":
            # On the CPU in the store's dtype a "last" row is a view of the whole captured
            # [batch, tokens, features] tensor: copy (one row per prompt, cheap), so queued
            # and buffered rows keep only their own bytes alive, not whole batches. ("all"
            # rows are every token of the batch: a view costs nothing more.)
            array = np.array(array, copy=True)
        out[f"hooks/{name}"] = array
    if positions == "all":
        ids = enc.input_ids.reshape(-1) if full else enc.input_ids[real]
        out["token_ids"] = ids.cpu().numpy().astype(np.int32)
        out["position"] = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    elif positions == "last":
        out["token_ids"] = enc.input_ids[:, -1].cpu().numpy().astype(np.int32)
        out["position"] = (lengths - 1).astype(np.int32)
    else:
        out["token_ids"] = np.full(len(lengths), -1, dtype=np.int32)
        out["position"] = np.full(len(lengths), -1, dtype=np.int32)
    return out


__all__ = ["ExtractionSummary", "HookLike", "extract", "resolve_hooks", "tokenizer_info"]
