"""The release checks a result passes before it leaves the lab, one by one."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analoglab import signing
from analoglab.config import Settings
from analoglab.experiments.result import METHOD_OUTPUTS, ExperimentResult, canonical_json
from analoglab.experiments.runner import run
from analoglab.experiments.spec import parse_spec, resolve_task_sets, spec_hash, spec_to_dict
from analoglab.lab.config import ReleaseConfig
from analoglab.lab.release import (
    Checked,
    checked_release,
    for_release,
    sign_checked,
    signed_bytes,
    verify_result,
)
from analoglab.models.catalog import FrontierPolicy
from analoglab.models.loading import load_any

SPEC: dict[str, Any] = {
    "method": "steering",
    "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 8},
    "evaluate": {"kind": "task_set", "name": "neutral", "n": 8},
    "target": " good",
    "foil": " bad",
    "layers": {"depths": [0.0, 1.0]},
    "scales": [-1, 0, 1],
}
# As the queue stores it: task sets inlined (what the lab runs, and what results record).
SPEC = spec_to_dict(resolve_task_sets(parse_spec(SPEC)))


@pytest.fixture(scope="module")
def result(tiny_build: Any) -> dict[str, Any]:
    settings: Settings = tiny_build[0]
    model = load_any("tiny-frontier", device="cpu", settings=settings)
    return run(parse_spec(SPEC), model).model_dump(mode="json")


def problems_of(out: Checked | list[str]) -> list[str]:
    """The reasons a result may not leave the lab (none when it was checked fit)."""
    return out if isinstance(out, list) else []


def check(result: dict[str, Any], **kw: Any) -> list[str]:
    policy = kw.pop("policy", FrontierPolicy())
    return problems_of(
        checked_release(
            result, spec=SPEC, spec_hash=spec_hash(parse_spec(SPEC)), policy=policy, **kw
        )
    )


def test_a_real_result_passes(result: dict[str, Any]) -> None:
    assert check(result) == []


def test_schema_not_a_result(result: dict[str, Any]) -> None:
    broken = {k: v for k, v in result.items() if k != "model"}
    (problem,) = check(broken)
    assert problem.startswith("schema: not an ExperimentResult (model")


def test_schema_other_method_and_other_spec(result: dict[str, Any]) -> None:
    other = copy.deepcopy(result) | {"method": "probe", "spec_hash": "f" * 64}
    problems = check(other)
    assert any("method 'probe', the job's 'steering'" in p for p in problems)
    assert any("another spec" in p for p in problems)


def test_schema_outputs_the_method_does_not_make(result: dict[str, Any]) -> None:
    extra = copy.deepcopy(result)
    extra["tables"]["hidden_states"] = [[0.0] * 4]
    extra["profiles"]["secret"] = extra["profiles"]["effect"]
    del extra["metrics"]["effect"]
    problems = check(extra)
    assert "schema: 1 profile(s) that steering does not produce" in problems
    assert "schema: 1 table(s) that steering does not produce" in problems
    assert any("metric(s) ['effect'] missing" in p for p in problems)
    assert not any("secret" in p or "hidden_states" in p for p in problems)  # never echoed


def test_schema_the_recorded_spec_must_be_the_jobs(result: dict[str, Any]) -> None:
    smuggled = copy.deepcopy(result)
    smuggled["spec"]["leak"] = [0.12] * 1000  # same spec_hash, other content
    assert check(smuggled) == ["schema: the result is of another spec than the job's"]


def test_schema_free_form_fields_and_metric_count(result: dict[str, Any]) -> None:
    chatty = copy.deepcopy(result)
    chatty["versions"]["torch"] = "2.13.0" + "x" * 200
    chatty["metrics"].update({f"m{i}": 0.5 for i in range(300)})
    problems = check(chatty)
    assert any(p.startswith("schema: free-form fields over 120 characters (1)") for p in problems)
    assert any("metrics, over the lab's cap of 256" in p for p in problems)


def test_every_frontier_method_has_a_schema() -> None:
    assert set(METHOD_OUTPUTS) == {
        "activation_stats",
        "steering",
        "probe",
        "ablation",
        "patching",
        "evaluation",
        "mapped_steering",
        "mapped_probe",
    }


def test_size_cap(result: dict[str, Any]) -> None:
    size = len(signed_bytes(result))  # the hub's measure: the stored form's canonical JSON
    assert check(result, policy=FrontierPolicy(max_output_bytes=size)) == []
    (problem,) = check(result, policy=FrontierPolicy(max_output_bytes=size - 1))
    assert problem == f"size: {size} bytes, over the policy's cap of {size - 1} bytes"


def test_a_checked_result_is_the_hubs_form_measured_and_signed_as_the_hub_reads_it(
    result: dict[str, Any],
) -> None:
    # a result without its defaulted fields: the hub stores (and measures, hashes) them filled
    sparse = {k: v for k, v in result.items() if k not in ("samples", "bootstrap")}
    filled = len(signed_bytes(sparse))
    assert filled > len(canonical_json(sparse).encode())
    policy = FrontierPolicy(max_output_bytes=filled)
    kw: dict[str, Any] = {"spec": SPEC, "spec_hash": spec_hash(parse_spec(SPEC))}
    checked = checked_release(sparse, policy=policy, **kw)
    assert isinstance(checked, Checked)
    assert checked.result == ExperimentResult.model_validate(sparse).model_dump(mode="json")
    assert checked.canonical == canonical_json(checked.result).encode()
    # the cap holds against the filled form, not the sparse bytes the lab was handed
    (problem,) = problems_of(
        checked_release(sparse, policy=FrontierPolicy(max_output_bytes=filled - 1), **kw)
    )
    assert problem.startswith(f"size: {filled} bytes")
    # the signature over the checked bytes is the one anyone checks the stored result with
    key = Ed25519PrivateKey.generate()
    signed = sign_checked(key, checked)
    public = signing.public_key_text(key)
    assert verify_result(checked.result, signed.signature, public) == signed.key_id
    with pytest.raises(signing.SignatureError):
        verify_result(checked.result | {"device": "elsewhere"}, signed.signature, public)


def test_tensor_cap(result: dict[str, Any]) -> None:
    n = sum(len(row) for row in result["tables"]["score"])
    assert check(result, config=ReleaseConfig(max_tensor_values=n)) == []
    problems = check(result, config=ReleaseConfig(max_tensor_values=n - 1))
    assert f"tensors: table score holds {n} values, over the lab's cap of {n - 1}" in problems


def test_samples_only_where_allowed(result: dict[str, Any]) -> None:
    with_samples = copy.deepcopy(result) | {"samples": ["the movie was good"]}
    (problem,) = check(with_samples)
    assert problem.startswith("samples: the result holds 1 generated text")
    assert check(with_samples, policy=FrontierPolicy(allow_samples=True)) == []


def test_bootstrap_within_the_spec_and_the_labs_cap(result: dict[str, Any]) -> None:
    assert result["bootstrap"]["resamples"] == 200
    assert check(result, config=ReleaseConfig(max_bootstrap=100)) == [
        "bootstrap: 200 resamples, over the lab's cap of 100"
    ]
    smuggled = copy.deepcopy(result)
    smuggled["bootstrap"]["metrics"]["secret"] = [0.5] * 200
    smuggled["bootstrap"]["profiles"]["effect"][0].append(1.0)
    problems = check(smuggled)
    assert "bootstrap: replicates of 1 output(s) the result does not hold" in problems
    assert "bootstrap: 1 replicate set(s) not of 200 replicates the size of their output" in (
        problems
    )
    assert not any("secret" in p for p in problems)
    fewer = copy.deepcopy(result)
    fewer["bootstrap"]["resamples"] = 10
    assert "bootstrap: 10 resamples, the job's spec asks for 200" in check(fewer)


def test_bootstrap_replicates_stay_at_the_lab_unless_it_lets_them_go(
    result: dict[str, Any],
) -> None:
    """The replicates follow the spec's public seed: with as many as there are items they give
    back each item's value, so by default they do not leave the lab."""
    assert result["bootstrap"] is not None
    kept = for_release(result)
    assert kept["bootstrap"] is None and kept["metrics"] == result["metrics"]
    assert result["bootstrap"] is not None  # the lab's own copy is untouched
    assert check(kept) == []  # and what leaves still passes every check
    let_go = for_release(result, ReleaseConfig(release_bootstrap=True))
    assert let_go["bootstrap"] == result["bootstrap"]


