"""Fixtures shared by the whole suite.

- ``clean_env`` (autouse): no ``ANALOGLAB_*`` variable from the caller's shell leaks in.
- ``home``: a fresh, empty data folder; ``ANALOGLAB_HOME`` points at it; yields its Settings.
- ``tiny_home``: the ``tiny`` foundry preset, built once per session into its own data folder
  (frontier on the lab site, two analogs in the model store, the lab in the catalog).
  Read it, never change it: copy what a test must alter. With ``ANALOGLAB_TEST_TINY_HOME``
  set to a data folder where the tiny preset was built (``ANALOGLAB_HOME=DIR analoglab
  foundry build --preset tiny``), each session starts from a copy of it, and the build
  returns at once where the preset is unchanged (or redoes only what changed): for several
  test runs side by side on a small machine. CI leaves it unset.
- ``use_tiny_home``: ``ANALOGLAB_HOME`` pointed at ``tiny_home`` (for CLI tests).
- ``one_thread`` (autouse): torch on one thread during each test (tiny models gain nothing
  from threads, and on two shared cores torch's threads wait on each other).

Helpers for test modules (``from ..conftest import free_port, serve_app``): a free loopback
port, and an ASGI app served by uvicorn in a thread for the length of a ``with`` block.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult, build
from analoglab.foundry.presets import get_preset

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this test session
    has not handed out before (``up``'s own :func:`~analoglab.hub.platform.free_ports`): two
    calls in a row could otherwise get one port from the OS, and two services share it."""
    from analoglab.hub.platform import free_ports

    (port,) = free_ports(1, avoid=_HANDED_OUT)
    _HANDED_OUT.add(port)
    return port


@contextmanager
def serve_app(app: Any, timeout: float = 20.0) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port; yields its URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ANALOGLAB_"):
            monkeypatch.delenv(key)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ANALOGLAB_HOME", str(tmp_path / "home"))
    return Settings()


#: Read at import, before ``clean_env`` empties ANALOGLAB_* for each test.
PREBUILT_TINY = os.environ.get("ANALOGLAB_TEST_TINY_HOME")


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, BuildResult]:
    home = tmp_path_factory.mktemp("tiny") / "home"
    prebuilt = PREBUILT_TINY
    if prebuilt and (Path(prebuilt) / "foundry" / "tiny").is_dir():
        import shutil

        shutil.copytree(prebuilt, home, symlinks=True, ignore=shutil.ignore_patterns("mlflow"))
    settings = Settings(home=home)
    result = build(get_preset("tiny"), settings, device="cpu")
    return settings, result


@pytest.fixture
def tiny_home(tiny_build: tuple[Settings, BuildResult]) -> Settings:
    return tiny_build[0]


@pytest.fixture
def use_tiny_home(tiny_home: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("ANALOGLAB_HOME", str(tiny_home.home))
    yield tiny_home
