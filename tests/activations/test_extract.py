"""Extraction into zarr stores: values, metadata, reruns, refusals and bad input.

The reference is a direct :func:`analoglab.interventions.capture` on the full model (the
extraction runs the model's base, without the unembedding), on the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from analoglab.activations import (
    ActivationError,
    IncompleteStoreError,
    Source,
    StoreMismatchError,
    describe,
    extract,
    open_activations,
)
from analoglab.activations.store import ATTR
from analoglab.experiments.methods.common import encode
from analoglab.interventions import capture
from analoglab.models.loading import LoadedModel

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]


def direct(
    loaded: LoadedModel, texts: list[str], hooks: list[str], batch_size: int, last: bool = False
) -> dict[str, np.ndarray]:
    """Every real token's activations (``last``: each prompt's last token's), captured on the
    full model batch by batch."""
    out: dict[str, list[np.ndarray]] = {h: [] for h in [*hooks, "token_ids"]}
    for i in range(0, len(texts), batch_size):
        enc = encode(loaded.tokenizer, texts[i : i + batch_size], 128, "cpu")
        real = enc.attention_mask.bool()
        with torch.no_grad(), capture(loaded.model, hooks, positions=[-1] if last else None) as c:
            loaded.model(**enc.inputs())
        for h in hooks:
            x = c[h][:, 0] if last else c[h][real]
            out[h].append(x.reshape(len(x), -1).numpy())
        out["token_ids"].append((enc.input_ids[:, -1] if last else enc.input_ids[real]).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def read(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, read with zarr alone."""
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(node[...]) for name, node in group.arrays()} | {
        f"hooks/{name}": np.asarray(node[...]) for name, node in group["hooks"].arrays()
    }


