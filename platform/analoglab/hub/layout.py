"""Where the platform keeps its state: everything under ``<home>/hub/`` of the data folder.

``hub/`` (mode 0700) holds the hub's SQLite database, its cookie secret, the generated
``jupyterhub_config.py``, the service tokens (``secrets/``), the admin's credentials file,
the lock and state files of a running ``up`` and the logs. Users' homes (where the platform
creates OS users) are under ``<home>/homes/``. Nothing here is created by this module: it only
names paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analoglab.config import Settings

HUB_FOLDER = "hub"
HOMES_FOLDER = "homes"


@dataclass(frozen=True)
class Layout:
    """The platform's paths under one data folder."""

    data: Path

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(settings.home.expanduser().resolve())

    @property
    def hub(self) -> Path:
        return self.data / HUB_FOLDER

    @property
    def homes(self) -> Path:
        return self.data / HOMES_FOLDER

    @property
    def lab_settings(self) -> Path:
        """JupyterLab's settings overrides for every user's server (readable by all)."""
        return self.data / "jupyterlab-settings"

    @property
    def secrets(self) -> Path:
        return self.hub / "secrets"

    @property
    def logs(self) -> Path:
        return self.hub / "logs"

    @property
    def db(self) -> Path:
        return self.hub / "jupyterhub.sqlite"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db}"

    @property
    def cookie_secret(self) -> Path:
        return self.hub / "jupyterhub_cookie_secret"

    @property
    def config_file(self) -> Path:
        return self.hub / "jupyterhub_config.py"

    @property
    def credentials(self) -> Path:
        """The admin's name and password, written on the first run (mode 0600)."""
        return self.hub / "admin-credentials.txt"

    @property
    def lock(self) -> Path:
        return self.hub / "platform.lock"

    @property
    def state(self) -> Path:
        """What the running ``up`` started: pids, ports, URLs (JSON)."""
        return self.hub / "platform.json"

    @property
    def hub_log(self) -> Path:
        return self.logs / "jupyterhub.log"

    @property
    def os_users(self) -> Path:
        """The OS accounts ``analoglab users add`` created (only those may be deleted)."""
        return self.hub / "os-users.json"

    def token_file(self, name: str) -> Path:
        return self.secrets / f"{name}.token"
