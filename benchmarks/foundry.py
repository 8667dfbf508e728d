"""Time and peak memory of each stage of a foundry preset, built from nothing.

    python benchmarks/foundry.py --preset demo [--device cpu] [--home DIR] [--json OUT]

Builds into a fresh temporary data folder (or --home), stage by stage, sampling the resident
memory of this process and its children every 50 ms. Prints a Markdown table for
docs/performance.md and the fidelity numbers the build measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from analoglab.config import Settings
from analoglab.foundry.build import STAGES, FoundryBuild
from analoglab.foundry.presets import get_preset
from analoglab.models.loading import quiet_transformers


class PeakMemory:
    """Samples the resident set size of the process tree in a background thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()

    quiet_transformers()
    home = args.home or Path(tempfile.mkdtemp(prefix="analoglab-bench-")) / "home"
    settings = Settings(home=home)
    settings.ensure_folders()
    b = FoundryBuild(get_preset(args.preset), settings, device=args.device)
    rows = []
    t_all = time.perf_counter()
    for stage in STAGES:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            getattr(b, f"stage_{stage}")()
            seconds = time.perf_counter() - t0
        rows.append(
            {"stage": stage, "seconds": round(seconds, 1), "peak_rss_mib": round(mem.peak / 2**20)}
        )
        print(f"{stage:<10} {seconds:8.1f} s   peak {mem.peak / 2**20:7.0f} MiB", flush=True)
    total = time.perf_counter() - t_all
    fidelity = json.loads((b.work / "fidelity.json").read_text())
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
    )
    print(f"\nMachine: {machine}\n")
    print("| stage | seconds | peak RSS (MiB) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mib']} |")
    print(f"| **total** | **{total:.1f}** | |")
    print("\nFidelity:", json.dumps(fidelity, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "machine": machine,
                    "stages": rows,
                    "total_seconds": round(total, 1),
                    "fidelity": fidelity,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