def test_round_trip_equals_a_direct_capture(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    # Hooks by name, by relative depth and by index (-1: the last block) name the same points.
    summary = extract(
        analog,
        prompts,
        hooks=["blocks.0.hook_resid_post", 1.0, "blocks.1.attn.hook_z", -1],
        store=tmp_path / "s",
        batch_size=5,
    )
    assert summary.hooks == HOOKS and not summary.already_complete
    ref = direct(analog, prompts, HOOKS, 5)
    ds = open_activations(tmp_path / "s")
    for hook in HOOKS:
        got = ds[hook].compute()
        assert got.dtype == np.float32 and got.shape == ref[hook].shape
        assert np.array_equal(got, ref[hook]), hook  # identical, not merely close
    assert ds[1.0].hook == "blocks.1.hook_resid_post"
    assert np.array_equal(ds.token_ids.compute(), ref["token_ids"])
    lengths = [len(analog.tokenizer(p)["input_ids"]) for p in prompts]
    assert summary.rows == summary.tokens == sum(lengths) == ds.n_rows
    assert np.array_equal(ds.prompt_index.compute(), np.repeat(np.arange(len(prompts)), lengths))
    assert np.array_equal(ds.position.compute(), np.concatenate([np.arange(n) for n in lengths]))
    assert ds.labels is None and ds.label_names == ()
    # Batching and padding do not change what a prompt's tokens look like.
    alone = direct(analog, prompts[-2:-1], HOOKS[:1], 1)
    rows = ds["blocks.0.hook_resid_post"].sel(prompt=len(prompts) - 2).compute()
    np.testing.assert_allclose(rows, alone["blocks.0.hook_resid_post"], atol=1e-5)
    # Unpadded batches (one prompt each) take the path without a mask, and agree too.
    extract(analog, prompts[:6], hooks=HOOKS, store=tmp_path / "one", batch_size=1)
    ref_one = direct(analog, prompts[:6], HOOKS, 1)
    one = open_activations(tmp_path / "one")
    assert all(np.array_equal(one[h].compute(), ref_one[h]) for h in HOOKS)
    assert np.array_equal(one.token_ids.compute(), ref_one["token_ids"])


def test_last_and_mean_positions_and_float16(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    hooks = HOOKS[:2]
    extract(analog, prompts, hooks=hooks, positions="last", store=tmp_path / "last", batch_size=8)
    ref = direct(analog, prompts, hooks, 8, last=True)
    last = open_activations(tmp_path / "last")
    assert last.n_rows == len(prompts)
    assert np.array_equal(last[hooks[1]].compute(), ref[hooks[1]])
    assert np.array_equal(last.token_ids.compute(), ref["token_ids"])
    assert np.array_equal(last.prompt_index.compute(), np.arange(len(prompts)))

    extract(analog, prompts, hooks=hooks, positions="mean", store=tmp_path / "mean", batch_size=8)
    every = direct(analog, prompts, hooks, 8)
    lengths = [len(analog.tokenizer(p)["input_ids"]) for p in prompts]
    index = np.repeat(np.arange(len(prompts)), lengths)
    means = np.stack([every[hooks[0]][index == i].mean(0) for i in range(len(prompts))])
    mean = open_activations(tmp_path / "mean")
    np.testing.assert_allclose(mean[hooks[0]].compute(), means, rtol=1e-5, atol=1e-6)
    assert (mean.token_ids.compute() == -1).all() and (mean.position.compute() == -1).all()

    extract(analog, prompts, hooks=hooks, store=tmp_path / "f16", dtype="float16", batch_size=5)
    half = open_activations(tmp_path / "f16")[hooks[0]].compute()
    assert half.dtype == np.float16
    assert np.array_equal(half, direct(analog, prompts, hooks, 5)[hooks[0]].astype(np.float16))


def test_metadata_and_labels_of_a_task_set(
    tiny_models: dict[str, LoadedModel], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    source = Source.task_set("sentiment", n=12, seed=3)
    extract(analog, source, hooks=[0.5], positions="last", store=tmp_path / "s", batch_size=4)
    info = describe(tmp_path / "s")
    meta = info["meta"]
    ident = meta["identity"]
    assert info["state"] == "complete" and meta["completed"]
    assert ident["model"]["weights_sha256"] == analog.weights_sha256
    assert ident["model"]["name"] == analog.name and ident["model"]["layers"] == 2
    assert ident["tokenizer"]["vocab_size"] == len(analog.tokenizer.get_vocab())
    assert ident["hooks"] == ["blocks.1.hook_resid_post"]  # depth 0.5 of 2 blocks rounds up
    assert ident["positions"] == "last" and ident["dtype"] == "float32"
    assert ident["source"]["description"] == "task set sentiment (n=12, seed=3)"
    assert ident["source"]["label_names"] == ["negative", "positive"]
    assert {"torch", "transformers", "zarr", "dask", "numpy", "analoglab"} <= set(meta["versions"])
    assert info["arrays"]["hooks/blocks.1.hook_resid_post"]["shape"] == [12, 24]
    from analoglab.foundry.tasks import task_set

    items = task_set("sentiment", 12, seed=3).items
    ds = open_activations(tmp_path / "s")
    view = ds["blocks.1.hook_resid_post"]
    assert list(view.labels()) == [i.label for i in items]
    assert view.sel(label="positive").n_rows == sum(i.label == "positive" for i in items)
    other = Source.task_set("sentiment", n=12, seed=4).scan(analog.tokenizer, 128)
    assert other.sha256 != ident["source"]["sha256"]
    again = Source.task_set("sentiment", n=12, seed=3).scan(analog.tokenizer, 128)
    assert again.sha256 == ident["source"]["sha256"]


def test_text_and_jsonl_files(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(p + ("\n" if i % 3 == 0 else "") for i, p in enumerate(prompts)))
    extract(analog, text, hooks=[1.0], store=tmp_path / "t", batch_size=5)
    extract(analog, prompts, hooks=[1.0], store=tmp_path / "l", batch_size=5)
    assert np.array_equal(
        open_activations(tmp_path / "t")[1.0].compute(),
        open_activations(tmp_path / "l")[1.0].compute(),
    )
    lines = [json.dumps({"text": p, "label": ["x", "y"][i % 2]}) for i, p in enumerate(prompts)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    extract(analog, Source.text_file(tmp_path / "p.jsonl"), hooks=[1.0], store=tmp_path / "j")
    ds = open_activations(tmp_path / "j")
    assert ds.label_names == ("x", "y")
    assert ds[1.0].labels()[0] == "x"


def test_a_rerun_of_a_complete_store_does_nothing(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    first = extract(analog, prompts, hooks=[1.0], store=tmp_path / "s")
    chunk = next((tmp_path / "s" / "hooks").rglob("c/0/0"))
    stamp = chunk.stat().st_mtime_ns
    again = extract(analog, prompts, hooks=[1.0], store=tmp_path / "s")
    assert again.already_complete and again.rows == first.rows
    assert chunk.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "change",
    [
        {"hooks": [0.0]},
        {"positions": "last"},
        {"dtype": "float16"},
        {"batch_size": 3},
        {"max_tokens": 4},
        {"model": "analog_m"},
        {"prompts": "fewer"},
    ],
)
def test_a_mismatched_rerun_is_refused_and_leaves_the_store(
    tiny_models: dict[str, LoadedModel],
    prompts: list[str],
    tmp_path: Path,
    change: dict[str, Any],
) -> None:
    analog = tiny_models["analog"]
    base: dict[str, Any] = {"hooks": [1.0], "batch_size": 5}
    extract(analog, prompts, store=tmp_path / "s", **base)
    before = read(tmp_path / "s")
    meta_before = (tmp_path / "s" / "zarr.json").read_bytes()
    model = tiny_models[change.pop("model", "analog")]
    data = prompts[:-1] if change.pop("prompts", None) else prompts
    with pytest.raises(StoreMismatchError, match="made from other inputs") as info:
        extract(model, data, store=tmp_path / "s", **(base | change))
    assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
    assert (tmp_path / "s" / "zarr.json").read_bytes() == meta_before
    after = read(tmp_path / "s")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_overwrite_replaces_a_store_but_never_a_foreign_folder(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    extract(analog, prompts, hooks=[1.0], store=tmp_path / "s")
    extract(analog, prompts, hooks=[0.0], store=tmp_path / "s", overwrite=True)
    assert open_activations(tmp_path / "s").hooks == ["blocks.0.hook_resid_post"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ActivationError, match="not an activation store"):
        extract(analog, prompts, hooks=[1.0], store=foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hooks": ["blocks.9.hook_resid_post"]}, "out of range"),
        ({"hooks": [1.5]}, "outside \\[0, 1\\]"),
        ({"hooks": ["resid"]}, "not a hook point name"),
        ({"hooks": []}, "no hooks"),
        ({"positions": "first"}, "positions must be one of"),
        ({"dtype": "bfloat16"}, "dtype must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"source": []}, "holds no prompts"),
        ({"source": "some prompt"}, "ambiguous"),
        ({"source": Path("missing.txt")}, "no prompts file"),
        ({"source": "blank"}, "holds no prompts"),
        ({"source": "bad-json"}, "p.jsonl:2 is not JSON"),
        ({"source": "task"}, "unknown task set 'sentimental'"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    tiny_models: dict[str, LoadedModel],
    prompts: list[str],
    tmp_path: Path,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "p.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    source: Any = kwargs.pop("source", prompts)
    if source == "blank":
        source = tmp_path / "blank.txt"
    elif source == "bad-json":
        source = Source.text_file(tmp_path / "p.jsonl")
    elif source == "task":
        with pytest.raises(ActivationError, match=message):
            Source.task_set("sentimental")
        return
    store = tmp_path / "out" / "s"
    with pytest.raises(ActivationError, match=message) as info:
        extract(tiny_models["analog"], source, store=store, **({"hooks": [1.0]} | kwargs))
    assert "\n" not in str(info.value)
    assert not store.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_incomplete_store_is_refused_by_open_unless_asked(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    class Stop(Exception):
        pass

    class StopAfter:
        """A progress reporter that interrupts the extraction after ``n`` batches."""

        def __init__(self, n: int) -> None:
            self.n = n

        def note(self, message: str) -> None:
            pass

        def steps(self, description: str, total: int, done: int = 0) -> Any:
            calls = iter(range(10_000))

            def update(done: int, numbers: dict[str, float]) -> None:
                if next(calls) + 1 >= self.n:
                    raise Stop

            return update

        def close(self) -> None:
            pass

    analog = tiny_models["analog"]
    args: dict[str, Any] = {"hooks": HOOKS, "batch_size": 3, "chunk_mb": 0.001}
    with pytest.raises(Stop):
        extract(analog, prompts, store=tmp_path / "s", progress=StopAfter(4), **args)
    meta = zarr.open_group(str(tmp_path / "s"), mode="r").attrs[ATTR]
    assert meta["state"] == "writing"
    # The batches computed before the interruption were written and committed.
    assert meta["progress"]["prompts_done"] == 12
    with pytest.raises(IncompleteStoreError, match="incomplete \\(12 of 33 prompts\\)"):
        open_activations(tmp_path / "s")
    partial = open_activations(tmp_path / "s", allow_incomplete=True)
    assert partial.n_rows == meta["progress"]["rows_done"] and "INCOMPLETE" in repr(partial)
    resumed = extract(analog, prompts, store=tmp_path / "s", **args)
    assert resumed.resumed_from == 12 and not resumed.already_complete
    extract(analog, prompts, store=tmp_path / "whole", **args)
    got, want = read(tmp_path / "s"), read(tmp_path / "whole")
    assert set(got) == set(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    early = want[f"hooks/{HOOKS[2]}"][: partial.n_rows]
    assert np.array_equal(partial["blocks.1.attn.hook_z"].compute(), early)


@pytest.mark.parametrize("positions", ["last", "mean"])
def test_rows_own_their_data_not_the_captured_batch(positions: str) -> None:
    """A row array must not be a view of the whole captured [B, T, D] tensor: queued and
    buffered rows would keep whole batches alive (memory ~T times the bound)."""
    from types import SimpleNamespace

    from analoglab.activations.extraction import _rows

    x = torch.randn(4, 50, 32)
    mask = torch.ones(4, 50, dtype=torch.long)
    mask[0, :10] = 0  # one padded prompt
    enc = SimpleNamespace(
        lengths=mask.sum(1).numpy(),
        attention_mask=mask,
        input_ids=torch.zeros(4, 50, dtype=torch.long),
    )
    rows = _rows({"h": x}, enc, ["h"], positions, torch.float32)
    values = rows["hooks/h"]
    assert values.flags.owndata and values.base is None
    assert not np.shares_memory(values, x.numpy())


def test_last_and_mean_chunks_are_capped_so_progress_is_committed() -> None:
    from analoglab.activations.extraction import MAX_PROMPT_CHUNK_ROWS, _chunk_rows

    # 64 features of float32: 8 MiB would be 32768 prompts between commits.
    for positions in ("last", "mean"):
        chunk = _chunk_rows(100_000, 256, 8.0, positions, 16)
        assert chunk % 16 == 0 and chunk <= MAX_PROMPT_CHUNK_ROWS
    assert _chunk_rows(100_000, 256, 8.0, "all", 16) == 32768
    assert _chunk_rows(10, 256, 8.0, "last", 16) == 10


def test_a_rerun_with_the_model_in_another_dtype_is_refused(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    import copy
    import dataclasses

    analog = tiny_models["analog"]
    extract(analog, prompts[:6], hooks=[1.0], store=tmp_path / "s")
    wide = dataclasses.replace(analog, model=copy.deepcopy(analog.model).double())
    with pytest.raises(StoreMismatchError, match="torch_dtype 'float32' \\(store\\) vs 'float64'"):
        extract(wide, prompts[:6], hooks=[1.0], store=tmp_path / "s")


def test_the_source_identity_hashes_the_token_ids_after_truncation(
    tiny_models: dict[str, LoadedModel], prompts: list[str]
) -> None:
    tok = tiny_models["analog"].tokenizer

    class Shifted:
        """The same counts, other ids (as another tokenization or truncation gives)."""

        def __call__(self, texts: list[str]) -> dict[str, Any]:
            return {"input_ids": [[i + 1 for i in r] for r in tok(texts)["input_ids"]]}

    source = Source.prompts(prompts)
    plain, shifted = source.scan(tok, 128), source.scan(Shifted(), 128)
    assert np.array_equal(plain.lengths, shifted.lengths) and plain.sha256 == shifted.sha256
    assert plain.tokens_sha256 != shifted.tokens_sha256
    # The same counts after truncation, but other tokens kept: max_tokens=3 vs the last 3.
    long_ = Source.prompts(["one two three four five six", "a b c d e f g"])
    assert long_.scan(tok, 3).tokens_sha256 != long_.scan(tok, 4).tokens_sha256
    assert long_.scan(tok, 3).tokens_sha256 == long_.scan(tok, 3).tokens_sha256


def test_a_resume_whose_offsets_do_not_fit_the_store_is_refused(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    analog = tiny_models["analog"]
    extract(analog, prompts, hooks=[1.0], batch_size=5, store=tmp_path / "s")
    group = zarr.open_group(str(tmp_path / "s"), mode="r+")
    meta = dict(group.attrs[ATTR])
    meta["state"] = "writing"
    meta["progress"] = {"prompts_done": 5, "rows_done": 7}  # not prompt 5's offset
    group.attrs.update({ATTR: meta})
    with pytest.raises(StoreMismatchError, match="does not fit this run's prompts"):
        extract(analog, prompts, hooks=[1.0], batch_size=5, store=tmp_path / "s")


def test_a_creation_folder_another_process_holds_is_never_deleted(
    tiny_models: dict[str, LoadedModel], prompts: list[str], tmp_path: Path
) -> None:
    from analoglab.activations.store import _acquire_lock

    live = tmp_path / ".s.creating-live0000000"
    stale = tmp_path / ".s.creating-stale000000"
    live.mkdir()
    stale.mkdir()
    lock = _acquire_lock(live)  # as a process building the store holds it
    try:
        extract(tiny_models["analog"], prompts[:4], hooks=[1.0], store=tmp_path / "s")
        assert live.is_dir() and not stale.exists()
    finally:
        lock.close()


def test_overwrite_holds_the_lock_through_the_deletion(
    tiny_models: dict[str, LoadedModel],
    prompts: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fcntl
    import os
    import shutil

    from analoglab.activations import store as store_module

    analog = tiny_models["analog"]
    extract(analog, prompts[:4], hooks=[1.0], store=tmp_path / "s")
    seen: list[bool] = []
    real_rmtree = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == (tmp_path / "s").absolute():
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)  # nobody held it
            except OSError:
                seen.append(True)
            finally:
                os.close(fd)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(store_module.shutil, "rmtree", rmtree)
    extract(analog, prompts[:4], hooks=[0.0], store=tmp_path / "s", overwrite=True)
    assert seen == [True]


def test_a_failed_progress_write_is_one_clear_error(
    tiny_models: dict[str, LoadedModel],
    prompts: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from analoglab.activations.store import WritableStore

    def full(self: Any, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(WritableStore, "commit", full)
    with pytest.raises(ActivationError, match="No space left on device") as info:
        extract(tiny_models["analog"], prompts[:4], hooks=[1.0], store=tmp_path / "s")
    assert "\n" not in str(info.value)


def test_out_of_memory_in_the_forward_pass_is_one_clear_error(
    tiny_models: dict[str, LoadedModel],
    prompts: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analog = tiny_models["analog"]

    def oom(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(analog.model.base_model, "forward", oom)
    with pytest.raises(ActivationError, match="lower --batch-size") as info:
        extract(analog, prompts[:4], hooks=[1.0], store=tmp_path / "s")
    assert "\n" not in str(info.value)
