"""The platform's users: hub accounts, their passwords, groups and OS accounts.

``analoglab users add NAME`` (the platform must be running) creates the hub user through the
hub's REST API with the token of the ``analoglab-cli`` service, puts it in its groups
(``researchers``; ``reviewers-<lab>`` instead with ``--reviewer``; ``admins`` too with
``--admin``), and gives it a generated password in ``nativeauthenticator``'s table (a bcrypt
hash, the sign-up already approved). In per-user mode (the platform runs as root) it first
creates the OS account (``useradd``, home under ``<home>/homes/``), recorded in
``hub/os-users.json``: ``users remove --delete-os-user`` deletes only accounts recorded there.

Users can also sign up on the hub's sign-up page; an admin approves them at ``/hub/authorize``
and the spawn hook creates their OS account on their first server start.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from analoglab.errors import AnalogLabError
from analoglab.files import atomic_write
from analoglab.hub.config import ADMINS, RESEARCHERS, reviewers_group
from analoglab.hub.layout import Layout

# What both JupyterHub and useradd accept (and nativeauthenticator: no ',', ' ' or '/').
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class UsersError(AnalogLabError):
    """A user cannot be added, listed or removed (bad name, platform not running, ...)."""


def check_name(name: str) -> None:
    if not USER_NAME.fullmatch(name):
        raise UsersError(
            f"{name!r} is not a usable user name: lower-case letters, digits, '-' and '_', "
            "starting with a letter or '_', at most 32 characters"
        )


def new_password() -> str:
    return secrets.token_urlsafe(12)


def os_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _created(layout: Layout) -> list[str]:
    try:
        names = json.loads(layout.os_users.read_text())
    except (OSError, ValueError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def ensure_os_user(name: str, layout: Layout) -> bool:
    """Create the OS account ``name`` (home ``<home>/homes/<name>``, mode 0700) unless it
    exists; True when it was created."""
    check_name(name)
    if os_user_exists(name):
        return False
    if os.geteuid() != 0:
        raise UsersError(f"the OS user {name!r} does not exist and only root can create it")
    layout.homes.mkdir(parents=True, exist_ok=True)
    layout.homes.chmod(0o755)
    home = layout.homes / name
    cmd = ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash"]
    cmd += ["--user-group", "--comment", "Analog Lab user", name]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsersError(f"useradd {name} failed: {done.stderr.strip() or done.returncode}")
    home.chmod(0o700)
    atomic_write(
        layout.os_users, json.dumps(sorted({*_created(layout), name})).encode(), perms=0o600
    )
    return True


def delete_os_user(name: str, layout: Layout) -> bool:
    """Delete the OS account ``name`` if ``users add`` created it (its home stays)."""
    created = _created(layout)
    if name not in created or not os_user_exists(name):
        return False
    done = subprocess.run(["userdel", name], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsersError(f"userdel {name} failed: {done.stderr.strip() or done.returncode}")
    created.remove(name)
    atomic_write(layout.os_users, json.dumps(created).encode(), perms=0o600)
    return True


def set_password(layout: Layout, name: str, password: str) -> None:
    """Store ``name``'s password in nativeauthenticator's table (approved), replacing one."""
    import bcrypt
    from nativeauthenticator.orm import UserInfo  # type: ignore[import-untyped]
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.orm import Session

    engine = create_engine(layout.db_url)
    try:
        if "users_info" not in inspect(engine).get_table_names():
            raise UsersError(
                f"{layout.db} has no password table: is the platform running with the "
                "native authenticator (not --dev)?"
            )
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        with Session(engine) as session:
            info = session.query(UserInfo).filter(UserInfo.username == name).first()
            if info is None:
                session.add(UserInfo(username=name, password=hashed, is_authorized=True))
            else:
                info.password = hashed
                info.is_authorized = True
            session.commit()
    finally:
        engine.dispose()


def pending_signups(layout: Layout) -> list[str]:
    """Names that signed up and wait for an admin's approval."""
    from sqlalchemy import create_engine, inspect, text

    if not layout.db.is_file():
        return []
    engine = create_engine(layout.db_url)
    try:
        if "users_info" not in inspect(engine).get_table_names():
            return []
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT username FROM users_info WHERE NOT is_authorized ORDER BY username")
            )
            return [str(r[0]) for r in rows]
    finally:
        engine.dispose()


