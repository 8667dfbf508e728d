"""What the hub runs when it starts a user's server (imported by ``jupyterhub_config.py``).

:func:`pre_spawn` (``Spawner.pre_spawn_hook``): in per-user mode, the user's OS account is
created if an admin approved a sign-up that has none yet; the home folder exists; the shared
notebooks are copied into ``~/shared-notebooks/`` — each one once: a notebook the user edited
or deleted is never brought back, a notebook added to the platform later is. In per-user mode
the copies belong to the user.

:func:`server_token` gives a server's environment its own hub token as
``MLFLOW_TRACKING_TOKEN``, so MLflow's client signs in to the gate with it.

The hub's environment tells these hooks where things are: ``ANALOGLAB_HOME`` (the data
folder) and ``ANALOGLAB_SHARED_NOTEBOOKS`` (a folder of ``.ipynb`` files; unset: none).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nativeauthenticator  # type: ignore[import-untyped]

from analoglab.files import atomic_write
from analoglab.hub.layout import Layout

NATIVE_TEMPLATES = str(Path(nativeauthenticator.__file__).parent / "templates")
NOTEBOOKS_FOLDER = "shared-notebooks"
COPIED = ".copied.json"  # the notebooks already handed out, in the user's folder


def server_token(spawner: Any) -> str:
    return str(spawner.api_token)


def copy_shared_notebooks(
    source: Path, home: Path, owner: tuple[int, int] | None = None
) -> list[str]:
    """Copy the notebooks of ``source`` not yet handed out into ``home/shared-notebooks``;
    return their names. ``owner``: (uid, gid) of the copies."""
    if not source.is_dir():
        return []
    target = home / NOTEBOOKS_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    ledger = target / COPIED
    try:
        done = set(json.loads(ledger.read_text()))
    except (OSError, ValueError):
        done = set()
    copied = []
    for notebook in sorted(source.glob("*.ipynb")):
        if notebook.name in done:
            continue
        dest = target / notebook.name
        if not dest.exists():
            shutil.copyfile(notebook, dest)
            copied.append(notebook.name)
        done.add(notebook.name)
    atomic_write(ledger, json.dumps(sorted(done)).encode())
    if owner is not None:
        for path in (target, ledger, *(target / name for name in copied)):
            os.chown(path, *owner)
    return copied


def pre_spawn(spawner: Any) -> None:
    """Make the user's account, home and notebooks ready (see the module docstring)."""
    from jupyterhub.spawner import SimpleLocalProcessSpawner  # type: ignore[import-untyped]

    name = str(spawner.user.name)
    owner: tuple[int, int] | None = None
    if isinstance(spawner, SimpleLocalProcessSpawner):
        home = Path(spawner.home_dir)
        home.mkdir(parents=True, exist_ok=True)
    else:
        import pwd

        from analoglab.hub.users import ensure_os_user

        layout = Layout(Path(os.environ["ANALOGLAB_HOME"]))
        ensure_os_user(name, layout)
        entry = pwd.getpwnam(name)
        home, owner = Path(entry.pw_dir), (entry.pw_uid, entry.pw_gid)
    source = os.environ.get("ANALOGLAB_SHARED_NOTEBOOKS")
    if source:
        copied = copy_shared_notebooks(Path(source), home, owner)
        if copied:
            spawner.log.info("copied %d shared notebooks to %s", len(copied), home)
