"""Per-user limits: JupyterHub hands a server ``CPU_LIMIT`` and ``MEM_LIMIT`` (bytes), which
local spawners do not enforce; the Dask ``LocalCluster`` of ``activations.cluster()`` is sized
by them so that one user's analysis stays within what the platform gives them."""

from __future__ import annotations

import pytest

from analoglab.activations.clusters import local_size


def test_local_cluster_is_sized_to_the_users_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPU_LIMIT", raising=False)
    monkeypatch.delenv("MEM_LIMIT", raising=False)
    unlimited = local_size(None, None, None)
    monkeypatch.setenv("CPU_LIMIT", "1.0")
    monkeypatch.setenv("MEM_LIMIT", str(2 * 2**30))
    workers, threads, memory = local_size(None, None, None)
    assert (workers, threads) == (1, 1)
    assert memory == int(2 * 2**30 * 0.8)
    assert memory <= int(unlimited[2]) * unlimited[0]
    # what the caller asks for still wins; junk in the environment is ignored
    assert local_size(2, 1, "1GiB") == (2, 1, "1GiB")
    monkeypatch.setenv("CPU_LIMIT", "junk")
    monkeypatch.setenv("MEM_LIMIT", "4G")
    assert local_size(None, None, None) == unlimited
