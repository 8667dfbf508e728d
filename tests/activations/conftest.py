"""Fixtures for the activation-dataset tests.

- ``one_thread`` (autouse): torch runs on one thread (the machine's cores are shared).
- ``client``: a real dask ``LocalCluster`` of 2 single-threaded worker processes, made by
  :func:`analoglab.activations.cluster`, once per session (the default scheduler from then on).
- ``tiny_models``: the tiny foundry's frontier and two analogs, loaded on the CPU once per
  session (from the ``tiny_home`` build of ``tests/conftest.py``).
- ``prompts``: a few dozen short prompts of different lengths (padding is exercised).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult
from analoglab.models.loading import LoadedModel, load_model


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    from analoglab.activations import cluster

    c = cluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        memory_limit="1GiB",
        quiet=True,
    )
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def tiny_models(tiny_build: tuple[Settings, BuildResult]) -> dict[str, LoadedModel]:
    settings = tiny_build[0]
    return {
        "frontier": load_model(
            settings.lab_sites_path / "tiny-lab/models/tiny-frontier", device="cpu"
        ),
        "analog": load_model(settings.models_path / "tiny-analog-s", device="cpu"),
        "analog_m": load_model(settings.models_path / "tiny-analog-m", device="cpu"),
    }


@pytest.fixture
def prompts() -> list[str]:
    from analoglab.foundry.tasks import task_set

    items = task_set("neutral", 30, seed=7).items
    # Lengths differ, so batches are padded; a few are very short.
    return [str(p) for p in items] + ["Tom", "the", "Anna said that"]
