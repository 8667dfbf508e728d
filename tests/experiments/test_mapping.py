"""Residual maps and mapped interventions: the map recovers a known linear relation between
two random models' streams, the mapped methods run with intervals and refuse an artifact of
the wrong width, and a spec bounds the artifact it carries."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analoglab.config import Settings
from analoglab.experiments.mapping import ResidualMap, fit_map, fit_ridge, r_squared
from analoglab.experiments.methods.common import ExperimentError
from analoglab.experiments.result import METHOD_OUTPUTS, result_problems
from analoglab.experiments.runner import run
from analoglab.experiments.spec import (
    MAX_ARTIFACT_VALUES,
    SpecError,
    TaskSetRef,
    inline_task_set,
    parse_spec,
    spec_hash,
    spec_to_dict,
)
from analoglab.experiments.transfer import compare
from analoglab.foundry.build import BuildResult
from analoglab.models.loading import LoadedModel, load_model

NEUTRAL = list(inline_task_set(TaskSetRef(name="neutral", n=48)).prompts)  # type: ignore[union-attr]


def test_ridge_recovers_a_linear_map_and_r_squared_measures_it() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    a, c = rng.normal(size=(6, 9)), rng.normal(size=9)
    w, b = fit_ridge(x, x @ a + c, l2=1e-9)
    assert np.allclose(w, a, atol=1e-6) and np.allclose(b, c, atol=1e-6)
    y = x @ a + c
    assert r_squared(y, x @ w + b) == pytest.approx(1.0)
    assert r_squared(y, np.broadcast_to(y.mean(0), y.shape)) == pytest.approx(0.0)
    noisy = y + rng.normal(size=y.shape) * y.std()
    w2, b2 = fit_ridge(x[:300], noisy[:300], l2=1e-3)
    assert 0.3 < r_squared(noisy[300:], x[300:] @ w2 + b2) < 0.7  # half the variance is noise


def widened(model: LlamaForCausalLM, q: torch.Tensor) -> LlamaForCausalLM:
    """A model whose residual stream is exactly ``x Q`` of ``model``'s (``Q [d, d']`` with
    orthonormal rows): inputs read through ``W Q``, outputs written through ``Qᵀ W``, and
    RMSNorm gains scaled by √(d/d'), which keeps every norm's output ``norm(x) Q``."""
    d, wide = q.shape
    cfg = model.config.to_dict() | {"hidden_size": wide}
    out = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    gain = math.sqrt(d / wide)
    new = {}
    for key, value in model.state_dict().items():
        if key.endswith("norm.weight"):
            new[key] = value[:1].repeat(wide) * gain
        elif key.endswith(("o_proj.weight", "down_proj.weight")):
            new[key] = q.T @ value
        elif value.dim() == 2 and value.shape[1] == d:  # embeddings, q/k/v, gate/up, lm_head
            new[key] = value @ q
        else:
            new[key] = value
    out.load_state_dict(new)
    return out


def test_the_map_recovers_a_known_linear_relation_between_two_random_models(
    tiny_build: tuple[Settings, BuildResult],
) -> None:
    settings = tiny_build[0]
    tokenizer = load_model(settings.models_path / "tiny-analog-s", device="cpu").tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=128,
        rms_norm_eps=1e-12,
        tie_word_embeddings=False,
    )
    small = LlamaForCausalLM(config).eval()
    q = torch.linalg.qr(torch.randn(48, 32))[0].T.contiguous()  # [32, 48], orthonormal rows
    wide = widened(small, q)
    a = LoadedModel(small, tokenizer, "random-a", Path("."), "a" * 64)
    f = LoadedModel(wide, tokenizer, "random-f", Path("."), "f" * 64)
    rmap = fit_map(a, f, NEUTRAL, [0.0, 0.5, 1.0], l2=1e-8, seed=1)
    assert [layer.frontier_block for layer in rmap.layers] == [0, 1, 2]
    assert rmap.tokens_fit > 100 and rmap.tokens_held_out > 10
    for layer in rmap.layers:
        assert layer.r2_forward > 0.999 and layer.r2_backward > 0.999
        assert np.allclose(layer.forward, q.double().numpy(), atol=1e-3)
        assert np.allclose(layer.forward_bias, 0.0, atol=1e-3)
        # a steering vector v goes over as v Q; a probe direction w as M w ≈ Qᵀ w, which
        # reads the same: (Qᵀ w) · (x Q) = w · x
        v = np.random.default_rng(0).normal(size=32)
        expected = v @ q.double().numpy()
        mapped = layer.steering_vector(v)
        assert np.linalg.norm(mapped - expected) / np.linalg.norm(expected) < 1e-2
        # the frontier's stream only spans the 32 directions of Q: the map back is fixed
        # there and not off it, so the carried direction is checked where it is read, on
        # frontier activations x Q: (M w) · (x Q) = w · x
        x = np.random.default_rng(1).normal(size=(50, 32))
        reads = (x @ q.double().numpy()) @ layer.probe_direction(v)
        assert np.linalg.norm(reads - x @ v) / np.linalg.norm(x @ v) < 1e-2


@pytest.fixture(scope="module")
def pair(tiny_build: tuple[Settings, BuildResult]) -> tuple[LoadedModel, LoadedModel, ResidualMap]:
    settings = tiny_build[0]
    analog = load_model(settings.models_path / "tiny-analog-s", device="cpu")
    frontier = load_model(settings.lab_sites_path / "tiny-lab/models/tiny-frontier", device="cpu")
    return analog, frontier, fit_map(analog, frontier, NEUTRAL, [0.5, 1.0])


def test_a_map_saves_and_loads_and_shows_no_matrices(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap], tmp_path: Path
) -> None:
    _, frontier, rmap = pair
    again = ResidualMap.load(rmap.save(tmp_path / "maps" / "m.npz"))
    assert again.summary() == rmap.summary() and again.frontier_weights_sha256 == (
        frontier.weights_sha256
    )
    assert np.array_equal(again.at(0.5).forward, rmap.at(0.5).forward)
    layer_keys = {
        "depth", "analog_block", "frontier_block", "r2_forward", "r2_backward", "l2_forward",
        "l2_backward",
    }  # fmt: skip
    assert all(set(layer) == layer_keys for layer in rmap.summary()["layers"])
    with pytest.raises(Exception, match="no depth 0.3"):
        rmap.at(0.3)


def analog_vector(analog: LoadedModel, depth: float) -> list[float]:
    """The sentiment steering vector found on the analog (what a researcher would carry)."""
    spec = parse_spec(
        {
            "method": "steering",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 16},
            "evaluate": {"kind": "task_set", "name": "neutral", "n": 4},
            "target": " good",
            "foil": " bad",
            "layers": {"depths": [depth]},
            "scales": [1],
        }
    )
    from analoglab.experiments.methods.common import pairs_of
    from analoglab.interventions import block_at_depth, capture, layout_of

    layout = layout_of(analog.model)
    name = layout.hook_name("hook_resid_post", block=block_at_depth(depth, layout.n_layers))
    pairs = pairs_of(spec.contrast, "contrast", "steering")  # type: ignore[union-attr]
    means = []
    for texts in ([p.positive for p in pairs], [p.negative for p in pairs]):
        from analoglab.experiments.methods.common import encode, forward

        enc = encode(analog.tokenizer, texts, 128, "cpu")
        with torch.no_grad(), capture(analog.model, [name], positions=[-1]) as cache:
            forward(analog.model, enc)
        means.append(cache[name][:, 0].double().mean(0))
    return (means[0] - means[1]).tolist()


def mapped_spec(method: str, values: list[float], **extra: Any) -> dict[str, Any]:
    artifact = {
        "kind": "steering_vector" if method == "mapped_steering" else "probe_direction",
        "analog": "tiny-analog-s",
        "depth": 0.5,
        "width": len(values),
        "values": values,
    }
    if method == "mapped_steering":
        return {
            "method": method,
            "artifact": artifact,
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 16},
            "evaluate": {"kind": "task_set", "name": "neutral", "n": 16},
            "neutral": {"kind": "task_set", "name": "neutral", "n": 6},
            "target": " good",
            "foil": " bad",
            "bootstrap": {"resamples": 60},
        } | extra
    return {
        "method": method,
        "artifact": artifact,
        "data": {"kind": "task_set", "name": "sentiment_pairs", "n": 24},
        "bootstrap": {"resamples": 60},
    } | extra


def test_a_map_is_fitted_on_the_tokens_with_context_before_them(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap], tmp_path: Path
) -> None:
    from analoglab.experiments.mapping import MIN_CONTEXT, MapError

    analog, frontier, default = pair
    lengths = [len(ids) for ids in analog.tokenizer(NEUTRAL)["input_ids"]]
    # every token of a text but its first k: the default leaves MIN_CONTEXT out, 0 none
    for k, rmap in ((MIN_CONTEXT, default), (0, None), (3, None)):
        if rmap is None:
            rmap = fit_map(analog, frontier, NEUTRAL, [0.5, 1.0], min_context=k)
        assert rmap.min_context == k
        assert rmap.tokens_fit + rmap.tokens_held_out == sum(max(0, n - k) for n in lengths)
        assert rmap.summary()["min_context"] == k
    # the first positions change the fit: the maps differ
    every = fit_map(analog, frontier, NEUTRAL, [0.5], min_context=0)
    assert not np.allclose(every.at(0.5).forward, default.at(0.5).forward)
    # saved and loaded with it; a map saved before it existed fitted every token
    again = ResidualMap.load(default.save(tmp_path / "m.npz"))
    assert again.min_context == MIN_CONTEXT
    with np.load(tmp_path / "m.npz") as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["min_context"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)  # type: ignore[arg-type]
    assert ResidualMap.load(tmp_path / "old.npz").min_context == 0
    # texts too short for the context asked: one line, nothing fitted
    with pytest.raises(MapError, match=f"has {max(lengths)} tokens of its text before it"):
        fit_map(analog, frontier, NEUTRAL, [0.5], min_context=max(lengths))
    with pytest.raises(MapError, match="min_context must be 0 or more"):
        fit_map(analog, frontier, NEUTRAL, [0.5], min_context=-1)


def test_mapped_steering_reports_against_native_and_random_with_intervals(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap],
) -> None:
    analog, frontier, rmap = pair
    vector = analog_vector(analog, 0.5)
    spec = parse_spec(mapped_spec("mapped_steering", vector))
    result = run(spec, frontier, residual_map=rmap)
    m = result.metrics
    assert METHOD_OUTPUTS["mapped_steering"].metrics <= set(m)
    assert m["map_r2"] == rmap.at(0.5).r2_forward
    assert m["mapped_norm"] > 0 and m["native_norm"] > 0 and -1 <= m["cosine_to_native"] <= 1
    assert m["perplexity_ratio"] > 0 and m["native_perplexity_ratio"] > 0
    assert m["ratio_to_native"] == pytest.approx(m["effect"] / m["native_effect"], rel=1e-6)
    boot = result.bootstrap
    assert boot is not None and boot.items == {"evaluate": 16, "contrast": 16}
    assert {"effect", "native_effect", "random_effect", "ratio_to_native"} <= set(boot.metrics)
    assert all(len(v) == 60 for v in boot.metrics.values())
    # released like any result: only numbers, never the map
    problems = result_problems(
        result,
        spec=result.spec,
        spec_hash=result.spec_hash,
        size=result.size_bytes,
        max_bytes=10**6,
        allow_samples=False,
        max_tensor_values=1000,
    )
    assert problems == []


def test_a_mapped_check_runs_end_to_end_on_the_analog_and_the_frontier(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap],
) -> None:
    analog, frontier, rmap = pair
    vector = analog_vector(analog, 0.5)
    spec = parse_spec(mapped_spec("mapped_steering", vector, scale=8.0))
    # on its own analog, no map: the artifact as it is, at the analog's block of its depth
    on_analog = run(spec, analog)
    m = on_analog.metrics
    assert m["map_r2"] == 1.0
    # the artifact is the analog's native vector on the same contrast pairs
    assert m["cosine_to_native"] == pytest.approx(1.0, abs=1e-4)
    assert m["ratio_to_native"] == pytest.approx(1.0, abs=1e-3)
    on_frontier = run(spec, frontier, residual_map=rmap)
    report = compare(on_analog, on_frontier)
    parts = {p.name: p for p in report.parts}
    assert set(parts) == {"effect_agreement", "ratio_to_native", "random_control"}
    assert parts["effect_agreement"].analog == m["effect"]
    assert parts["effect_agreement"].frontier == on_frontier.metrics["effect"]
    assert parts["ratio_to_native"].frontier == on_frontier.metrics["ratio_to_native"]
    assert all(p.interval is not None for p in report.parts)
    assert report.score_interval is not None and report.resamples == 60
    assert report.items == {"evaluate": 16, "contrast": 16}
    assert report.verdict in ("transfers", "partial", "does_not_transfer", "inconclusive")
    # the probe too: a direction on the analog, read there as it is and mapped on the frontier
    probe = parse_spec(mapped_spec("mapped_probe", vector))
    probe_report = compare(run(probe, analog), run(probe, frontier, residual_map=rmap))
    assert [p.name for p in probe_report.parts] == [
        "effect_agreement",
        "ratio_to_native",
        "random_control",
    ]
    # the artifact on an analog of another width is refused, as through a map
    with pytest.raises(ExperimentError, match="is 7 wide.*residual stream is"):
        run(parse_spec(mapped_spec("mapped_probe", [0.1] * 7)), analog)


def test_the_artifact_is_matched_to_the_map_by_the_analog_weights(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap],
) -> None:
    analog, frontier, rmap = pair
    assert rmap.analog_weights_sha256 == analog.weights_sha256
    width = rmap.at(0.5).analog_width
    base = mapped_spec("mapped_probe", [0.1] * width)
    other = base | {"artifact": base["artifact"] | {"analog_sha256": "e" * 64}}
    with pytest.raises(ExperimentError, match="fitted on .*: fit the map on the weights"):
        run(parse_spec(other), frontier, residual_map=rmap)
    with pytest.raises(ExperimentError, match="run it on the weights it was found on"):
        run(parse_spec(other), analog)
    same = base | {
        "artifact": base["artifact"]
        | {"analog_sha256": analog.weights_sha256, "source": "mlflow:runs/abc123/artifacts/v.json"}
    }
    result = run(parse_spec(same), frontier, residual_map=rmap)
    # the provenance rides with the spec into the result
    assert result.spec["artifact"]["source"] == "mlflow:runs/abc123/artifacts/v.json"
    assert result.spec["artifact"]["analog_sha256"] == analog.weights_sha256


def test_perplexity_with_last_position_steering_is_measured_where_it_acts(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap], monkeypatch: pytest.MonkeyPatch
) -> None:
    from analoglab.experiments.methods import mapped as mapped_module

    analog, frontier, rmap = pair
    vector = analog_vector(analog, 0.5)
    spec = parse_spec(mapped_spec("mapped_steering", vector, position="last", scale=16.0))
    result = run(spec, frontier, residual_map=rmap)
    # the vector moves the next-token prediction at the last position: the NLL there changes
    assert result.metrics["perplexity_ratio"] != pytest.approx(1.0, abs=1e-6)
    assert result.metrics["native_perplexity_ratio"] != pytest.approx(1.0, abs=1e-6)
    # every position: logits go a few rows at a time, and the numbers do not depend on it
    everywhere = parse_spec(mapped_spec("mapped_steering", vector, scale=4.0))
    whole = run(everywhere, frontier, residual_map=rmap).metrics["perplexity_ratio"]
    seen: list[tuple[int, int]] = []  # (rows, values) of every logits tensor over positions
    real_forward = mapped_module.forward

    def counting(model: Any, enc: Any, *, last_only: bool = True) -> torch.Tensor:
        logits = real_forward(model, enc, last_only=last_only)
        if logits.dim() == 3:
            seen.append((logits.shape[0], logits.numel()))
        return logits

    budget = frontier.model.config.vocab_size * 40  # two rows of ~20 tokens
    monkeypatch.setattr(mapped_module, "LOGIT_BUDGET", budget)
    monkeypatch.setattr(mapped_module, "forward", counting)
    small = run(everywhere, frontier, residual_map=rmap).metrics["perplexity_ratio"]
    assert small == pytest.approx(whole, rel=1e-5)
    # 6 neutral texts in one chunk, never more than the budget at once (one row at least)
    assert seen and all(values <= budget or rows == 1 for rows, values in seen)
    assert max(rows for rows, _ in seen) < 6


def test_mapped_probe_reads_the_mapped_direction_with_intervals(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap],
) -> None:
    analog, frontier, rmap = pair
    direction = analog_vector(analog, 0.5)  # the sentiment difference of means, as a probe
    result = run(parse_spec(mapped_spec("mapped_probe", direction)), frontier, residual_map=rmap)
    m = result.metrics
    assert {"accuracy", "native_accuracy", "random_accuracy", "chance", "map_r2"} <= set(m)
    assert 0.0 <= m["accuracy"] <= 1.0 and m["chance"] == 0.5
    assert m["map_r2"] == rmap.at(0.5).r2_backward
    # 0.3 of the 24 examples of each class are held out: 7 + 7
    assert result.bootstrap is not None and result.bootstrap.items == {"test": 14}
    low, high = result.bootstrap.interval("accuracy") or (2.0, -1.0)
    assert low <= m["accuracy"] <= high


def test_the_mapped_methods_refuse_what_does_not_fit(
    pair: tuple[LoadedModel, LoadedModel, ResidualMap],
) -> None:
    analog, frontier, rmap = pair
    width = rmap.at(0.5).analog_width
    wrong = parse_spec(mapped_spec("mapped_steering", [0.1] * (width + 3)))
    with pytest.raises(ExperimentError, match=f"is {width + 3} wide.*is {width} wide"):
        run(wrong, frontier, residual_map=rmap)
    right = parse_spec(mapped_spec("mapped_probe", [0.1] * width))
    with pytest.raises(ExperimentError, match="needs the lab's residual map"):
        run(right, frontier)
    with pytest.raises(ExperimentError, match="other weights"):
        run(right, analog, residual_map=rmap)
    other = dataclasses.replace(rmap, analog="tiny-analog-m")
    with pytest.raises(ExperimentError, match="the residual map is of tiny-analog-m"):
        run(right, frontier, residual_map=other)
    deeper = parse_spec(
        mapped_spec("mapped_probe", [0.1] * width)
        | {"artifact": mapped_spec("mapped_probe", [0.1] * width)["artifact"] | {"depth": 0.2}}
    )
    with pytest.raises(ExperimentError, match="no depth 0.2"):
        run(deeper, frontier, residual_map=rmap)


def test_a_spec_refuses_an_artifact_of_the_wrong_kind_or_a_long_source() -> None:
    probe_in_steering = mapped_spec("mapped_steering", [0.5] * 8)
    probe_in_steering["artifact"]["kind"] = "probe_direction"
    with pytest.raises(SpecError, match="artifact: .*mapped_steering carries a steering_vector"):
        parse_spec(probe_in_steering)
    vector_in_probe = mapped_spec("mapped_probe", [0.5] * 8)
    vector_in_probe["artifact"]["kind"] = "steering_vector"
    with pytest.raises(SpecError, match="mapped_probe carries a probe_direction"):
        parse_spec(vector_in_probe)
    long = mapped_spec("mapped_probe", [0.5] * 8)
    long["artifact"]["source"] = "mlflow:" + "x" * 300
    with pytest.raises(SpecError, match="artifact.source: String should have at most 300"):
        parse_spec(long)
    bad_hash = mapped_spec("mapped_probe", [0.5] * 8)
    bad_hash["artifact"]["analog_sha256"] = "not-a-hash"
    with pytest.raises(SpecError, match="artifact.analog_sha256"):
        parse_spec(bad_hash)
    # without the later fields a spec keeps the hash it had before them
    plain = parse_spec(mapped_spec("mapped_probe", [0.5] * 8))
    assert "source" not in spec_to_dict(plain)["artifact"]
    assert "analog_sha256" not in spec_to_dict(plain)["artifact"]


def test_a_spec_bounds_the_artifact_it_carries() -> None:
    ok = parse_spec(mapped_spec("mapped_steering", [0.5] * 8))
    assert spec_to_dict(ok)["artifact"]["width"] == 8 and len(spec_hash(ok)) == 64
    too_big = mapped_spec("mapped_steering", [0.0] * (MAX_ARTIFACT_VALUES + 1))
    with pytest.raises(SpecError, match="artifact.values: List should have at most"):
        parse_spec(too_big)
    mismatch = mapped_spec("mapped_probe", [0.5] * 8)
    mismatch["artifact"]["width"] = 9
    with pytest.raises(SpecError, match="holds 8 values, its width is 9"):
        parse_spec(mismatch)
    not_finite = mapped_spec("mapped_probe", [0.5] * 8)
    not_finite["artifact"]["values"][0] = float("nan")
    with pytest.raises(SpecError, match="artifact.values.0"):
        parse_spec(not_finite)


def test_a_map_is_fitted_and_used_from_the_command_line(
    use_tiny_home: Settings, tmp_path: Path, pair: tuple[LoadedModel, LoadedModel, ResidualMap]
) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from analoglab.cli import app

    out = tmp_path / "map.npz"
    fitted = CliRunner().invoke(
        app,
        ["map", "fit", "--analog", "tiny-analog-s", "--frontier", "tiny-frontier",
         "--out", str(out), "--depth", "0.5", "--texts", "24", "--device", "cpu"],
    )  # fmt: skip
    assert fitted.exit_code == 0, fitted.stderr
    assert "depth 0.50: blocks" in fitted.stdout and "held-out R²" in fitted.stdout
    width = ResidualMap.load(out).at(0.5).analog_width
    spec = tmp_path / "mapped.yaml"
    spec.write_text(yaml.safe_dump(mapped_spec("mapped_probe", [0.1] * width)))
    ran = CliRunner().invoke(
        app, ["run", str(spec), "--model", "tiny-frontier", "--map", str(out), "--json"]
    )
    assert ran.exit_code == 0, ran.stderr
    assert "native_accuracy" in json.loads(ran.stdout)["metrics"]
    wrong = CliRunner().invoke(app, ["run", str(spec), "--model", "tiny-frontier"])
    assert wrong.exit_code == 1 and "needs the lab's residual map" in wrong.stderr
    # a mapped transfer check here: the analog applies the artifact as it is, the frontier
    # through the map
    checked = CliRunner().invoke(
        app,
        ["transfer", "--spec", str(spec), "--analog", "tiny-analog-s",
         "--frontier", "tiny-frontier", "--map", str(out), "--json"],
    )  # fmt: skip
    assert checked.exit_code == 0, checked.stderr
    report = json.loads(checked.stdout)["report"]
    assert [p["name"] for p in report["parts"]] == [
        "effect_agreement",
        "ratio_to_native",
        "random_control",
    ]
    assert report["method"] == "mapped_probe" and report["score_interval"] is not None


def test_unreadable_maps_and_bad_ridge_strengths_are_one_line_errors(
    use_tiny_home: Settings, tmp_path: Path, pair: tuple[LoadedModel, LoadedModel, ResidualMap]
) -> None:
    import yaml
    from typer.testing import CliRunner

    from analoglab.cli import app
    from analoglab.experiments.mapping import MapError

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, meta=np.array('{"map_version": 1, "layers": [{"depth": 0.5}]}'))
    spec = tmp_path / "mapped.yaml"
    spec.write_text(yaml.safe_dump(mapped_spec("mapped_probe", [0.1] * 8)))
    for path, reason in (
        (tmp_path / "missing.npz", "no residual map at"),
        (corrupt, "cannot read the residual map"),
        (foreign, "is not a residual map"),
        (incomplete, "is not a complete residual map"),
    ):
        with pytest.raises(MapError, match=reason):
            ResidualMap.load(path)
        ran = CliRunner().invoke(
            app, ["run", str(spec), "--model", "tiny-frontier", "--map", str(path)]
        )
        assert ran.exit_code == 1 and reason in ran.stderr, ran.stderr
        assert "Traceback" not in ran.stderr and len(ran.stderr.strip().splitlines()) <= 2
    def fit(*options: str) -> Any:
        return CliRunner().invoke(
            app,
            ["map", "fit", "--analog", "tiny-analog-s", "--frontier", "tiny-frontier",
             "--out", str(tmp_path / "m.npz"), *options],
        )  # fmt: skip

    for l2 in ("0", "-1"):
        fitted = fit("--l2", l2)
        assert fitted.exit_code == 2, fitted.stdout
        assert "--l2" in fitted.stderr and "positive" in fitted.stderr
        assert not (tmp_path / "m.npz").exists()
    bad = fit("--corpus", "task")
    assert bad.exit_code == 1 and "unknown map corpus 'task'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.npz").exists()
    negative = fit("--min-context", "-2")
    assert negative.exit_code == 2 and "--min-context" in negative.stderr
    assert not (tmp_path / "m.npz").exists()
    analog, frontier, _ = pair
    with pytest.raises(MapError, match="l2 must be a positive number"):
        fit_map(analog, frontier, NEUTRAL[:4], [0.5], l2=0.0)
