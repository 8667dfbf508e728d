"""What the benchmarks write into the docs: the stamp of a run (commit, date, machine, torch)
and the marked blocks of a page its figures go into; and the ``--home PATH[=LABEL]`` argument
of the benchmarks that read existing builds.

Light on purpose (the standard library; torch only when a stamp is made): the worker-only
mode of ``frontier_throughput.py`` imports it on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stamp(threads: int, device: str = "cpu") -> dict[str, str]:
    """Commit, date, machine and threads the figures were measured at (``BENCH_COMMIT``
    names the commit where the tree was copied without its history, as to a device
    machine)."""
    try:
        if os.environ.get("BENCH_COMMIT"):
            raise OSError("given")
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "platform", "benchmarks"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,  # the pathspecs are the repository's folders
        ).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes under platform/ or benchmarks/)"
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("BENCH_COMMIT", "unknown")
    import torch

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name(0)}"
    return {
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "threads": str(threads),
        "torch": torch.__version__,
    }


def add_docs_options(parser: argparse.ArgumentParser) -> None:
    """``--docs PAGE --block NAME``: the marked block of a page a benchmark writes into."""
    parser.add_argument("--docs", type=Path, help="a page with marked blocks (see --block)")
    parser.add_argument("--block", help="the marked block of --docs to write the figures into")


def check_docs_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, kind: str
) -> None:
    """Refuse ``--docs`` without ``--block`` (or the reverse), and a block the page lacks,
    before anything is measured."""
    if (args.docs is None) != (args.block is None):
        parser.error("--docs and --block go together")
    if args.docs:
        check_block(args.docs, kind, args.block)


def check_block(path: Path, kind: str, name: str) -> None:
    """Exit with a one-line error unless ``path`` holds the marked block ``name`` (checked
    before a benchmark runs, so a typo costs no measuring)."""
    try:
        doc = path.read_text()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from None
    for mark in (f"<!-- {kind}:{name}:start -->", f"<!-- {kind}:{name}:end -->"):
        if mark not in doc:
            raise SystemExit(f"error: {path} has no block {name} (no {mark})")


def write_block(path: Path, kind: str, name: str, text: str) -> None:
    """Replace the marked block ``name`` of ``path`` (between ``<!-- KIND:NAME:start -->``
    and ``<!-- KIND:NAME:end -->``) with ``text``."""
    check_block(path, kind, name)
    start = f"<!-- {kind}:{name}:start -->"
    end = f"<!-- {kind}:{name}:end -->"
    head, rest = path.read_text().split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}{end}{tail}")


def parse_home(text: str) -> tuple[Path, str]:
    """``PATH[=LABEL]`` of ``--home``: the build's data folder and its label (default: the
    folder's name)."""
    path, _, label = text.partition("=")
    return Path(path).expanduser(), label or Path(path).name
