"""What the platform runs and where (``analoglab status``), and whether it runs at all.

A running ``analoglab up`` holds an exclusive ``flock`` on ``hub/platform.lock`` and has
written ``hub/platform.json`` (its pid, the hub's pid, ports, URLs, mode). The lock, not the
file, says whether it runs: a platform killed with SIGKILL leaves the file behind but not the
lock. :func:`platform_status` adds the live processes of the platform (the hub and everything
under it, found with psutil) to that state.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

import psutil

from analoglab.hub.layout import Layout


def is_running(layout: Layout) -> bool:
    """Whether an ``analoglab up`` holds this data folder's lock."""
    if not layout.lock.is_file():
        return False
    fd = os.open(layout.lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def read_state(layout: Layout) -> dict[str, Any] | None:
    try:
        state = json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def read_running(layout: Layout) -> dict[str, Any] | None:
    """The running platform's state; None when none runs (or it is still starting)."""
    if not is_running(layout):
        return None
    state = read_state(layout)
    return state if state and state.get("ready") else None


def _describe(proc: psutil.Process) -> dict[str, Any] | None:
    try:
        with proc.oneshot():
            cmdline = proc.cmdline()
            return {
                "pid": proc.pid,
                "user": proc.username(),
                "command": " ".join(cmdline)[:200],
                "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            }
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def platform_processes(root_pid: int) -> list[dict[str, Any]]:
    """The process ``root_pid`` and all its descendants."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [d for p in procs if (d := _describe(p)) is not None]


def platform_status(layout: Layout) -> dict[str, Any]:
    """``{"running": bool, ...state, "processes": [...]}`` for ``analoglab status``."""
    state = read_state(layout) or {}
    running = is_running(layout)
    result: dict[str, Any] = {"running": running, "data_folder": str(layout.data)}
    if not running:
        return result
    result.update(state)
    result["processes"] = platform_processes(int(state.get("pid", 0))) if state else []
    return result
