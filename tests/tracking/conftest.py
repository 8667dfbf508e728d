"""Fixtures of the tracking tests: the two kinds of MLflow store, and results to log.

- ``mlflow_server``: a real ``mlflow server`` on loopback, started once per session by
  ``python -m analoglab tracking server`` (the command under test) in a data folder of its
  own. It is launched as soon as the first tracking test runs and only waited for (its
  ``/health`` answers after ~15 s) by the first test that needs it; tests that need it run
  after the others in this folder (see ``pytest_collection_modifyitems``), so the wait
  overlaps them. Stopped with SIGTERM (SIGKILL to its process group if it lingers).
- ``migrated_db``: an embedded store created once per session (MLflow migrates a new SQLite
  database for seconds); ``fresh_home`` is a new data folder holding a copy of it, so each
  test gets an empty, ready store.
- ``backend`` (parametrized ``sqlite`` / ``server``): Settings whose data folder is fresh,
  tracking to the embedded SQLite store there or to ``mlflow_server``.
- ``experiment``: an experiment name of the test's own (the server is shared).
- ``make_result``: a valid ExperimentResult of a spec on a named model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult, LayerProfile, ModelIdentity
from analoglab.experiments.spec import AnySpec, parse_spec, spec_hash, spec_to_dict
from analoglab.tracking.server import is_healthy
from analoglab.tracking.store import TrackingStore

from ..conftest import free_port

SERVER_START_TIMEOUT = 120.0



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within this folder, tests that use the server run last (in their own order)."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if here in Path(str(item.path)).parents]
    mine = [items[i] for i in slots]

    def needs_server(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        fixtures = getattr(item, "fixturenames", [])
        return params.get("backend") == "server" or "mlflow_server" in fixtures

    ordered = [t for t in mine if not needs_server(t)] + [t for t in mine if needs_server(t)]
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path
    ready: bool = False

    def wait(self) -> str:
        import time

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.ready:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {self.proc.returncode}:\n"
                    + self.log.read_text()[-3000:]
                )
            if is_healthy(self.url, timeout=1.0):
                self.ready = True
            elif time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT} s")
            else:
                time.sleep(0.2)
        return self.url



@pytest.fixture(scope="session", autouse=True)
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Launch the server early; ``mlflow_server`` waits for it."""
    base = tmp_path_factory.mktemp("mlflow-server")
    home = base / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANALOGLAB_", "MLFLOW_"))}
    env["ANALOGLAB_HOME"] = str(home)
    log = base / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "analoglab", "tracking", "server", "--port", str(port)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", home, log)
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its workers, should any outlive it


@pytest.fixture
def mlflow_server(server_process: ServerProcess) -> str:
    return server_process.wait()


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = Settings(home=tmp_path_factory.mktemp("mlflow-template") / "home")
    store = TrackingStore.open(settings)
    store.client.search_experiments()
    path = settings.home / "mlflow" / "mlflow.db"
    assert path.is_file()  # the embedded default: a SQLite file in the data folder
    return path


def seed_store(home: Path, migrated_db: Path) -> None:
    """An empty, migrated embedded store in the data folder ``home``."""
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, home / "mlflow" / "mlflow.db")


@pytest.fixture
def fresh_home(tmp_path: Path, migrated_db: Path) -> Settings:
    seed_store(tmp_path / "home", migrated_db)
    return Settings(home=tmp_path / "home")


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "server":
        url = request.getfixturevalue("mlflow_server")
        return Settings(home=tmp_path / "home", mlflow_tracking_uri=url)
    fresh: Settings = request.getfixturevalue("fresh_home")
    return fresh


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


PROBE: dict[str, object] = {
    "method": "probe",
    "data": {
        "kind": "labelled",
        "items": [{"text": f"a short text number {i}", "label": i % 2} for i in range(8)],
    },
    "layers": {"depths": [0.0, 0.5, 1.0]},
}


@pytest.fixture
def spec() -> AnySpec:
    return parse_spec(PROBE)


MakeResult = Callable[..., ExperimentResult]


def build_result(
    spec: AnySpec,
    name: str,
    values: list[float] | None = None,
    effect: float = 0.6,
    weights: str = "a",
) -> ExperimentResult:
    values = values if values is not None else [0.55, 0.9, 0.7]
    n = len(values)
    depths = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    return ExperimentResult(
        method=spec.method,
        spec_hash=spec_hash(spec),
        spec=spec_to_dict(spec),
        model=ModelIdentity(
            name=name,
            weights_sha256=weights * 64,
            model_type="llama",
            layers=n,
            hidden_size=16,
            parameters=1234,
        ),
        device="cpu",
        versions={"analoglab": "test", "torch": torch.__version__},
        timings={"total_seconds": 0.25},
        metrics={"effect": effect, "accuracy": 0.5 + effect / 2, "accuracy.pos/neg?": 0.75},
        profiles={"accuracy": LayerProfile(indices=list(range(n)), depths=depths, values=values)},
        tables={"confusion": [[3.0, 1.0], [0.0, 4.0]]},
    ).with_size()


@pytest.fixture
def make_result() -> MakeResult:
    return build_result
