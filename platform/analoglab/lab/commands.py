"""``analoglab lab``: the agent of a lab site, which runs approved jobs on the lab's frontier
models and posts their checked (and signed) results; ``verify-result``, which checks a
released result against the lab's public key; ``map fit`` / ``map list``, the site's residual
maps (fitted and kept at the site); ``layout``, a frontier's verified hook layout as JSON.

The agent, its executors and torch load inside the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from analoglab.cli.common import (
    DeviceOpt,
    JsonFlag,
    err,
    handles_errors,
    out,
    print_json,
)
from analoglab.config import get_settings
from analoglab.errors import AnalogLabError
from analoglab.experiments.commands import (
    MAP_DEPTHS,
    MapContextOpt,
    MapCorpusOpt,
    MapDepthsOpt,
    MapL2Opt,
    MapSeedOpt,
    MapTextsOpt,
    check_map_options,
    print_map_fit,
)
from analoglab.experiments.mapping import MIN_CONTEXT

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


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="The site's lab.toml; default: <lab_sites>/<lab>/lab.toml."),
]
LabOpt = Annotated[
    str | None,
    typer.Option("--lab", help="The lab (its site on this machine); or give --config."),
]
VolumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--volume-root",
        help="With the kubernetes executor: where the weights volume is mounted here (the "
        "site's model and maps paths are inside it).",
    ),
]


@dataclass(frozen=True)
class _Site:
    """A site's config, with its weights and maps as paths on this machine."""

    cfg: Any
    config: Path
    maps: Path

    def weights(self, frontier: str) -> tuple[Path, str | None]:
        entry = self.cfg.weights(frontier)
        return Path(entry.path), entry.sha256


def _site(lab: str | None, config: Path | None, volume_root: Path | None = None) -> _Site:
    from analoglab.lab.config import MAPS, LocalExecutorConfig, load_lab_config

    if config is None:
        if lab is None:
            sites = sorted(get_settings().lab_sites_path.glob("*/lab.toml"))
            if len(sites) != 1:
                raise typer.BadParameter("give --lab or --config", param_hint="--lab")
            config = sites[0]
        else:
            config = get_settings().lab_sites_path / lab / "lab.toml"
    cfg = load_lab_config(config)
    if lab is not None and lab != cfg.lab:
        raise AnalogLabError(f"{config} is the site of lab {cfg.lab!r}, not {lab!r}")
    if isinstance(cfg.executor, LocalExecutorConfig):
        assert cfg.maps is not None
        return _Site(cfg, config, Path(cfg.maps))
    # Kubernetes: the paths in lab.toml are inside the weights volume.
    if volume_root is None:
        raise typer.BadParameter(
            "this site runs on Kubernetes: its weights and maps are in the weights volume; "
            "run this where that volume is mounted and give --volume-root",
            param_hint="--volume-root",
        )
    root = volume_root.expanduser().resolve()

    def inside(path: Path) -> Path:
        full = (root / path).resolve() if not path.is_absolute() else path
        if full != root and root not in full.parents:
            raise AnalogLabError(f"{path} is outside the weights volume mounted at {root}")
        return full

    models = {k: v.model_copy(update={"path": inside(Path(v.path))}) for k, v in cfg.models.items()}
    cfg = cfg.model_copy(update={"models": models})
    return _Site(cfg, config, inside(Path(cfg.maps or MAPS)))


map_app = typer.Typer(
    help="The site's residual maps between analogs and its frontiers (they stay at the lab).",
    no_args_is_help=True,
)
lab_app.add_typer(map_app, name="map")


@map_app.command("fit")
@handles_errors
def lab_map_fit(
    frontier: Annotated[str, typer.Option("--frontier", "-f", help="A frontier of this site.")],
    analog: Annotated[str, typer.Option("--analog", "-a", help="The analog (name or folder).")],
    depths: MapDepthsOpt = None,
    texts: MapTextsOpt = 256,
    corpus: MapCorpusOpt = "general",
    l2: MapL2Opt = None,
    seed: MapSeedOpt = 0,
    min_context: MapContextOpt = MIN_CONTEXT,
    lab: LabOpt = None,
    config: ConfigOpt = None,
    volume_root: VolumeOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Fit the residual map between an analog and one of this site's frontiers on a corpus,
    and store it in the site's maps folder (atomically), where mapped jobs find it.

    The map stays at the lab: nothing sends it to the hub (releasing one is a release decision).
    """
    from analoglab.lab.maps import fit_site_map

    check_map_options(l2, texts, min_context)
    site = _site(lab, config, volume_root)
    weights, sha256 = site.weights(frontier)
    rmap, path = fit_site_map(
        site.maps,
        frontier=frontier,
        weights=weights,
        sha256=sha256,
        analog=analog,
        depths=depths or MAP_DEPTHS,
        texts=texts,
        corpus=corpus,
        l2=l2,
        seed=seed,
        min_context=min_context,
        device=device,
    )
    if as_json:
        print_json(rmap.summary() | {"path": str(path)})
        return
    print_map_fit(rmap, f"stored at {path} (it stays at the lab)")


@map_app.command("list")
@handles_errors
def lab_map_list(
    lab: LabOpt = None,
    config: ConfigOpt = None,
    volume_root: VolumeOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """The residual maps this site holds: frontier, analog, depths and their held-out R²."""
    from analoglab.lab.maps import list_maps

    site = _site(lab, config, volume_root)
    found = list_maps(site.maps)
    if as_json:
        print_json({"maps": [m.as_dict() for m in found], "folder": str(site.maps)})
        return
    if not found:
        out.print(
            f"no residual maps in {site.maps}; fit one with "
            "`analoglab lab map fit --frontier ID --analog NAME`"
        )
        return
    for m in found:
        if m.problem:
            out.print(f"{m.frontier} ← {m.analog}: {m.problem}")
            continue
        r2 = ", ".join(
            f"{layer['depth']:g}: {layer['r2_forward']:.3f}" for layer in m.summary["layers"]
        )
        out.print(
            f"{m.frontier} ← {m.analog}: {m.summary.get('tokens_fit', 0):,} tokens, "
            f"held-out R² by depth {r2}  ({m.path})"
        )


@lab_app.command("layout")
@handles_errors
def lab_layout(
    frontier: Annotated[str, typer.Option("--frontier", "-f", help="A frontier of this site.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the report (JSON) to this file.")
    ] = None,
    lab: LabOpt = None,
    config: ConfigOpt = None,
    volume_root: VolumeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Verify a frontier's hook layout and print (or write) its report as JSON.

    The report (LayoutReport.to_dict) is what the lab may publish about its frontier: no
    weights, no values. Exit 1 when the layout fails its self-test (the report says why)."""
    import json

    from analoglab.files import atomic_write
    from analoglab.models.loading import load_model

    site = _site(lab, config, volume_root)
    weights, sha256 = site.weights(frontier)
    loaded = load_model(weights, device=device or "cpu", name=frontier, expected_sha256=sha256)
    report = loaded.layout
    if report is None:  # load_model verifies by default; never None here
        raise AnalogLabError(f"{frontier}: no layout report")
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"
    if out_path is None:
        out.print(text, end="", markup=False)
    else:
        atomic_write(out_path, text)
        err.print(f"wrote {out_path}")
    err.print(f"{frontier}: {report.summary()}", markup=False)
    if not report.verified:
        raise typer.Exit(1)
