"""Where results are tracked: the MLflow tracking URI, artifact location and a client for them.

The tracking URI is ``Settings.mlflow_tracking_uri`` when set (an ``http(s)://`` tracking
server, or a database URI), else the embedded default: a SQLite store in the data folder,
``sqlite:///<home>/mlflow/mlflow.db``, with artifacts under ``<home>/mlflow/artifacts``. No
server is needed for the default.

Where a run's artifacts go is a property of its experiment. Talking to a server, the server
decides (``mlflow server --artifacts-destination`` serves them). Talking to a database
directly, MLflow would put them under ``./mlruns`` of whatever folder the process runs in,
so :meth:`TrackingStore.experiment_id` creates experiments with an explicit artifact location
under ``<home>/mlflow/artifacts/<experiment>``.

Everything goes through an ``MlflowClient`` built for that URI: nothing here calls
``mlflow.set_tracking_uri``, so two callers with different settings in one process (a test
and a notebook, two data folders) never see each other's store.
"""

from __future__ import annotations

import os
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analoglab.config import Settings, get_settings, without_credentials
from analoglab.tracking.errors import TrackingError, mlflow_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT = "analoglab"
MLFLOW_FOLDER = "mlflow"
DB_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "artifacts"
_SERVER_SCHEMES = ("http", "https")


def mlflow_path(settings: Settings) -> Path:
    """``<home>/mlflow``: the embedded store's database and artifacts."""
    return (settings.home.expanduser() / MLFLOW_FOLDER).resolve()


def artifacts_path(settings: Settings) -> Path:
    """``<home>/mlflow/artifacts``: artifacts of the embedded store (and of ``tracking server``)."""
    return mlflow_path(settings) / ARTIFACTS_FOLDER


def default_tracking_uri(settings: Settings) -> str:
    """``sqlite:///<home>/mlflow/mlflow.db`` (an absolute path: four slashes in all)."""
    return f"sqlite:///{mlflow_path(settings) / DB_FILE}"


def tracking_uri(settings: Settings | None = None) -> str:
    """The configured tracking URI, else the embedded default. ``file:`` stores are refused
    (MLflow 3 no longer writes them)."""
    settings = settings or get_settings()
    uri = settings.mlflow_tracking_uri or default_tracking_uri(settings)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("", "file"):
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses; set "
            "ANALOGLAB_MLFLOW_TRACKING_URI to a server (http://...) or a database "
            "(sqlite:///path/mlflow.db), or unset it for the store in the data folder"
        )
    return uri


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (which decides where artifacts go)."""
    return urllib.parse.urlparse(uri).scheme in _SERVER_SCHEMES


@dataclass
class TrackingStore:
    """An MLflow client for the configured URI, and the experiments it has resolved."""

    uri: str
    settings: Settings
    client: MlflowClient
    _experiments: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, settings: Settings | None = None) -> TrackingStore:
        """A client for ``settings`` (default: :func:`get_settings`); creates the embedded
        store's folder when that is what the URI names."""
        from mlflow import MlflowClient

        settings = settings or get_settings()
        uri = tracking_uri(settings)
        if uri == default_tracking_uri(settings):
            try:
                artifacts_path(settings).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError(
                    f"cannot create the MLflow store in {mlflow_path(settings)}: "
                    f"{exc.strerror or exc}; set ANALOGLAB_HOME to a folder you can write"
                ) from exc
        return cls(uri=uri, settings=settings, client=MlflowClient(uri, registry_uri=uri))

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment's artifacts go: the server's choice, or a folder of ours."""
        if is_server(self.uri):
            return None
        return (artifacts_path(self.settings) / experiment).as_uri()

    def experiment_id(self, name: str = DEFAULT_EXPERIMENT) -> str:
        """The id of experiment ``name``, created (or restored from the bin) if need be."""
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        with mlflow_errors(self.uri):
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    exp_id = self.client.create_experiment(
                        name, artifact_location=self.artifact_location(name)
                    )
                except MlflowException:
                    # Created meanwhile by another process: use theirs.
                    again = self.client.get_experiment_by_name(name)
                    if again is None:
                        raise
                    exp_id = again.experiment_id
            else:
                exp_id = found.experiment_id
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp_id)
        self._experiments[name] = exp_id
        return exp_id

    def read_text(self, run_id: str, path: str) -> str | None:
        """The text of the run's artifact ``path`` (top level of the run), or None."""
        with mlflow_errors(self.uri):
            if path not in {f.path for f in self.client.list_artifacts(run_id)}:
                return None
            with tempfile.TemporaryDirectory(prefix="analoglab-mlflow-") as tmp, quiet():
                local = self.client.download_artifacts(run_id, path, dst_path=tmp)
                return Path(local).read_text()

    def upload(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        """Log every file under ``folder`` as the run's artifacts (under ``artifact_path``)."""
        with quiet():
            self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED or FAILED), its end time now."""
        with quiet():
            self.client.set_terminated(run_id, status=status)

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """The run's page in the MLflow UI, where the URI is a server's; else None."""
        if not is_server(self.uri):
            return None
        base = without_credentials(self.uri).rstrip("/")  # links are shown and stored
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str) -> str | None:
        """A registered model's page in the MLflow UI, where the URI is a server's."""
        if not is_server(self.uri):
            return None
        base = without_credentials(self.uri).rstrip("/")
        return f"{base}/#/models/{urllib.parse.quote(name)}"


# MLflow reports on stdout and stderr as it works: a run's URL on stdout after each run ends
# (which would corrupt a command's JSON output) and tqdm bars for each download.
_QUIET_ENV = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_added: dict[str, str] = {}


@contextmanager
def quiet() -> Iterator[None]:
    """Inside the block MLflow prints no run URLs and no progress bars (unless the user set
    those variables), and the environment is as it was after it.

    The variables are process-wide: they are set by the first block entered (in any thread)
    and removed when the last one open is left, under a lock, so one thread leaving its block
    never takes them from another still inside MLflow."""
    global _quiet_depth
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_added.clear()
            _quiet_added.update({k: v for k, v in _QUIET_ENV.items() if k not in os.environ})
            os.environ.update(_quiet_added)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for key in _quiet_added:
                    os.environ.pop(key, None)
                _quiet_added.clear()
