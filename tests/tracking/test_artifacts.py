"""Analog artifacts in MLflow: logged on a run, resolved back by reference into an inline
Artifact (bounded, with clear errors), and inlined into a mapped spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.spec import AnySpec, Artifact, parse_spec
from analoglab.tracking import TrackingError, TrackingStore, log_result
from analoglab.tracking.artifacts import (
    MAX_ARTIFACT_BYTES,
    inline_artifact,
    log_artifact,
    parse_reference,
    reference,
    resolve_artifact,
)

VECTOR: dict[str, Any] = {
    "kind": "steering_vector",
    "analog": "tiny-analog-s",
    "depth": 1.0,
    "width": 4,
    "values": [0.5, -1.0, 0.25, 2.0],
}


@pytest.fixture
def run_id(backend: Settings, experiment: str, spec: AnySpec, make_result: Any) -> str:
    result: ExperimentResult = make_result(spec, "tiny-analog-s")
    return log_result(spec, result, model="tiny-analog-s", settings=backend, experiment=experiment)


def upload(settings: Settings, run_id: str, name: str, content: bytes) -> None:
    store = TrackingStore.open(settings)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_bytes(content)
        store.upload(run_id, Path(tmp))


def test_an_artifact_logged_on_a_run_resolves_back_inline(backend: Settings, run_id: str) -> None:
    ref = log_artifact(VECTOR, run_id, settings=backend)
    assert ref == f"mlflow:runs/{run_id}/artifacts/steering_vector.json"
    art = resolve_artifact(ref, settings=backend)
    assert isinstance(art, Artifact)
    assert art.values == VECTOR["values"] and art.width == 4 and art.analog == "tiny-analog-s"
    if "source" in Artifact.model_fields:
        assert art.source == ref
    named = log_artifact(Artifact.model_validate(VECTOR), run_id, path="v2.json", settings=backend)
    assert named == f"mlflow:runs/{run_id}/artifacts/v2.json"
    assert resolve_artifact(named, settings=backend).values == VECTOR["values"]


def test_a_missing_run_or_path_says_which(backend: Settings, run_id: str) -> None:
    log_artifact(VECTOR, run_id, settings=backend)
    with pytest.raises(TrackingError, match="there is no MLflow run 0123456789abcdef"):
        resolve_artifact(reference("0123456789abcdef", "x.json"), settings=backend)
    with pytest.raises(
        TrackingError, match=r"has no artifact nope.json \(files there: "
    ) as missing:
        resolve_artifact(reference(run_id, "nope.json"), settings=backend)
    assert "steering_vector.json" in str(missing.value)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"not json", "not JSON"),
        (b"[1, 2, 3]", "not an analog artifact"),
        (json.dumps({**VECTOR, "width": 5}).encode(), "its width is 5"),
        (json.dumps({**VECTOR, "kind": "matrix"}).encode(), r"\(kind: "),
        (json.dumps({**VECTOR, "values": [0.1, "x", 0.2, 0.3]}).encode(), r"\(values\.1"),
    ],
)
def test_a_file_that_is_not_an_artifact_is_refused(
    fresh_home: Settings, experiment: str, spec: AnySpec, make_result: Any, content: bytes, why: str
) -> None:
    run = log_result(
        spec, make_result(spec, "a"), model="a", settings=fresh_home, experiment=experiment
    )
    upload(fresh_home, run, "bad.json", content)
    with pytest.raises(TrackingError, match=why):
        resolve_artifact(reference(run, "bad.json"), settings=fresh_home)


def test_an_oversized_file_is_refused_before_it_is_read(
    fresh_home: Settings, experiment: str, spec: AnySpec, make_result: Any
) -> None:
    run = log_result(
        spec, make_result(spec, "a"), model="a", settings=fresh_home, experiment=experiment
    )
    upload(fresh_home, run, "big.json", b" " * (MAX_ARTIFACT_BYTES + 1))
    with pytest.raises(TrackingError, match="over the 2,097,152"):
        resolve_artifact(reference(run, "big.json"), settings=fresh_home)


@pytest.mark.parametrize(
    "ref",
    [
        "runs/abc/artifacts/x.json",
        "mlflow:runs/abc/x.json",
        "mlflow:runs/abc/artifacts/../x",
        "mlflow:runs/a b/artifacts/x",
        "mlflow:runs/abc/artifacts/",
    ],
)
def test_malformed_references_say_the_form(ref: str) -> None:
    with pytest.raises(TrackingError, match="mlflow:runs/<run id>/artifacts/<path>"):
        parse_reference(ref)


def test_a_mapped_spec_by_reference_is_inlined(backend: Settings, run_id: str) -> None:
    ref = log_artifact(VECTOR, run_id, settings=backend)
    spec = {
        "method": "mapped_steering",
        "artifact": ref,
        "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 4},
        "evaluate": {"kind": "task_set", "name": "neutral", "n": 4},
        "target": " good",
        "foil": " bad",
    }
    inlined = inline_artifact(spec, settings=backend)
    assert inlined["artifact"]["values"] == VECTOR["values"]
    parsed = parse_spec(inlined)
    assert parsed.method == "mapped_steering"
    assert inline_artifact({**spec, "artifact": {"ref": ref}}, settings=backend) == inlined
    with pytest.raises(TrackingError, match="holds only ref"):
        inline_artifact({**spec, "artifact": {"ref": ref, "depth": 0.5}}, settings=backend)
    plain = {"method": "evaluation", "data": {"kind": "task_set", "name": "sentiment", "n": 4}}
    assert inline_artifact(plain) is plain


@pytest.mark.slow
def test_a_steering_result_logged_with_its_model_keeps_its_vector(
    fresh_home: Settings, experiment: str, tiny_home: Settings
) -> None:
    import torch

    from analoglab.experiments.runner import run
    from analoglab.interventions import capture, layout_of
    from analoglab.models.loading import load_any

    analog = load_any("tiny-analog-s", device="cpu", settings=tiny_home)
    spec = parse_spec(
        {
            "method": "steering",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 6},
            "evaluate": {"kind": "task_set", "name": "neutral", "n": 6},
            "target": " good",
            "foil": " bad",
            "layers": {"depths": [0.0, 1.0]},
            "scales": [-1, 0, 1],
        }
    )
    result = run(spec, analog)
    run_id = log_result(
        spec,
        result,
        model="tiny-analog-s",
        settings=fresh_home,
        experiment=experiment,
        loaded=analog,
    )
    art = resolve_artifact(
        f"mlflow:runs/{run_id}/artifacts/steering_vector.json", settings=fresh_home
    )
    assert art.analog == "tiny-analog-s" and art.depth == result.metrics["best_depth"]
    layout = layout_of(analog.model)
    assert art.width == layout.d_model
    # checked independently: one text pair, by hand, against the artifact of that pair alone
    from analoglab.experiments.spec import resolve_task_sets
    from analoglab.tracking.artifacts import steering_vector

    pair = resolve_task_sets(spec).contrast.pairs[0]  # type: ignore[union-attr]
    one = {
        "method": "steering",
        "contrast": {
            "kind": "pairs",
            "pairs": [{"positive": pair.positive, "negative": pair.negative}],
        },
        "evaluate": {"kind": "task_set", "name": "neutral", "n": 2},
        "target": " good",
        "foil": " bad",
    }
    name = layout.hook_name("hook_resid_post", block=layout.n_layers - 1)
    by_hand = []
    for text in (pair.positive, pair.negative):
        ids = analog.tokenizer(text, return_tensors="pt")
        with capture(analog.model, [name]) as cache, torch.no_grad():
            analog.model(**ids)
        by_hand.append(cache[name][0, -1].double())
    expected = (by_hand[0] - by_hand[1]).tolist()
    got = steering_vector(analog, one, 1.0).values
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
