"""``analoglab demo``: serve the public demo, and publish a steering result to it.

Standalone it listens on loopback (``--host 127.0.0.1``); put a proxy in front of it to open
it to others, and give that proxy's prefix with ``--root-path``. Run by JupyterHub as a
service (``analoglab up``), it takes its address and prefix from ``JUPYTERHUB_SERVICE_URL``
and ``JUPYTERHUB_SERVICE_PREFIX`` when they are not given.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Annotated

import typer

from analoglab.cli.common import DeviceOpt, handles_errors, out

demo_app = typer.Typer(
    help="The public demo: talk to the analogs, steer them, look inside.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@demo_app.callback()
@handles_errors
def demo(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(help="Interface; default 127.0.0.1 (or JUPYTERHUB_SERVICE_URL's)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port; default 7860 (or JUPYTERHUB_SERVICE_URL's).")
    ] = None,
    root_path: Annotated[
        str | None,
        typer.Option(
            help="The prefix it is reached under behind a proxy, e.g. /services/demo "
            "(default JUPYTERHUB_SERVICE_PREFIX, else none)."
        ),
    ] = None,
    mlflow_link: Annotated[
        str | None,
        typer.Option(help="The MLflow UI as visitors reach it, for links to runs."),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Serve the public demo (Gradio) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from analoglab.config import get_settings
    from analoglab.demos.app import build_app, serve

    service = urllib.parse.urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
    host = host or service.hostname or "127.0.0.1"
    port = port or service.port or 7860
    prefix = root_path if root_path is not None else os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
    out.print(f"loading the analogs for the demo on {host}:{port}{prefix.rstrip('/')}/ ...")
    app = build_app(get_settings(), mlflow_link=mlflow_link, device=device)
    out.print(f"the demo is ready at http://{host}:{port}{prefix.rstrip('/')}/")
    serve(app, host=host, port=port, root_path=prefix)


@demo_app.command("publish")
@handles_errors
def publish_command(
    run_id: Annotated[str, typer.Argument(help="The MLflow run of a steering result.")],
    withdraw: Annotated[
        bool, typer.Option("--withdraw", help="Take it out of the demo again.")
    ] = False,
) -> None:
    """Show a steering result's vector in the public demo (tag analoglab.public=1)."""
    from analoglab.config import get_settings
    from analoglab.demos.published import publish

    publish(run_id, get_settings(), public=not withdraw)
    out.print(f"run {run_id} is {'withdrawn from' if withdraw else 'published to'} the demo")