@pytest.fixture(scope="module")
def mapped(tiny_build: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A mapped_steering spec (the analog's vector inline) and its result on the frontier,
    through the build's map at the lab site."""
    from analoglab.lab.maps import load_site_map
    from analoglab.tracking.artifacts import steering_vector

    settings: Settings = tiny_build[0]
    analog = load_any("tiny-analog-s", device="cpu", settings=settings)
    frontier = load_any("tiny-frontier", device="cpu", settings=settings)
    spec = spec_to_dict(
        resolve_task_sets(
            parse_spec(
                {
                    "method": "mapped_steering",
                    "artifact": steering_vector(analog, SPEC, 1.0).model_dump(
                        mode="json", exclude_none=True
                    ),
                    "contrast": SPEC["contrast"],
                    "evaluate": SPEC["evaluate"],
                    "target": " good",
                    "foil": " bad",
                }
            )
        )
    )
    rmap = load_site_map(
        settings.lab_sites_path / "tiny-lab" / "maps",
        analog="tiny-analog-s",
        frontier="tiny-frontier",
        frontier_sha256=frontier.weights_sha256,
    )
    return spec, run(parse_spec(spec), frontier, residual_map=rmap).model_dump(mode="json")


def test_a_mapped_result_holds_scalars_only_and_few_of_them(
    mapped: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    spec, result = mapped

    def problems(r: dict[str, Any]) -> list[str]:
        return problems_of(
            checked_release(
                r, spec=spec, spec_hash=spec_hash(parse_spec(spec)), policy=FrontierPolicy()
            )
        )

    assert problems(result) == []
    assert "map_r2" in result["metrics"]  # its fit travels, never its matrices
    leaky = copy.deepcopy(result)
    leaky["metrics"].update({f"w{i}": 0.1 for i in range(40)})  # a mapped vector as metrics
    assert any(
        p.startswith("mapped: ") and "metrics, over the 32 a mapped result may hold" in p
        for p in problems(leaky)
    )
    table = copy.deepcopy(result)
    table["tables"]["map"] = [[0.0] * 24] * 4
    found = problems(table)
    assert any(p.startswith("mapped: the result holds 1 profile(s)/table(s)") for p in found)
    assert not any("'map'" in p for p in found)  # names from the result never echoed
