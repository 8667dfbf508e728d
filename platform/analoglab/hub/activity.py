"""A running cell is activity: the Jupyter server extension that keeps a busy server alive.

The hub's idle culler stops a user's server when the hub has heard of no activity for
``--cull-timeout`` seconds. The server tells the hub its ``last_activity``, which counts API
requests and kernel *messages*; a cell that runs for an hour without printing (a training
loop, a long capture) sends none, so the server looks idle and is culled with the work in it —
a known pain point of hosted hubs. This extension, loaded into every user's server by
``analoglab up`` (``ServerApp.jpserver_extensions``), looks at the kernels every
``interval`` seconds and, while any of them is executing, sets the server setting
``analoglab_busy_last_activity`` to now. Jupyter Server counts every setting whose name ends
in ``_last_activity`` (``ServerApp.last_activity``), so the hub hears of it at its next
activity report and the culler spares the server. Idle kernels add nothing: an idle server is
still culled. (The server's own kernel culler is set to spare busy kernels; see
:func:`analoglab.hub.config.kernel_culling_args`.)
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

SETTING = "analoglab_busy_last_activity"
INTERVAL_ENV = "ANALOGLAB_BUSY_CHECK_SECONDS"
DEFAULT_INTERVAL = 30.0


def busy_kernels(kernel_manager: Any) -> int:
    """How many of the server's kernels are executing a cell now."""
    count = 0
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            state = kernel_manager.get_kernel(kernel_id).execution_state
        except KeyError:  # shut down meanwhile
            continue
        count += state == "busy"
    return count


def mark_if_busy(settings: dict[str, Any], kernel_manager: Any) -> bool:
    """Set :data:`SETTING` to now when a kernel is busy; True when it did."""
    if busy_kernels(kernel_manager):
        settings[SETTING] = datetime.now(UTC)
        return True
    return False


def interval_seconds() -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return min(max(value, 1.0), 300.0)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "analoglab.hub.activity"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from tornado.ioloop import PeriodicCallback

    settings = serverapp.web_app.settings
    kernels = serverapp.kernel_manager
    every = interval_seconds()

    def check() -> None:
        mark_if_busy(settings, kernels)

    callback = PeriodicCallback(check, every * 1000)
    callback.start()
    settings["analoglab_busy_check"] = callback  # kept alive with the server
    serverapp.log.info("analoglab: a busy kernel counts as activity (checked every %gs)", every)
