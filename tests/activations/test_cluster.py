"""Where the Dask workers come from: a LocalCluster here, a Dask Gateway where configured."""

from __future__ import annotations

import os
from typing import Any

import dask
import dask.array as da
import psutil
import pytest

from analoglab.activations import ActivationError, cluster, dashboard_link
from analoglab.activations.clusters import gateway_address, local_size


def test_the_local_cluster_runs_the_computations(client: Any) -> None:
    from distributed import get_client

    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())
    assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
    assert get_client() is client  # the default scheduler: analyses use it unchanged
    assert int(da.ones((1000, 4), chunks=(100, 4)).sum().compute()) == 4000
    assert dashboard_link(client) is None  # the tests start no dashboard


def test_a_local_cluster_is_sized_to_the_machine() -> None:
    workers, threads, memory = local_size(None, None, None)
    cores = os.cpu_count() or 1
    assert workers == min(cores, 8) and threads * workers <= max(cores, workers)
    assert isinstance(memory, int) and memory * workers <= psutil.virtual_memory().total
    assert local_size(3, 2, "1GiB") == (3, 2, "1GiB")


def test_a_configured_gateway_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_GATEWAY__ADDRESS", raising=False)  # as on a hub notebook
    with dask.config.set({"gateway.address": None}):
        assert gateway_address() is None
    # Nothing listens on port 9: the Gateway path is taken and fails with one clear error.
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", "http://127.0.0.1:9")
    assert gateway_address() == "http://127.0.0.1:9"
    with pytest.raises(ActivationError, match="Dask Gateway at http://127.0.0.1:9") as info:
        cluster(quiet=True)
    assert "\n" not in str(info.value)
    monkeypatch.delenv("DASK_GATEWAY__ADDRESS")
    with dask.config.set({"gateway.address": "http://127.0.0.1:9"}):
        assert gateway_address() == "http://127.0.0.1:9"
        with pytest.raises(ActivationError, match="Dask Gateway"):
            cluster(quiet=True)
