"""Where the Dask workers come from: :func:`cluster` gives a client, on the hub or a laptop.

- Where a Dask Gateway is configured (``DASK_GATEWAY__ADDRESS`` in the environment, or
  ``gateway.address`` in the Dask configuration, as on the hosted hub), a new Gateway cluster
  is started and scaled (or made adaptive) and its client returned.
- Otherwise a ``LocalCluster`` sized to this machine: one single-threaded worker process per
  CPU core (up to 8), sharing 80% of the memory, listening on 127.0.0.1 only. On the platform,
  a user's ``CPU_LIMIT`` and ``MEM_LIMIT`` (set by JupyterHub) bound the cores and memory.

Either way the client becomes the default scheduler, so the analyses run on it unchanged, and
the dashboard link is printed (:func:`dashboard_link`; a local dashboard needs bokeh).
``client.shutdown()`` stops the workers; a local cluster also stops when its client is closed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

from analoglab.activations.errors import ActivationError

MAX_LOCAL_WORKERS = 8


def gateway_address() -> str | None:
    """The configured Dask Gateway address: ``DASK_GATEWAY__ADDRESS`` (read now, so a variable
    set after dask was imported counts) or the Dask config's ``gateway.address``."""
    import dask.config

    env = dask.config.collect_env(dict(os.environ)).get("gateway")
    address = env.get("address") if isinstance(env, dict) else None
    if not address:
        address = dask.config.get("gateway.address", None)
    return str(address) if address else None


def local_size(
    n_workers: int | None, threads_per_worker: int | None, memory_limit: str | int | None
) -> tuple[int, int, str | int]:
    """Workers, threads per worker and memory per worker for this machine, or for the
    ``CPU_LIMIT`` / ``MEM_LIMIT`` (bytes) that JupyterHub gives a user's server."""
    import psutil

    cores = os.cpu_count() or 1
    total = psutil.virtual_memory().total
    with contextlib.suppress(ValueError):
        cores = min(cores, max(1, int(float(os.environ.get("CPU_LIMIT") or cores))))
    with contextlib.suppress(ValueError):
        total = min(total, int(os.environ.get("MEM_LIMIT") or total))
    workers = n_workers or max(1, min(cores, MAX_LOCAL_WORKERS))
    threads = threads_per_worker or max(1, cores // workers)
    memory = memory_limit or int(total * 0.8 / workers)
    return workers, threads, memory


def cluster(
    n_workers: int | None = None,
    *,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    processes: bool = True,
    dashboard_address: str | None = "127.0.0.1:0",
    adaptive: tuple[int, int] | None = None,
    gateway_options: dict[str, Any] | None = None,
    quiet: bool = False,
) -> Any:
    """A ``distributed.Client`` on a Dask Gateway cluster if one is configured, else on a
    ``LocalCluster`` (see the module docstring).

    On a Gateway, ``n_workers`` workers are requested (2 if unset), or ``adaptive=(min, max)``;
    ``gateway_options`` are the cluster options the Gateway offers (worker cores, memory,
    image). Locally, ``dashboard_address=None`` starts no dashboard.
    """
    address = gateway_address()
    if address:
        client = _gateway_client(address, n_workers, adaptive, gateway_options or {})
    else:
        client = _local_client(
            n_workers, threads_per_worker, memory_limit, processes, dashboard_address
        )
    if not quiet:
        where = f"Dask Gateway at {address}" if address else "local cluster"
        link = dashboard_link(client) if address or dashboard_address else None
        print(f"{where}: {client}; dashboard: {link or 'not running'}")
    return client


NO_DASHBOARD = "_analoglab_no_dashboard"


def dashboard_link(client: Any) -> str | None:
    """The client's dashboard URL; ``None`` for a local cluster that runs no dashboard
    (started with ``dashboard_address=None``, or bokeh, which draws it, is not installed)."""
    import importlib.util

    gateway = type(getattr(client, "cluster", None)).__module__.startswith("dask_gateway")
    if not gateway and (
        importlib.util.find_spec("bokeh") is None or getattr(client, NO_DASHBOARD, False)
    ):
        return None
    link = getattr(client, "dashboard_link", None)
    return str(link) if link else None


def _local_client(
    n_workers: int | None,
    threads_per_worker: int | None,
    memory_limit: str | int | None,
    processes: bool,
    dashboard_address: str | None,
) -> Any:
    import logging

    distributed: Any = importlib.import_module("distributed")
    workers, threads, memory = local_size(n_workers, threads_per_worker, memory_limit)
    # dashboard_address=None would still serve a dashboard on :8787 once bokeh is installed:
    # without one, the scheduler's HTTP server takes a free port and serves no dashboard.
    no_dashboard = dashboard_address is None
    try:
        client = distributed.Client(
            n_workers=workers,
            threads_per_worker=threads,
            memory_limit=memory,
            processes=processes,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0" if no_dashboard else dashboard_address,
            scheduler_kwargs={"dashboard": False} if no_dashboard else None,
            silence_logs=logging.ERROR,
            set_as_default=True,
        )
    except Exception as exc:  # distributed raises many types when a cluster cannot start
        raise ActivationError(f"cannot start a local Dask cluster: {exc}") from exc
    setattr(client, NO_DASHBOARD, no_dashboard)
    return client


def _gateway_client(
    address: str,
    n_workers: int | None,
    adaptive: tuple[int, int] | None,
    options: dict[str, Any],
) -> Any:
    try:
        from dask_gateway import Gateway  # type: ignore[import-untyped]
    except ImportError:
        raise ActivationError(
            f"a Dask Gateway is configured ({address}) but dask-gateway is not installed; "
            "install analoglab[notebook] or unset DASK_GATEWAY__ADDRESS"
        ) from None
    try:
        gateway = Gateway(address=address)
        gw_cluster = gateway.new_cluster(**options)
        if adaptive is not None:
            gw_cluster.adapt(minimum=adaptive[0], maximum=adaptive[1])
        else:
            gw_cluster.scale(n_workers or 2)
        return gw_cluster.get_client(set_as_default=True)
    except Exception as exc:  # aiohttp, auth and gateway errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ActivationError(
            f"cannot start a cluster on the Dask Gateway at {address}: {first}; check "
            "DASK_GATEWAY__ADDRESS (unset it to use a local cluster)"
        ) from exc
