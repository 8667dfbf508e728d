"""Activation datasets: extraction throughput, out-of-core analysis throughput, peak memory.

    python benchmarks/activations.py [--device cpu|cuda] [--shape demo|large] [--batch 16]
        [--seq 128] [--batches 24] [--rounds 3] [--dtype float16] [--analysis-mb 256]
        [--memory-mb 128] [--workers 1,2] [--parts extract,analysis,memory] [--json OUT]

1. **extract**: tokens/s of ``extract()`` (every block's ``hook_resid_post``, every token,
   written to a zarr store, the scan, tokenization and metadata included) against the bare
   forward pass of the same model's base on the same, pre-encoded batches (the limit). The
   two alternate, ``--rounds`` times; the median counts. Goal: ≥ 0.9× the bare forward.
2. **analysis**: GB/s of ``mean_and_covariance`` and ``pca`` (k = 16, randomised) on a
   ``--analysis-mb`` float32 array read from a zarr store on disk, on a LocalCluster of 1 and
   of 2 single-threaded workers, against NumPy on the same array in memory (float64 sums).
3. **memory**: the peak resident memory of the whole process tree (sampled every 20 ms with
   psutil, workers included) while (a) extracting 1× and 8× a number of batches, and
   (b) computing mean, covariance and PCA of 1× and 8× ``--memory-mb`` on a LocalCluster of 2
   workers given 256 MiB each, so the 8× dataset is larger than all the workers' memory.
   Each measurement runs in a fresh child process. Goal: flat, well under the data size.

Models are random-weight Llama models saved to a temporary folder with a BPE tokenizer trained
on the foundry corpus; nothing is downloaded. Prints Markdown tables and (``--json``) JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

SHAPES = {
    "demo": dict(
        hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6
    ),
    "large": dict(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8
    ),
}
MiB = 2**20


class PeakMemory:
    """Samples the resident set size of a process and its children in a background thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            total = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


# -- a model on disk ----------------------------------------------------------------------------


