"""ExperimentSpec: round trips (JSON, YAML), the schema, and rejections naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from analoglab.experiments.spec import (
    METHODS,
    Choices,
    Pairs,
    SpecError,
    SteeringSpec,
    is_self_contained,
    json_schema,
    load_spec,
    parse_spec,
    resolve_task_sets,
    spec_hash,
    spec_to_dict,
)

EXAMPLES = {
    "activation_stats": {
        "method": "activation_stats",
        "data": {"kind": "prompts", "prompts": ["a b", "c"]},
    },
    "steering": {
        "method": "steering",
        "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 8},
        "evaluate": {"kind": "task_set", "name": "neutral", "n": 8},
        "target": " good",
        "foil": " bad",
        "layers": {"depths": [0.0, 0.5, 1.0]},
        "scales": [-2, 0, 2],
    },
    "probe": {"method": "probe", "data": {"kind": "task_set", "name": "sentiment", "n": 40}},
    "ablation": {
        "method": "ablation",
        "data": {"kind": "task_set", "name": "ioi", "n": 8},
        "layers": {"indices": [0, -1]},
    },
    "patching": {"method": "patching", "data": {"kind": "task_set", "name": "ioi", "n": 8}},
    "evaluation": {
        "method": "evaluation",
        "data": {"kind": "choices", "items": [{"prompt": "x", "target": " a", "foil": " b"}]},
        "samples": {"n": 2},
    },
    "fidelity": {"method": "fidelity", "data": {"kind": "task_set", "name": "neutral"}},
    "mapped_steering": {
        "method": "mapped_steering",
        "artifact": {
            "kind": "steering_vector",
            "analog": "demo-analog-s",
            "depth": 0.5,
            "width": 3,
            "values": [0.1, -0.2, 0.3],
        },
        "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 8},
        "evaluate": {"kind": "task_set", "name": "neutral", "n": 8},
        "target": " good",
        "foil": " bad",
    },
    "mapped_probe": {
        "method": "mapped_probe",
        "artifact": {
            "kind": "probe_direction",
            "analog": "demo-analog-s",
            "depth": 1.0,
            "width": 2,
            "values": [1.0, -1.0],
        },
        "data": {"kind": "task_set", "name": "sentiment", "n": 40},
    },
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_round_trips_through_json_and_yaml(method: str, tmp_path: Path) -> None:
    spec = parse_spec(EXAMPLES[method])
    assert spec.method == method and spec.spec_version == 1
    as_json = json.dumps(spec_to_dict(spec))
    assert parse_spec(as_json) == spec
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec_to_dict(spec)))
    (tmp_path / "s.json").write_text(as_json)
    assert load_spec(tmp_path / "s.yaml") == spec == load_spec(tmp_path / "s.json")
    assert spec_hash(load_spec(tmp_path / "s.yaml")) == spec_hash(spec)


def test_hash_changes_with_the_experiment() -> None:
    a = parse_spec(EXAMPLES["probe"])
    b = parse_spec({**EXAMPLES["probe"], "seed": 1})
    assert spec_hash(a) != spec_hash(b) and len(spec_hash(a)) == 64


def test_schema_lists_every_method() -> None:
    schema = json_schema()
    text = json.dumps(schema)
    assert schema["title"] == "ExperimentSpec"
    for method in METHODS:
        assert f'"{method}"' in text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "teleport"}, "does not match any of the expected tags"),
        ({"method": "probe"}, "data: Field required"),
        (
            {
                "method": "probe",
                "data": {"kind": "task_set", "name": "ioi"},
                "layers": {"depths": [1.5]},
            },
            "layers.depths.0: Input should be less than or equal to 1",
        ),
        (
            {
                "method": "probe",
                "data": {"kind": "task_set", "name": "ioi"},
                "layers": {"depths": [0.5], "indices": [1]},
            },
            "depths or as indices, not both",
        ),
        ({**EXAMPLES["steering"], "scales": [1000]}, "scales.0: Input should be less than"),
        (
            {**EXAMPLES["steering"], "contrast": {"kind": "pairs", "pairs": []}},
            "contrast.pairs: List should have at least 1 item",
        ),
        ({"method": "evaluation", "data": {"kind": "task_set", "name": "wikipedia"}}, "data.name"),
        ({**EXAMPLES["probe"], "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({**EXAMPLES["evaluation"], "samples": {"n": 1000}}, "samples.n"),
        ({**EXAMPLES["probe"], "spec_version": 2}, "spec_version"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(spec: dict, message: str) -> None:
    with pytest.raises(SpecError, match="invalid experiment spec") as info:
        parse_spec(spec)
    assert message in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("method: [unclosed")
    with pytest.raises(SpecError, match="not valid yaml"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(tmp_path / "list.yaml")


def test_task_sets_inline_into_a_self_contained_spec() -> None:
    spec = parse_spec(EXAMPLES["steering"])
    assert isinstance(spec, SteeringSpec) and not is_self_contained(spec)
    inline = resolve_task_sets(spec)
    assert is_self_contained(inline) and isinstance(inline, SteeringSpec)
    assert isinstance(inline.contrast, Pairs) and len(inline.contrast.pairs) == 8
    assert spec_hash(inline) != spec_hash(spec)
    assert resolve_task_sets(inline) is inline
    ioi = resolve_task_sets(parse_spec(EXAMPLES["ablation"]))
    assert isinstance(ioi.data, Choices)  # type: ignore[union-attr]


def test_python_builders_make_the_same_spec_as_a_file() -> None:
    from pathlib import Path

    from analoglab.experiments.spec import Layers, TaskSetRef

    built = SteeringSpec(
        contrast=TaskSetRef(name="sentiment_pairs", n=64),
        evaluate=TaskSetRef(name="neutral", n=64),
        neutral=TaskSetRef(name="neutral", n=32),
        target=" good",
        foil=" bad",
        layers=Layers(depths=[0.0, 0.25, 0.5, 0.75, 1.0]),
        scales=[-2, -1, 0, 1, 2],
        description="Does the sentiment direction from contrast pairs steer neutral prompts "
        'toward " good"?',
    )
    shipped = Path(__file__).resolve().parents[2] / "docs" / "specs" / "steer-sentiment.yaml"
    assert spec_hash(built) == spec_hash(load_spec(shipped))
    with pytest.raises(ValueError, match="less than or equal to 64"):
        SteeringSpec(
            contrast=TaskSetRef(name="sentiment_pairs"),
            evaluate=TaskSetRef(name="neutral"),
            target=" good",
            foil=" bad",
            scales=[100],
        )


def test_the_bootstrap_is_in_every_spec_and_leaves_old_hashes_alone() -> None:
    spec = parse_spec(EXAMPLES["probe"])
    assert spec.bootstrap.resamples == 200 and spec.bootstrap.seed == 0 and spec.splits == 4
    # at their defaults the fields added with intervals are left out: hashes made before
    # them (transfer checks in MLflow, queue jobs) still match
    assert {"bootstrap", "splits", "random_draws"}.isdisjoint(spec_to_dict(spec))
    shipped = Path(__file__).resolve().parents[2] / "docs" / "specs"
    assert spec_hash(load_spec(shipped / "steer-sentiment.yaml")) == (
        "c707b739535dfc2049daa9b5ea7c868aa4e47458e981b4781aa9c6e3b5b74544"
    )
    other = parse_spec({**EXAMPLES["probe"], "bootstrap": {"resamples": 50, "seed": 1}})
    assert spec_to_dict(other)["bootstrap"] == {"resamples": 50, "seed": 1}
    assert parse_spec(spec_to_dict(other)) == other and spec_hash(other) != spec_hash(spec)
    for bad, message in [
        ({"resamples": 10}, "bootstrap.resamples: Input should be greater than or equal to 20"),
        ({"resamples": 5000}, "bootstrap.resamples: Input should be less than or equal to 2000"),
    ]:
        with pytest.raises(SpecError, match="invalid experiment spec") as info:
            parse_spec({**EXAMPLES["probe"], "bootstrap": bad})
        assert message in str(info.value)