@dataclass
class HubAPI:
    """The hub's REST API with the ``analoglab-cli`` service's token."""

    url: str
    token: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
        )

    def call(self, method: str, path: str, ok: tuple[int, ...] = (), **kwargs: Any) -> Any:
        try:
            resp = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UsersError(
                f"the hub at {self.url} does not answer ({exc}); is it running?"
            ) from exc
        if resp.status_code >= 300 and resp.status_code not in ok:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise UsersError(f"the hub refused {method} {path}: {resp.status_code} {message}")
        return resp.json() if resp.content and resp.status_code < 300 else None

    def close(self) -> None:
        self.client.close()


def hub_api(layout: Layout) -> tuple[HubAPI, dict[str, Any]]:
    """A client of the running platform's hub, and the platform's state."""
    from analoglab.hub.status import read_running

    state = read_running(layout)
    if state is None:
        raise UsersError(
            f"the platform of {layout.data} is not running: start it with `analoglab up`"
        )
    try:
        token = layout.token_file("analoglab-cli").read_text().strip()
    except OSError as exc:
        raise UsersError(
            f"cannot read the hub token ({exc.strerror}): run as root or as the platform's owner"
        ) from exc
    return HubAPI(str(state["hub_api_url"]), token), state


@dataclass(frozen=True)
class AddedUser:
    name: str
    password: str | None  # None: dev mode (the shared password) or an existing password kept
    groups: list[str]
    admin: bool
    os_user_created: bool


def add_user(
    layout: Layout,
    name: str,
    *,
    reviewer: list[str] | None = None,
    admin: bool = False,
    password: str | None = None,
) -> AddedUser:
    """Add (or update) a user of the running platform (see the module docstring)."""
    check_name(name)
    api, state = hub_api(layout)
    try:
        labs = list(state.get("labs") or [])
        for lab in reviewer or []:
            if lab not in labs:
                raise UsersError(
                    f"no lab {lab!r} on this platform; labs: {', '.join(labs) or 'none'}"
                )
        created = False
        if state.get("mode") == "per-user":
            created = ensure_os_user(name, layout)
        exists = api.call("GET", f"/users/{name}", ok=(404,)) is not None
        if not exists:
            api.call("POST", f"/users/{name}")
        if admin:
            api.call("PATCH", f"/users/{name}", json={"admin": True})
        groups = [reviewers_group(lab) for lab in reviewer or []] or [RESEARCHERS]
        if admin:
            groups.append(ADMINS)
        for group in groups:
            api.call("POST", f"/groups/{group}/users", json={"users": [name]})
        secret = None
        if state.get("auth") == "native":
            secret = password or new_password()
            set_password(layout, name, secret)
        return AddedUser(name, secret, groups, admin, created)
    finally:
        api.close()


def list_users(layout: Layout) -> dict[str, Any]:
    api, _ = hub_api(layout)
    try:
        users = api.call("GET", "/users") or []
    finally:
        api.close()
    rows = [
        {
            "name": u["name"],
            "admin": bool(u.get("admin")),
            "groups": sorted(u.get("groups") or []),
            "server": "running"
            if (u.get("servers") or {}).get("", {}).get("ready")
            else ("starting" if u.get("pending") else "stopped"),
            "last_activity": u.get("last_activity"),
        }
        for u in users
    ]
    return {"users": rows, "pending_signups": pending_signups(layout)}


def remove_user(layout: Layout, name: str, *, delete_os_user_too: bool = False) -> bool:
    """Delete the hub user (its server stopped, its password gone); True when the OS account
    was deleted too."""
    check_name(name)
    api, _ = hub_api(layout)
    try:
        if api.call("GET", f"/users/{name}", ok=(404,)) is None:
            raise UsersError(f"no user {name!r} on this platform")
        api.call("DELETE", f"/users/{name}/server", ok=(400, 404))
        api.call("DELETE", f"/users/{name}")
    finally:
        api.close()
    return delete_os_user(name, layout) if delete_os_user_too else False


def home_of(name: str) -> Path | None:
    try:
        return Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        return None