def make_model(folder: Path, shape: str) -> None:
    """A random Llama of ``shape`` and a BPE tokenizer trained on the foundry corpus."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from analoglab.foundry.corpus import generate
    from analoglab.foundry.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(generate(3000, 0), 1024)
    torch.manual_seed(0)
    s = SHAPES[shape]
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=s["num_attention_heads"],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        **s,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_prompts(n: int, seq: int, tokenizer: Any) -> list[str]:
    """``n`` texts of at least ``seq`` tokens each (extraction keeps the last ``seq``)."""
    from analoglab.foundry.corpus import generate

    docs = iter(generate(n * 64, 1))
    texts = []
    for _ in range(n):
        text = next(docs)
        while len(tokenizer(text)["input_ids"]) < seq:
            text += " " + next(docs)
        texts.append(text)
    return texts


# -- 1. extraction ------------------------------------------------------------------------------


def bench_extract(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from analoglab.activations import extract
    from analoglab.experiments.methods.common import encode
    from analoglab.models.loading import load_model

    loaded = load_model(work / "model", device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = make_prompts(args.batch * args.batches, args.seq, tokenizer)
    batches = [
        encode(tokenizer, texts[i : i + args.batch], args.seq, loaded.device)
        for i in range(0, len(texts), args.batch)
    ]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)

    def sync() -> None:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for enc in batches:
                model.base_model(**enc.inputs(), use_cache=False)
        sync()
        return time.perf_counter() - start

    runs: list[dict[str, Any]] = []

    def ours() -> float:
        store = work / f"extract-{len(runs)}"
        start = time.perf_counter()
        summary = extract(
            loaded,
            texts,
            store=store,
            hooks=None,
            positions="all",
            dtype=args.dtype,
            batch_size=args.batch,
            max_tokens=args.seq,
        )
        seconds = time.perf_counter() - start
        runs.append({"seconds": seconds, "writer_busy": summary.writer_busy_seconds})
        import shutil

        shutil.rmtree(store)
        return seconds

    bare()  # warm-up
    ours()
    runs.clear()
    times: dict[str, list[float]] = {"bare forward (base model)": [], "analoglab extract": []}
    for r in range(args.rounds):
        pair = [("bare forward (base model)", bare), ("analoglab extract", ours)]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            times[name].append(fn())
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    n_layers = model.config.num_hidden_layers
    width = model.config.hidden_size
    itemsize = 2 if args.dtype == "float16" else 4
    return {
        "tokens": tokens,
        "tokens_per_s": rate,
        "ratio": rate["analoglab extract"] / rate["bare forward (base model)"],
        "written_mb_per_s": rate["analoglab extract"] * n_layers * width * itemsize / MiB,
        "writer_busy_fraction": statistics.median(r["writer_busy"] / r["seconds"] for r in runs),
    }


# -- 2. analysis throughput -------------------------------------------------------------------


def write_array(path: Path, mb: int, width: int, chunk_rows: int, seed: int = 0) -> int:
    """A float32 ``[rows, width]`` zarr array of about ``mb`` MiB, written chunk by chunk:
    low rank plus noise, far from the origin (as activations are)."""
    import zarr

    rows = mb * MiB // (4 * width)
    arr = zarr.create_array(
        store=str(path),
        shape=(rows, width),
        chunks=(chunk_rows, width),
        dtype="float32",
        compressors=None,
        overwrite=True,
    )
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(32, width)).astype(np.float32)
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        z = rng.normal(size=(n, 32)).astype(np.float32) * np.linspace(4, 0.2, 32, dtype=np.float32)
        arr[start : start + n] = z @ basis + rng.normal(size=(n, width)).astype(np.float32) + 3
    return rows


def numpy_covariance(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    x64 -= x64.mean(axis=0)
    return x64.T @ x64 / (len(x64) - 1)


def numpy_pca(x: np.ndarray, k: int) -> np.ndarray:
    x64 = x.astype(np.float64)
    x64 -= x64.mean(axis=0)
    _, _, vt = np.linalg.svd(x64, full_matrices=False)
    return vt[:k]


def bench_analysis(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import dask.array as da
    import zarr

    from analoglab.activations import cluster, mean_and_covariance, pca

    width = args.width
    path = work / "analysis.zarr"
    rows = write_array(path, args.analysis_mb, width, chunk_rows=args.chunk_rows)
    nbytes = rows * width * 4
    results: dict[str, Any] = {"rows": rows, "width": width, "gb": nbytes / 1e9}
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> None:
        fn()  # warm-up (page cache, imports, BLAS threads)
        runs = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)

    def in_memory() -> None:
        x = np.asarray(zarr.open_array(str(path), mode="r")[...])
        timed("numpy covariance (in memory)", lambda: numpy_covariance(x))
        timed("numpy PCA, full SVD (in memory)", lambda: numpy_pca(x, 16))

    in_memory()
    for workers in args.workers:
        client = cluster(
            n_workers=workers,
            threads_per_worker=1,
            memory_limit="2GiB",
            dashboard_address=None,
            quiet=True,
        )
        try:
            data = da.from_zarr(str(path))
            timed(
                f"mean_and_covariance, {workers} worker(s)", lambda d=data: mean_and_covariance(d)
            )
            timed(f"pca k=16 randomised, {workers} worker(s)", lambda d=data: pca(d, 16))
        finally:
            client.close()
    results["seconds"] = timings
    results["gb_per_s"] = {k: nbytes / 1e9 / v for k, v in timings.items()}
    return results


# -- 3. peak memory -----------------------------------------------------------------------------


def _child_extract(model_dir: str, store: str, n_batches: int, args: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    from analoglab.activations import extract
    from analoglab.models.loading import load_model

    loaded = load_model(model_dir, device=args["device"])
    texts = make_prompts(args["batch"] * n_batches, args["seq"], loaded.tokenizer)
    extract(
        loaded,
        texts,
        store=store,
        hooks=None,
        positions="all",
        dtype=args["dtype"],
        batch_size=args["batch"],
        max_tokens=args["seq"],
    )


def _child_analysis(path: str) -> None:
    import dask.array as da

    from analoglab.activations import cluster, mean_and_covariance, pca

    client = cluster(
        n_workers=2, threads_per_worker=1, memory_limit="256MiB", dashboard_address=None, quiet=True
    )
    try:
        data = da.from_zarr(path)
        mean_and_covariance(data)
        pca(data, 16)
    finally:
        client.close()


def peak_of(target: Callable[..., None], *targs: Any) -> tuple[float, float]:
    """(peak RSS of the child's process tree in MiB, seconds) of running ``target``."""
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=target, args=targs)
    start = time.perf_counter()
    child.start()
    with PeakMemory(child.pid) as peak:
        child.join()
    if child.exitcode != 0:
        raise SystemExit(f"the measured child failed with exit code {child.exitcode}")
    return peak.peak / MiB, time.perf_counter() - start


