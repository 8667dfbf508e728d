"""The platform's commands: ``analoglab up``, ``analoglab status [--json]`` and
``analoglab users add|list|remove``.

:func:`register` adds them to the root ``analoglab`` command. Errors of ours are one line on
stderr and exit status 1 (a second ``up`` on a running data folder included).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from analoglab.cli.common import JsonFlag, handles_errors
from analoglab.config import get_settings

users_app = typer.Typer(
    help="The platform's users: add (researchers, reviewers, admins), list, remove.",
    no_args_is_help=True,
)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@handles_errors
def up(
    port: Annotated[int, typer.Option(help="The one public port (the hub's proxy).")] = 8000,
    ip: Annotated[
        str, typer.Option(help="Address to listen on; not loopback without TLS: a warning.")
    ] = "127.0.0.1",
    dev: Annotated[
        bool, typer.Option("--dev", help="One shared password for everyone (printed): dev only.")
    ] = False,
    single_os_user: Annotated[
        bool,
        typer.Option(
            "--single-os-user",
            help="Run every user's server as this OS user, even as root (no isolation).",
        ),
    ] = False,
    preset: Annotated[
        str | None,
        typer.Option("--preset", "-p", help="Demo models to build if missing (tiny, demo)."),
    ] = None,
    build: Annotated[
        bool, typer.Option("--build/--no-build", help="Build missing demo models first.")
    ] = True,
    admin: Annotated[str, typer.Option(help="The admin user's name.")] = "admin",
    mem_limit: Annotated[
        str | None, typer.Option(help="Per-user memory, e.g. 4G (advisory; sizes Dask).")
    ] = None,
    cpu_limit: Annotated[
        float | None, typer.Option(help="Per-user CPUs (advisory; sizes Dask).")
    ] = None,
    cull_timeout: Annotated[
        int, typer.Option(help="Stop a user's server idle this many seconds.", min=60)
    ] = 3600,
    cull_every: Annotated[int, typer.Option(help="How often the culler looks.", min=10)] = 300,
    kernel_cull_timeout: Annotated[
        int, typer.Option(help="Stop a kernel idle (never one running) this many seconds.", min=60)
    ] = 1800,
    ssl_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_key: Annotated[Path | None, typer.Option(help="TLS key (PEM).")] = None,
    notebooks: Annotated[
        Path | None, typer.Option(help="Shared notebooks copied into new homes.")
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo/--no-demo",
            help="Serve the public demo at /services/demo/ (where the demo extra is installed).",
        ),
    ] = True,
) -> None:
    """Run the platform on this machine in the foreground: JupyterHub, the queue, MLflow,
    the lab agents and the idle culler. Ctrl-C stops everything."""
    from analoglab.hub.platform import UpOptions
    from analoglab.hub.platform import up as run_up

    if (ssl_cert is None) != (ssl_key is None):
        raise typer.BadParameter("give both --ssl-cert and --ssl-key", param_hint="--ssl-cert")
    options = UpOptions(
        ip=ip,
        port=port,
        dev=dev,
        single_os_user=single_os_user,
        preset=preset,
        build=build,
        admin=admin,
        mem_limit=mem_limit,
        cpu_limit=cpu_limit,
        cull_timeout=cull_timeout,
        cull_every=cull_every,
        kernel_cull_timeout=kernel_cull_timeout,
        ssl_cert=ssl_cert,
        ssl_key=ssl_key,
        notebooks=notebooks,
        demo=demo,
    )
    status = run_up(get_settings(), options, _say)
    # Everything is stopped and the lock released: exit now rather than wait seconds for the
    # interpreter to tear down what the hub's imports left behind.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@handles_errors
def status(as_json: JsonFlag = False) -> None:
    """What the platform runs and where: URL, ports, processes. Exit 1 when it is not running."""
    from analoglab.hub.layout import Layout
    from analoglab.hub.status import platform_status

    info = platform_status(Layout.of(get_settings()))
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
    elif not info["running"]:
        _say(f"the platform of {info['data_folder']} is not running (start it: analoglab up)")
    else:
        _say(f"running at {info.get('url')} (pid {info.get('pid')}, {info.get('mode')} mode)")
        for name, port in (info.get("ports") or {}).items():
            if port:
                _say(f"  port {name:<10} {port}")
        for proc in info.get("processes", []):
            memory = f"{proc['rss_mb']:>7} MB"
            _say(f"  pid {proc['pid']:<7} {proc['user']:<10} {memory}  {proc['command'][:90]}")
    if not info["running"]:
        raise typer.Exit(1)


@users_app.command("add")
@handles_errors
def users_add(
    name: Annotated[str, typer.Argument(help="The user's name (also their OS account's).")],
    reviewer: Annotated[
        list[str] | None,
        typer.Option("--reviewer", help="Reviews this lab's jobs (instead of submitting)."),
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="A hub admin.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Add a user to the running platform and print their first password."""
    from analoglab.hub.layout import Layout
    from analoglab.hub.users import add_user

    added = add_user(Layout.of(get_settings()), name, reviewer=reviewer, admin=admin)
    if as_json:
        sys.stdout.write(json.dumps(added.__dict__) + "\n")
        return
    _say(
        f"added {added.name}: groups {', '.join(added.groups)}{', admin' if added.admin else ''}"
        + (" (OS user created)" if added.os_user_created else "")
    )
    if added.password:
        _say(f"password: {added.password}  (they can change it at /hub/change-password)")
    else:
        _say("password: the shared dev-mode password")


@users_app.command("list")
@handles_errors
def users_list(as_json: JsonFlag = False) -> None:
    """The users, their groups and servers, and sign-ups awaiting approval."""
    from analoglab.hub.layout import Layout
    from analoglab.hub.users import list_users

    info = list_users(Layout.of(get_settings()))
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    for u in info["users"]:
        admin = " admin" if u["admin"] else ""
        _say(f"{u['name']:<20} {u['server']:<9}{admin} {', '.join(u['groups'])}")
    if info["pending_signups"]:
        _say("awaiting approval (at /hub/authorize): " + ", ".join(info["pending_signups"]))


@users_app.command("remove")
@handles_errors
def users_remove(
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    delete_os_user: Annotated[
        bool,
        typer.Option("--delete-os-user", help="Also delete the OS account `users add` made."),
    ] = False,
) -> None:
    """Remove a user (their server stops; their files stay)."""
    from analoglab.hub.layout import Layout
    from analoglab.hub.users import remove_user

    deleted = remove_user(Layout.of(get_settings()), name, delete_os_user_too=delete_os_user)
    _say(f"removed {name}" + (" and its OS account" if deleted else ""))


def register(app: typer.Typer) -> None:
    """Add ``up``, ``status`` and ``users`` to the root command."""
    app.command("up")(up)
    app.command("status")(status)
    app.add_typer(users_app, name="users")
