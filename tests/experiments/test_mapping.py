"""Residual maps and mapped interventions: the map recovers a known linear relation between
two random models' streams, the mapped methods run with intervals and refuse an artifact of
the wrong width, and a spec bounds the artifact it carries."""

from __future__ import annotations

import dataclasses
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
from analoglab.experiments.transfer import TransferError, compare
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
        for mapped in (layer.steering_vector(v), layer.probe_direction(v)):
            assert np.linalg.norm(mapped - expected) / np.linalg.norm(expected) < 1e-2


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
    layer_keys = {"depth", "analog_block", "frontier_block", "r2_forward", "r2_backward"}
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
    with pytest.raises(TransferError, match="no transfer comparison"):
        compare(result, result)


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