def bench_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"extract": {}, "analysis": {}}
    child_args = {
        "device": args.device,
        "batch": args.batch,
        "seq": args.seq,
        "dtype": args.dtype,
        "threads": args.threads,
    }
    itemsize = 2 if args.dtype == "float16" else 4
    shape = SHAPES[args.shape]
    per_token = shape["num_hidden_layers"] * shape["hidden_size"] * itemsize
    for factor in (1, 8):
        n_batches = args.memory_batches * factor
        store = work / f"memory-extract-{factor}"
        mib, seconds = peak_of(
            _child_extract, str(work / "model"), str(store), n_batches, child_args
        )
        data_mib = n_batches * args.batch * args.seq * per_token / MiB
        out["extract"][f"{factor}x"] = {"data_mib": data_mib, "peak_mib": mib, "seconds": seconds}
        import shutil

        shutil.rmtree(store, ignore_errors=True)
    for factor in (1, 8):
        path = work / f"memory-analysis-{factor}.zarr"
        write_array(path, args.memory_mb * factor, args.width, chunk_rows=args.chunk_rows)
        mib, seconds = peak_of(_child_analysis, str(path))
        out["analysis"][f"{factor}x"] = {
            "data_mib": args.memory_mb * factor,
            "peak_mib": mib,
            "seconds": seconds,
            "workers_memory_mib": 512,
        }
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    return out


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="demo")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, default=24, help="Batches per extraction round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--threads", type=int, default=torch_threads_default())
    parser.add_argument("--analysis-mb", type=int, default=256)
    parser.add_argument("--width", type=int, default=512, help="Features of analysis arrays.")
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--memory-mb", type=int, default=128)
    parser.add_argument("--memory-batches", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--parts", default="extract,analysis,memory")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    parts = set(args.parts.split(","))

    import torch

    torch.set_num_threads(args.threads)
    from analoglab.models.loading import quiet_transformers

    quiet_transformers()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__} "
        f"({args.threads} threads), device {args.device}"
    )
    report: dict[str, Any] = {
        "machine": machine,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    print(f"\n{machine}\n")
    with tempfile.TemporaryDirectory(prefix="bench-activations-") as tmp:
        work = Path(tmp)
        if parts & {"extract", "memory"}:
            make_model(work / "model", args.shape)
        if "extract" in parts:
            r = bench_extract(args, work)
            report["extract"] = r
            print(
                f"Extraction, shape {args.shape}, batch {args.batch}×{args.seq}, "
                f"{r['tokens']:,} tokens, every block, {args.dtype}, median of {args.rounds}\n"
            )
            print("| contender | tokens/s | × bare forward |\n|---|---:|---:|")
            base = r["tokens_per_s"]["bare forward (base model)"]
            for k, v in r["tokens_per_s"].items():
                print(f"| {k} | {v:,.0f} | {v / base:.3f} |")
            print(
                f"\nwritten {r['written_mb_per_s']:.1f} MiB/s; writer thread busy "
                f"{r['writer_busy_fraction']:.0%} of the time\n"
            )
        if "analysis" in parts:
            r = bench_analysis(args, work)
            report["analysis"] = r
            print(
                f"Analysis of {r['gb']:.2f} GB ({r['rows']:,} × {r['width']} float32), "
                f"median of {args.rounds}\n"
            )
            print("| computation | seconds | GB/s |\n|---|---:|---:|")
            for k, v in r["seconds"].items():
                print(f"| {k} | {v:.2f} | {r['gb_per_s'][k]:.3f} |")
            print()
        if "memory" in parts:
            r = bench_memory(args, work)
            report["memory"] = r
            print("Peak memory of the process tree\n")
            print("| workload | data (MiB) | peak RSS (MiB) | seconds |\n|---|---:|---:|---:|")
            for what, rows in r.items():
                for factor, v in rows.items():
                    print(
                        f"| {what} {factor} | {v['data_mib']:,.0f} | {v['peak_mib']:,.0f} | "
                        f"{v['seconds']:.1f} |"
                    )
            print()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def torch_threads_default() -> int:
    return min(2, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
