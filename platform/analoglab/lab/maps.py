"""The lab site's residual maps: where they live, how they are stored and found again.

A residual map (:class:`~analoglab.experiments.mapping.ResidualMap`) between an analog and a
frontier is fitted at the lab site (``analoglab lab map fit``: it needs the frontier's
activations; on the toy world's general text by default, ``--corpus`` to choose) and kept
there, one file per pair::

    <maps>/<frontier>/<analog>.npz

``<maps>`` is the ``maps`` folder of ``lab.toml`` (default: ``maps`` beside it; with the
kubernetes executor a folder inside the weights volume). The worker of a ``mapped_steering`` /
``mapped_probe`` job reads the map of (the artifact's analog, the job's frontier) from there
(:func:`load_site_map`), checks that it was fitted on the very weights it loaded, and passes it
to the run. Nothing here sends a map anywhere: a map leaves the lab only by the lab's own
release decision; results carry its fit (R²), never its matrices.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analoglab.errors import AnalogLabError
from analoglab.files import fsync_dir

#: The names a map may be filed under (analogs and frontiers; never a path).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SUFFIX = ".npz"


class SiteMapError(AnalogLabError):
    """A residual map the lab site does not have, or cannot use as asked."""


def _checked(name: str, what: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise SiteMapError(
            f"{what} {name[:80]!r} is not a model name this lab site files maps under"
        )
    return name


def fit_command(frontier: str, analog: str) -> str:
    """The command that fits (and stores) the map of ``analog`` → ``frontier`` at the site."""
    return f"analoglab lab map fit --frontier {frontier} --analog {analog}"


def map_path(folder: Path, frontier: str, analog: str) -> Path:
    """Where the site keeps the map between ``analog`` and ``frontier``."""
    return (
        Path(folder)
        / _checked(frontier, "the frontier")
        / (_checked(analog, "the analog") + SUFFIX)
    )


def store_map(folder: Path, rmap: Any) -> Path:
    """Write ``rmap`` (a ResidualMap) to its place in the site's store, atomically: a unique
    temporary file in the same folder, fsync, rename, fsync of the folder — after a crash the
    map is whole or absent, and a worker never reads half of one."""
    path = map_path(folder, rmap.frontier, rmap.analog)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        rmap.save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def fit_site_map(
    folder: Path,
    *,
    frontier: str,
    weights: Path,
    sha256: str | None,
    analog: str,
    depths: list[float],
    texts: int = 256,
    corpus: str = "general",
    l2: float | None = None,
    seed: int = 0,
    device: str | None = None,
    settings: Any = None,
    min_context: int | None = None,
) -> tuple[Any, Path]:
    """Fit the map between ``analog`` (a name in the model store, or a folder) and the site's
    ``frontier`` (its weights, checked against ``sha256``) on ``texts`` texts of ``corpus``
    (:data:`~analoglab.experiments.mapping.CORPORA`; ``general``, the toy world's mixed text,
    by default: what the foundry's maps stage and ``lab map fit`` use), as ``analoglab map
    fit`` does, and store it (:func:`store_map`); the map and its path. ``l2`` None: the
    ridge strength is chosen by validation R². ``min_context`` None: the default
    (:data:`~analoglab.experiments.mapping.MIN_CONTEXT`). An unknown corpus or a negative
    ``l2`` fails before anything is loaded or written."""
    from analoglab.experiments.mapping import MIN_CONTEXT, MapError, fit_map, map_corpus
    from analoglab.models.loading import load_any, load_model

    if l2 is not None and l2 <= 0:
        raise MapError(f"the ridge strength l2 must be > 0, not {l2:g} (or left out)")
    corpus_texts = map_corpus(corpus, texts, seed)
    map_path(folder, frontier, "x")  # a frontier name the store can file under
    f = load_model(weights, device=device, name=frontier, expected_sha256=sha256)
    a = load_any(analog, device=device, settings=settings)
    map_path(folder, frontier, a.name)
    rmap = fit_map(
        a,
        f,
        corpus_texts,
        depths,
        l2=l2,
        seed=seed,
        corpus=corpus,
        min_context=MIN_CONTEXT if min_context is None else min_context,
    )
    return rmap, store_map(folder, rmap)


def load_site_map(folder: Path | None, *, analog: str, frontier: str, frontier_sha256: str) -> Any:
    """The site's map between ``analog`` and ``frontier``, checked against the frontier weights
    the worker loaded (``frontier_sha256``); a :class:`SiteMapError` naming the command that
    fits one when there is none (or it was fitted on other weights)."""
    from analoglab.experiments.mapping import MapError, ResidualMap

    if folder is None:
        raise SiteMapError(
            f"this lab site has no maps folder, so no residual map between {analog} and "
            f"{frontier}: set `maps` in lab.toml and run `{fit_command(frontier, analog)}`"
        )
    path = map_path(folder, frontier, analog)
    if not path.is_file():
        raise SiteMapError(
            f"this lab site has no residual map between {analog} and {frontier}: the lab fits "
            f"one with `{fit_command(frontier, analog)}`"
        )
    try:
        rmap = ResidualMap.load(path)
    except MapError as exc:
        raise SiteMapError(f"{exc}; fit it again with `{fit_command(frontier, analog)}`") from None
    if rmap.frontier_weights_sha256 != frontier_sha256:
        raise SiteMapError(
            f"the site's residual map between {analog} and {frontier} was fitted on other "
            f"frontier weights ({rmap.frontier_weights_sha256[:12]}, these are "
            f"{frontier_sha256[:12]}): fit it again with `{fit_command(frontier, analog)}`"
        )
    if rmap.analog != analog:
        raise SiteMapError(
            f"{path} holds a map of {rmap.analog!r}, not {analog!r}: fit it again with "
            f"`{fit_command(frontier, analog)}`"
        )
    return rmap


@dataclass(frozen=True)
class StoredMap:
    """One map in the site's store, as listed (its summary; no matrices read)."""

    path: Path
    frontier: str
    analog: str
    summary: dict[str, Any]
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.summary, "problem": self.problem or None}


def list_maps(folder: Path | None) -> list[StoredMap]:
    """Every map in the site's store (sorted by frontier, analog); unreadable ones with why."""
    if folder is None or not Path(folder).is_dir():
        return []
    found = []
    for path in sorted(Path(folder).glob(f"*/*{SUFFIX}")):
        if path.name.startswith("."):
            continue
        frontier, analog = path.parent.name, path.name[: -len(SUFFIX)]
        try:
            with np.load(path, allow_pickle=False) as data:
                meta: dict[str, Any] = json.loads(str(data["meta"]))
            found.append(StoredMap(path, frontier, analog, meta))
        except (OSError, ValueError, KeyError) as exc:
            found.append(StoredMap(path, frontier, analog, {}, f"unreadable: {exc}"))
    return found
