"""``analoglab tracking``: register analog cards in MLflow and run the tracking server; and
the logging of a local run that ``analoglab run --track`` does.

mlflow loads inside the commands, never at import.
"""

from __future__ import annotations

import shlex
import sys
from typing import Annotated, Any

import typer

from analoglab.cli.common import (
    JsonFlag,
    err,
    handles_errors,
    out,
    print_json,
)
from analoglab.config import get_settings, mask_uri

tracking_app = typer.Typer(
    help="Shared results in MLflow: analog cards, the tracking server.", no_args_is_help=True
)


def track_result(spec: Any, result: Any, model: str) -> None:
    """Log a local run to MLflow and say where it went (on stderr: stdout may be JSON)."""
    from analoglab.tracking import TrackingStore, log_result

    settings = get_settings()
    run_id = log_result(spec, result, model=model, settings=settings)
    store = TrackingStore.open(settings)
    url = store.run_url(store.experiment_id(), run_id)
    err.print(f"logged to MLflow: run {run_id} ({url or mask_uri(store.uri)})")


@tracking_app.command("register-analogs")
@handles_errors
def tracking_register_analogs(as_json: JsonFlag = False) -> None:
    """Log each analog card and register it in the MLflow model registry (idempotent)."""
    from analoglab.tracking import TrackingStore, register_analogs

    settings = get_settings()
    done = register_analogs(settings=settings)
    if as_json:
        print_json(
            {
                "tracking_uri": mask_uri(TrackingStore.open(settings).uri),
                "analogs": [r.to_dict() for r in done],
            }
        )
        return
    if not done:
        out.print("no analogs in the model store (`analoglab models build` makes the demo ones)")
    for r in done:
        out.print(
            f"{r.name:<24} version {r.version:<4} {r.status:<12} analog of {r.frontier} ({r.lab})"
        )


@tracking_app.command(
    "server", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@handles_errors
def tracking_server(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 1,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(help="Database; default: sqlite:///<home>/mlflow/mlflow.db."),
    ] = None,
    artifacts_destination: Annotated[
        str | None, typer.Option(help="Served artifacts; default: <home>/mlflow/artifacts.")
    ] = None,
    print_command: Annotated[
        bool, typer.Option("--print-command", help="Print the mlflow command; do not run it.")
    ] = False,
) -> None:
    """Run `mlflow server` on the data folder's SQLite store with served artifacts.

    Further options go to `mlflow server` as they are (e.g. --allowed-hosts)."""
    import os

    from analoglab.tracking.server import ServerOptions, server_command, server_url
    from analoglab.tracking.store import artifacts_path

    settings = get_settings()
    options = ServerOptions(
        host=host,
        port=port,
        workers=workers,
        backend_store_uri=backend_store_uri,
        artifacts_destination=artifacts_destination,
        extra=list(ctx.args),
    )
    command = server_command(settings, options)
    if print_command:
        sys.stdout.write(shlex.join(command) + "\n")
        return
    artifacts_path(settings).mkdir(parents=True, exist_ok=True)
    err.print(
        f"MLflow at {server_url(host, port)} (clients: "
        f"ANALOGLAB_MLFLOW_TRACKING_URI={server_url(host, port)})"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


@tracking_app.command("gate")
@handles_errors
def tracking_gate(
    upstream: Annotated[
        str | None,
        typer.Option(
            help="An MLflow server already running (http://127.0.0.1:PORT) to put behind the "
            "gate; default: start one (the data folder's store, loopback only) and supervise it."
        ),
    ] = None,
    mlflow_port: Annotated[
        int | None,
        typer.Option(help="Port of the MLflow server it starts; default: a free one."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface; default: from JUPYTERHUB_SERVICE_URL.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port; default: from JUPYTERHUB_SERVICE_URL, else 8766.")
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(help="URL prefix; default: JUPYTERHUB_SERVICE_PREFIX, else /services/mlflow."),
    ] = None,
    cache_seconds: Annotated[
        int, typer.Option(min=0, help="How long the hub's answer about a token is reused.")
    ] = 60,
) -> None:
    """Serve MLflow behind the hub's sign-in: run as the JupyterHub service `mlflow`.

    Browsers sign in with the hub's OAuth; programs send a hub token (MLFLOW_TRACKING_TOKEN).
    Without --upstream it also starts `mlflow server` on a private loopback port and stops it
    on SIGTERM/Ctrl-C (see docs/tracking.md)."""
    import socket

    from analoglab.tracking.gate import GateConfig, service_binding
    from analoglab.tracking.server import ServerOptions, serve_behind_hub, server_url

    settings = get_settings()
    bind_host, bind_port, url_prefix = service_binding(host, port, prefix)
    mlflow = None
    if upstream is None:
        if mlflow_port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                mlflow_port = int(s.getsockname()[1])
        mlflow = ServerOptions(host="127.0.0.1", port=mlflow_port)
        upstream = server_url("127.0.0.1", mlflow_port)
    gate = GateConfig(upstream=upstream, prefix=url_prefix, cache_seconds=cache_seconds)
    err.print(f"MLflow gate at {bind_host}:{bind_port}{url_prefix}/ in front of {upstream}")
    serve_behind_hub(settings, gate, host=bind_host, port=bind_port, mlflow=mlflow)
