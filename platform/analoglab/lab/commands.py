"""``analoglab lab``: the agent of a lab site, which runs approved jobs on the lab's frontier
models and posts their checked (and signed) results; ``verify-result``, which checks a
released result against the lab's public key.

The agent, its executors and torch load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from analoglab.cli.common import (
    err,
    handles_errors,
    out,
)
from analoglab.config import get_settings
from analoglab.errors import AnalogLabError

lab_app = typer.Typer(
    help="A lab site: the agent that runs approved jobs on the lab's frontier models.",
    no_args_is_help=True,
)


@lab_app.command("agent")
@handles_errors
def lab_agent(
    lab: Annotated[
        str | None, typer.Option("--lab", help="The lab; default: `lab` in the config.")
    ] = None,
    hub: Annotated[
        str | None, typer.Option("--hub", help="The queue's URL; default: `hub` in the config.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the agent's token (mode 600)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The site's lab.toml; default: <lab_sites>/<lab>/lab.toml."),
    ] = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="Exit after this many jobs.")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", help="Exit after this many idle seconds.")
    ] = None,
) -> None:
    """Run the lab agent: claim approved jobs, run them, check and post their results."""
    import logging
    import os
    import signal

    from rich.logging import RichHandler

    from analoglab.lab.agent import Agent
    from analoglab.lab.config import load_lab_config
    from analoglab.lab.executors import make_executor
    from analoglab.queue.client import QueueClient

    if config is None:
        if lab is None:
            raise typer.BadParameter("give --config or --lab", param_hint="--config")
        config = get_settings().lab_sites_path / lab / "lab.toml"
    cfg = load_lab_config(config)
    if lab is not None and lab != cfg.lab:
        raise AnalogLabError(f"{config} is the site of lab {cfg.lab!r}, not {lab!r}")
    url = hub or cfg.hub
    if not url:
        raise typer.BadParameter(
            "no hub URL: give --hub or set `hub` in lab.toml", param_hint="--hub"
        )
    token_path = token_file or cfg.token_file
    if token_path is None:
        raise typer.BadParameter("give --token-file (or `token_file` in lab.toml)")
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise AnalogLabError(f"cannot read the token file {token_path}: {exc.strerror}") from exc
    if not token:
        raise AnalogLabError(f"the token file {token_path} is empty")
    if token_path.stat().st_mode & 0o077:
        err.print(f"[yellow]warning:[/yellow] {token_path} is readable by others; chmod 600 it")
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, markup=False)],
    )
    executor = make_executor(cfg)
    client = QueueClient(url, token)
    agent = Agent(
        cfg,
        client,
        executor,
        withheld_dir=config.parent / "withheld",
        outbox_dir=config.parent / "outbox",
    )

    def on_signal(*_: object) -> None:
        if agent.stopping:  # the second signal: do not wait for the hub any longer
            err.print("stopping now; jobs still held return to the queue when their leases end")
            os._exit(1)
        err.print("stopping: giving back the current job (signal again to quit at once)")
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    err.print(
        f"lab agent of {cfg.lab} on {url}: {len(cfg.models)} frontier(s), "
        f"{cfg.executor.kind} executor"
    )
    try:
        stats = agent.run(max_jobs=max_jobs, idle_exit=idle_exit)
    finally:
        executor.close()
        client.close()
    err.print(
        f"stopped: {stats.claimed} claimed, {stats.posted} posted, {stats.withheld} withheld, "
        f"{stats.failed} failed, {stats.given_back} given back, {stats.lost} lost, "
        f"{stats.replayed} replayed from the outbox"
    )
    if agent.outbox is not None and (left := agent.outbox.pending()):
        err.print(
            f"{len(left)} finished result(s) wait in {agent.outbox.folder}: "
            "posted at the next start"
        )


@lab_app.command("verify-result")
@handles_errors
def lab_verify_result(
    path: Annotated[
        Path, typer.Argument(help="A saved answer of GET /api/jobs/<id>/result (JSON).")
    ],
    lab: Annotated[
        str | None, typer.Option("--lab", help="Check against this lab's key in the catalog.")
    ] = None,
    public_key: Annotated[
        str | None, typer.Option("--public-key", help="The lab's key, 'ed25519:<base64>'.")
    ] = None,
) -> None:
    """Check that a released result is signed by its lab (exit 1 if it is not)."""
    from analoglab.lab.release import verify_result_file
    from analoglab.models.catalog import Catalog

    if (lab is None) == (public_key is None):
        raise typer.BadParameter("give the lab (--lab) or its key (--public-key), one of them")
    if public_key is None:
        assert lab is not None
        public_key = Catalog.load(get_settings()).lab(lab).public_key
        if public_key is None:
            raise AnalogLabError(
                f"the catalog records no public key for lab {lab!r}; give --public-key"
            )
    key_id = verify_result_file(path, public_key)
    out.print(f"ok: the result in {path} is signed by lab key {key_id}")
