"""Fixtures shared by the whole suite.

- ``clean_env`` (autouse): no ``ANALOGLAB_*`` variable from the caller's shell leaks in.
- ``home``: a fresh, empty data folder; ``ANALOGLAB_HOME`` points at it; yields its Settings.
- ``tiny_home``: the ``tiny`` foundry preset, built once per session into its own data folder
  (frontier on the lab site, two analogs in the model store, the lab in the catalog).
  Read it, never change it: copy what a test must alter.
- ``use_tiny_home``: ``ANALOGLAB_HOME`` pointed at ``tiny_home`` (for CLI tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult, build
from analoglab.foundry.presets import get_preset

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ANALOGLAB_"):
            monkeypatch.delenv(key)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ANALOGLAB_HOME", str(tmp_path / "home"))
    return Settings()


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, BuildResult]:
    settings = Settings(home=tmp_path_factory.mktemp("tiny") / "home")
    result = build(get_preset("tiny"), settings, device="cpu")
    return settings, result


@pytest.fixture
def tiny_home(tiny_build: tuple[Settings, BuildResult]) -> Settings:
    return tiny_build[0]


@pytest.fixture
def use_tiny_home(tiny_home: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("ANALOGLAB_HOME", str(tiny_home.home))
    yield tiny_home
