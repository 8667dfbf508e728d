"""The lab site's residual maps: where they are filed, stored atomically, found again and
checked against the frontier's weights; the config and the Kubernetes Job that carry them."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analoglab.experiments.mapping import LayerMap, ResidualMap
from analoglab.lab.config import KubernetesExecutorConfig, parse_lab_config
from analoglab.lab.executor import Task
from analoglab.lab.kubernetes import build_job
from analoglab.lab.maps import (
    SiteMapError,
    list_maps,
    load_site_map,
    map_path,
    store_map,
)

SHA_F = "f" * 64


def a_map(analog: str = "demo-analog-s", frontier: str = "demo-frontier", sha: str = SHA_F) -> Any:
    rng = np.random.default_rng(0)
    layer = LayerMap(
        depth=0.5,
        analog_block=1,
        frontier_block=2,
        forward=rng.normal(size=(3, 5)),
        forward_bias=rng.normal(size=5),
        backward=rng.normal(size=(5, 3)),
        backward_bias=rng.normal(size=3),
        r2_forward=0.91,
        r2_backward=0.87,
    )
    return ResidualMap(
        analog=analog,
        analog_weights_sha256="a" * 64,
        frontier=frontier,
        frontier_weights_sha256=sha,
        l2=1e-3,
        tokens_fit=400,
        tokens_held_out=100,
        layers=(layer,),
    )


def test_a_map_is_filed_per_frontier_and_analog_and_read_back(tmp_path: Path) -> None:
    m = a_map()
    path = store_map(tmp_path / "maps", m)
    assert path == tmp_path / "maps" / "demo-frontier" / "demo-analog-s.npz"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == ["demo-analog-s.npz"]  # no temporary file left behind
    back = load_site_map(
        tmp_path / "maps", analog="demo-analog-s", frontier="demo-frontier", frontier_sha256=SHA_F
    )
    np.testing.assert_array_equal(back.layers[0].forward, m.layers[0].forward)
    assert back.summary() == m.summary()
    # storing again replaces it whole
    store_map(tmp_path / "maps", a_map(sha="e" * 64))
    assert os.listdir(path.parent) == ["demo-analog-s.npz"]


def test_no_map_names_the_command_that_fits_one(tmp_path: Path) -> None:
    with pytest.raises(SiteMapError) as missing:
        load_site_map(
            tmp_path, analog="demo-analog-m", frontier="demo-frontier", frontier_sha256=""
        )
    assert "no residual map between demo-analog-m and demo-frontier" in str(missing.value)
    assert "analoglab lab map fit --frontier demo-frontier --analog demo-analog-m" in str(
        missing.value
    )
    with pytest.raises(SiteMapError, match="set `maps` in lab.toml"):
        load_site_map(None, analog="a", frontier="f", frontier_sha256="")


def test_a_map_of_other_frontier_weights_is_refused(tmp_path: Path) -> None:
    store_map(tmp_path, a_map(sha="0" * 64))
    with pytest.raises(SiteMapError, match=r"fitted on other frontier weights \(000000000000"):
        load_site_map(
            tmp_path, analog="demo-analog-s", frontier="demo-frontier", frontier_sha256=SHA_F
        )


def test_a_corrupt_map_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = map_path(tmp_path, "demo-frontier", "demo-analog-s")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a map")
    with pytest.raises(SiteMapError, match="fit it again with `analoglab lab map fit"):
        load_site_map(
            tmp_path, analog="demo-analog-s", frontier="demo-frontier", frontier_sha256=SHA_F
        )
    (listed,) = list_maps(tmp_path)
    assert listed.problem.startswith("unreadable")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 300])
def test_names_that_are_not_model_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(SiteMapError, match="not a model name"):
        map_path(tmp_path, "demo-frontier", name)
    with pytest.raises(SiteMapError, match="not a model name"):
        load_site_map(tmp_path, analog=name, frontier="demo-frontier", frontier_sha256="")


def test_list_maps_reads_summaries_only(tmp_path: Path) -> None:
    assert list_maps(tmp_path / "none") == []
    store_map(tmp_path, a_map("demo-analog-s"))
    store_map(tmp_path, a_map("demo-analog-m"))
    found = list_maps(tmp_path)
    assert [(m.frontier, m.analog) for m in found] == [
        ("demo-frontier", "demo-analog-m"),
        ("demo-frontier", "demo-analog-s"),
    ]
    info = found[0].as_dict()
    assert info["layers"][0]["r2_forward"] == pytest.approx(0.91)
    assert info["frontier_weights_sha256"] == SHA_F and info["problem"] is None
    assert "forward" not in info  # a summary, never the matrices


def test_the_maps_folder_of_a_site(tmp_path: Path) -> None:
    local = parse_lab_config({"lab": "acme"}, base=tmp_path)
    assert local.maps == tmp_path / "maps"
    custom = parse_lab_config({"lab": "acme", "maps": "/data/maps"}, base=tmp_path)
    assert custom.maps == Path("/data/maps")
    k8s = parse_lab_config(
        {
            "lab": "acme",
            "executor": {"kind": "kubernetes", "image": "img", "weights_claim": "w"},
        },
        base=tmp_path,
    )
    assert k8s.maps == Path("maps")  # inside the weights volume


def test_a_kubernetes_job_reads_maps_from_the_weights_volume() -> None:
    cfg = KubernetesExecutorConfig(image="img", weights_claim="w", weights_mount="/weights")
    task = Task(1, "demo-frontier", {"method": "evaluation"}, "demo-frontier", maps="maps")
    command = build_job(task, cfg, name="analoglab-1-abcde", max_result_bytes=1000)["spec"][
        "template"
    ]["spec"]["containers"][0]["command"]
    assert command[command.index("--maps") + 1] == "/weights/maps"
    no_maps = Task(1, "demo-frontier", {"method": "evaluation"}, "demo-frontier")
    command = build_job(no_maps, cfg, name="analoglab-1-abcde", max_result_bytes=1000)["spec"][
        "template"
    ]["spec"]["containers"][0]["command"]
    assert "--maps" not in command
    with pytest.raises(ValueError, match="outside the weights volume"):
        build_job(
            Task(1, "f", {}, "f", maps="../elsewhere"), cfg, name="a-1", max_result_bytes=1000
        )


def test_a_map_keeps_the_corpus_it_was_fitted_on_and_old_maps_read_as_neutral(
    tmp_path: Path,
) -> None:
    general = dataclasses.replace(a_map(), corpus="general", texts=256)
    path = store_map(tmp_path, general)
    again = ResidualMap.load(path)
    assert again.corpus == "general" and again.texts == 256
    (listed,) = list_maps(tmp_path)
    assert listed.summary["corpus"] == "general"
    # a map saved before the corpus choice (no "corpus" in its metadata) was fitted on
    # neutral text
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["corpus"], meta["texts"]
    arrays["meta"] = np.array(json.dumps(meta))
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)  # type: ignore[arg-type]
    assert ResidualMap.load(old).corpus == "neutral"


def test_an_unknown_corpus_fails_before_anything_is_loaded_or_written(tmp_path: Path) -> None:
    from analoglab.experiments.mapping import MapError
    from analoglab.lab.maps import fit_site_map

    with pytest.raises(MapError, match="unknown map corpus 'reviews': choose one of general"):
        fit_site_map(
            tmp_path / "maps",
            frontier="demo-frontier",
            weights=tmp_path / "no-such-weights",  # never read: the corpus fails first
            sha256=None,
            analog="demo-analog-s",
            depths=[0.5],
            corpus="reviews",
        )
    assert not (tmp_path / "maps").exists()


def test_the_foundry_fits_with_the_default_corpus() -> None:
    import inspect

    from analoglab.experiments.mapping import DEFAULT_CORPUS
    from analoglab.lab.maps import fit_site_map

    # the foundry's maps stage passes no corpus: the default is what it fits on
    assert inspect.signature(fit_site_map).parameters["corpus"].default == DEFAULT_CORPUS
    assert inspect.signature(fit_site_map).parameters["l2"].default is None
