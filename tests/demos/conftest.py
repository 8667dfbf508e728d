"""Fixtures of the demo's tests.

- ``demo_home``: a data folder of its own holding a copy of the tiny build's model store and
  catalog (the tests log to its MLflow store, so the session's tiny home stays untouched).
- ``demo_url``: the demo built on ``demo_home`` and launched on a free loopback port for the
  module (MLflow queries not cached, so a run logged by a test shows at once); its URL.
- ``client``: a ``gradio_client.Client`` of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult

from ..conftest import free_port


@pytest.fixture(scope="module")
def demo_home(
    tiny_build: tuple[Settings, BuildResult], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    tiny = tiny_build[0]
    settings = Settings(home=tmp_path_factory.mktemp("demo") / "home")
    shutil.copytree(tiny.models_path, settings.models_path)
    shutil.copytree(tiny.catalog_path, settings.catalog_path)
    return settings


@pytest.fixture(scope="module")
def demo_url(demo_home: Settings) -> Iterator[str]:
    import torch

    from analoglab.demos import build_app, serve

    torch.set_num_threads(1)
    app = build_app(demo_home, cache_seconds=0.0)
    port = free_port()
    serve(app, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(demo_url: str) -> Any:
    from gradio_client import Client

    return Client(demo_url, verbose=False)
