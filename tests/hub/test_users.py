"""Users' OS accounts and the shared notebooks handed to them (no hub needed).

OS accounts are made for real with ``useradd`` when the suite runs as root (CI does), under a
random name, and deleted at the end; elsewhere those tests are skipped.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from analoglab.hub.layout import Layout
from analoglab.hub.spawn import copy_shared_notebooks
from analoglab.hub.users import (
    UsersError,
    check_name,
    delete_os_user,
    ensure_os_user,
    os_user_exists,
)


def test_shared_notebooks_are_handed_out_once(tmp_path: Path) -> None:
    source, home = tmp_path / "shared", tmp_path / "home"
    source.mkdir()
    for name in ("01-a.ipynb", "02-b.ipynb"):
        (source / name).write_text(f'{{"source": "{name}"}}')
    assert copy_shared_notebooks(source, home) == ["01-a.ipynb", "02-b.ipynb"]
    mine = home / "shared-notebooks"
    (mine / "01-a.ipynb").write_text("my edits")
    (mine / "02-b.ipynb").unlink()
    (source / "03-c.ipynb").write_text("{}")
    # the next start: edits kept, a deleted notebook not brought back, a new one handed out
    assert copy_shared_notebooks(source, home) == ["03-c.ipynb"]
    assert (mine / "01-a.ipynb").read_text() == "my edits"
    assert not (mine / "02-b.ipynb").exists()
    assert copy_shared_notebooks(source, home) == []
    assert copy_shared_notebooks(tmp_path / "missing", home) == []


@pytest.mark.parametrize("name", ["Ada", "a b", "a/b", "", "-x", "a" * 33, "service:x"])
def test_unusable_names_are_refused(name: str) -> None:
    with pytest.raises(UsersError, match="not a usable user name"):
        check_name(name)


@pytest.fixture
def os_name() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("creating OS users needs root")
    name = f"alt{secrets.token_hex(3)}"
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)


def test_os_accounts_are_made_once_and_only_ours_deleted(tmp_path: Path, os_name: str) -> None:
    layout = Layout(tmp_path / "data")
    assert ensure_os_user(os_name, layout) is True
    entry = pwd.getpwnam(os_name)
    home = Path(entry.pw_dir)
    assert home == layout.homes / os_name
    assert home.stat().st_uid == entry.pw_uid and home.stat().st_mode & 0o777 == 0o700
    assert json.loads(layout.os_users.read_text()) == [os_name]
    assert layout.os_users.stat().st_mode & 0o777 == 0o600
    assert ensure_os_user(os_name, layout) is False  # exists: left alone

    assert delete_os_user("root", layout) is False  # never made by us: never deleted
    assert os_user_exists("root")
    assert delete_os_user(os_name, layout) is True
    assert not os_user_exists(os_name)
    assert json.loads(layout.os_users.read_text()) == []
