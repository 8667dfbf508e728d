"""The experiment methods and the runner on the tiny foundry's frontier and analog.

The tiny models learned little, so these tests check the result contract (keys, finite
values, one profile value per selected layer, depths in [0, 1]), determinism, and properties
that hold for any model: steering by 0 changes nothing, a probe reads a word that decides the
label, patching the last block's last position restores the clean answer exactly, a model is
perfectly faithful to itself.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from analoglab.config import Settings
from analoglab.experiments.methods.common import (
    ExperimentError,
    encode,
    relative_depth,
    select_blocks,
    token_ids,
)
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.runner import run
from analoglab.experiments.spec import (
    METHODS,
    AnySpec,
    Layers,
    Prompts,
    TaskSetRef,
    inline_task_set,
    parse_spec,
    spec_hash,
)
from analoglab.experiments.transfer import MAIN_PROFILE, compare
from analoglab.foundry.build import BuildResult
from analoglab.foundry.fidelity import first_token_ids
from analoglab.foundry.tasks import task_set
from analoglab.interventions import layout_of
from analoglab.models.loading import LoadedModel, load_model


@pytest.fixture(scope="module")
def models(tiny_build: tuple[Settings, BuildResult]) -> dict[str, LoadedModel]:
    settings = tiny_build[0]
    return {
        "frontier": load_model(
            settings.lab_sites_path / "tiny-lab/models/tiny-frontier", device="cpu"
        ),
        "analog": load_model(settings.models_path / "tiny-analog-s", device="cpu"),
    }


@pytest.fixture
def frontier(models: dict[str, LoadedModel]) -> LoadedModel:
    return models["frontier"]


@pytest.fixture
def analog(models: dict[str, LoadedModel]) -> LoadedModel:
    return models["analog"]


def equal_length_patch_pairs(tokenizer: Any, n: int) -> list[dict[str, str]]:
    """IOI patch pairs whose clean and corrupted prompts have the same token count."""
    pairs = inline_task_set(TaskSetRef(name="ioi_patch", n=4 * n)).items
    same = [
        p.model_dump()
        for p in pairs
        if len(token_ids(tokenizer, [p.clean])[0]) == len(token_ids(tokenizer, [p.corrupt])[0])
    ]
    assert len(same) >= n
    return same[:n]


def spec_for(method: str, tokenizer: Any) -> AnySpec:
    """A small spec of each method (task sets, as a user would write them)."""
    data = {
        "activation_stats": {
            "method": "activation_stats",
            "data": {"kind": "task_set", "name": "neutral", "n": 12},
            "position": "all",
        },
        "steering": {
            "method": "steering",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 6},
            "evaluate": {"kind": "task_set", "name": "sentiment", "n": 6},
            "neutral": {"kind": "task_set", "name": "neutral", "n": 4},
            "target": " good",
            "foil": " bad",
            "scales": [-2, 0, 2],
            "batch_size": 4,
        },
        "probe": {"method": "probe", "data": {"kind": "task_set", "name": "sentiment", "n": 24}},
        "ablation": {
            "method": "ablation",
            "data": {"kind": "task_set", "name": "ioi", "n": 6},
            "batch_size": 4,
        },
        "patching": {
            "method": "patching",
            "data": {"kind": "patch_pairs", "items": equal_length_patch_pairs(tokenizer, 5)},
            "per_position": True,
            "batch_size": 3,
        },
        "evaluation": {
            "method": "evaluation",
            "data": {"kind": "task_set", "name": "facts", "n": 10},
            "samples": {"n": 3, "max_new_tokens": 4},
        },
        "fidelity": {
            "method": "fidelity",
            "data": {"kind": "task_set", "name": "neutral", "n": 8},
            "behaviour": {"kind": "task_set", "name": "sentiment", "n": 6},
        },
    }[method]
    return parse_spec(data)


CONTRACT = {
    "activation_stats": ({"vectors"}, {"norm", "mean_direction", "pca_top1"}),
    "steering": (
        {"effect", "best_depth", "swing", "vector_norm_mean"},
        {"effect", "side_effect_kl"},
    ),
    "probe": ({"accuracy", "chance", "effect", "best_depth"}, {"accuracy"}),
    "ablation": ({"clean_logit_diff", "effect"}, {"effect", "mlp"}),
    "patching": (
        {"clean_logit_diff", "corrupt_logit_diff", "logit_swing", "effect"},
        {"recovery"},
    ),
    "evaluation": ({"accuracy", "logit_diff", "chance", "effect"}, set()),
    "fidelity": ({"kl", "top1_agreement", "behaviour_agreement", "cka_mean"}, {"cka"}),
}
# What each method's bootstrap replicates: (metrics, profiles); fidelity has none.
BOOTSTRAPPED: dict[str, tuple[set[str], set[str]]] = {
    "activation_stats": (set(), {"norm"}),
    "steering": ({"effect"}, {"effect"}),
    "probe": ({"accuracy", "effect"}, {"accuracy"}),
    "ablation": ({"effect"}, {"effect"}),
    "patching": ({"effect", "logit_swing"}, {"recovery"}),
    "evaluation": ({"accuracy", "effect", "logit_diff"}, set()),
}
TABLES = {
    "activation_stats": {"pca_explained_variance"},
    "steering": {"score", "normalised_effect"},
    "ablation": {"heads"},
    "patching": {"recovery_by_position"},
}


# The mapped methods run only through a residual map: tests/experiments/test_mapping.py.
ONE_MODEL_METHODS = [m for m in METHODS if not m.startswith("mapped_")]


def test_the_contract_covers_every_method() -> None:
    assert set(CONTRACT) == set(ONE_MODEL_METHODS)
    assert set(MAIN_PROFILE) <= set(METHODS)


@pytest.mark.parametrize("which", ["frontier", "analog"])
@pytest.mark.parametrize("method", ONE_MODEL_METHODS)
def test_every_method_follows_the_result_contract(
    method: str, which: str, models: dict[str, LoadedModel]
) -> None:
    loaded = models[which]
    spec = spec_for(method, loaded.tokenizer)
    calls: list[tuple[int, int]] = []
    result = run(
        spec,
        loaded,
        reference=models["frontier"],
        progress=lambda done, total: calls.append((done, total)),
    )
    metrics, profiles = CONTRACT[method]
    assert result.method == method
    assert metrics <= set(result.metrics), set(result.metrics)
    assert profiles <= set(result.profiles), set(result.profiles)
    assert TABLES.get(method, set()) <= set(result.tables)
    assert all(math.isfinite(v) for v in result.metrics.values())
    n_layers = result.model.layers
    for profile in result.profiles.values():
        assert len(profile.values) == len(profile.depths) == len(profile.indices)
        assert all(0.0 <= d <= 1.0 for d in profile.depths)
        assert all(0 <= i < n_layers for i in profile.indices)
        assert all(math.isfinite(v) for v in profile.values)
    for table in result.tables.values():
        assert all(math.isfinite(v) for row in table for v in row)
    main = MAIN_PROFILE.get(method)
    if main:
        assert main in result.profiles
    # recorded: the spec self-contained, the hash of the spec as given, who ran it
    assert result.spec_hash == spec_hash(spec)
    assert "task_set" not in json.dumps(result.spec)
    assert parse_spec(result.spec).method == method
    assert result.model.name == loaded.name
    assert result.model.weights_sha256 == loaded.weights_sha256
    assert result.model.parameters == sum(p.numel() for p in loaded.model.parameters())
    assert result.device == "cpu"
    assert set(result.versions) == {"analoglab", "torch", "transformers", "python"}
    assert result.timings["total_seconds"] > 0
    assert result.size_bytes == len(result.model_dump_json().encode())
    assert ExperimentResult.model_validate_json(result.model_dump_json()) == result
    assert calls and calls[-1][0] == calls[-1][1] > 0
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(calls))
    # the uncertainty: replicates of the headline metrics and main profiles
    boot = result.bootstrap
    if method not in BOOTSTRAPPED:
        assert boot is None
        return
    assert boot is not None and boot.resamples == spec.bootstrap.resamples == 200
    assert (set(boot.metrics), set(boot.profiles)) == BOOTSTRAPPED[method]
    assert boot.items and all(n > 0 for n in boot.items.values())
    for name, values in boot.metrics.items():
        assert len(values) == 200 and all(math.isfinite(v) for v in values)
        low, high = boot.interval(name) or (math.nan, math.nan)
        assert low <= high
    for name, rows in boot.profiles.items():
        assert len(rows) == 200
        assert all(len(row) == len(result.profiles[name].values) for row in rows)


def test_a_results_size_is_the_size_of_its_own_json_across_digit_counts() -> None:
    """``with_size`` writes the size of the JSON that holds it, also where writing the size
    adds a digit (a result of 999 bytes with a size of 0 is 1,001 with its own)."""
    from analoglab.experiments.result import ModelIdentity

    def result(note: str) -> ExperimentResult:
        model = ModelIdentity(
            name="m", weights_sha256="0" * 64, model_type="llama", layers=1, hidden_size=8,
            parameters=1,
        )  # fmt: skip
        spec = {"method": "evaluation", "note": note}
        return ExperimentResult(
            method="evaluation", spec_hash="0" * 64, spec=spec, model=model, device="cpu",
            versions={},
        )  # fmt: skip

    base = len(result("").model_dump_json().encode())
    digits = set()
    for target in (99, 100, 999, 1000, 9998, 9999, 10000):
        for extra in range(max(0, target - base - 3), max(0, target - base + 3)):
            sized = result("x" * extra).with_size()
            assert sized.size_bytes == len(sized.model_dump_json().encode()), extra
            digits.add(len(str(sized.size_bytes)))
    assert digits >= {3, 4, 5}


@pytest.mark.parametrize("method", ONE_MODEL_METHODS)
def test_a_spec_run_twice_gives_the_same_result(
    method: str, analog: LoadedModel, frontier: LoadedModel
) -> None:
    spec = spec_for(method, analog.tokenizer)
    a = run(spec, analog, reference=frontier)
    b = run(spec, analog, reference=frontier)
    assert a.metrics == b.metrics
    assert a.profiles == b.profiles
    assert a.tables == b.tables
    assert a.samples == b.samples


@pytest.mark.parametrize("n", [1, 5, 23, 24, 40])
def test_moments_give_the_covariance_eigenvalues_for_few_rows_and_many(n: int) -> None:
    """Streamed in chunks, the eigenvalues are the population covariance's (numpy's),
    largest first and clamped at 0, whether the rows are fewer than the width (kept, and
    solved through their Gram matrix) or not (the streamed second moment)."""
    from analoglab.experiments.methods.common import Moments

    d = 24
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * np.linspace(3.0, 0.1, d) + 5.0
    m = Moments(d, torch.device("cpu"))
    for chunk in np.array_split(x, 3):
        if len(chunk):
            m.add(torch.tensor(chunk, dtype=torch.float32))
    rows = torch.tensor(x, dtype=torch.float32).double().numpy()
    want = np.clip(np.linalg.eigvalsh(np.cov(rows, rowvar=False, bias=True)), 0, None)[::-1]
    got = m.covariance_eigenvalues().numpy()
    assert got.shape == (d,) and np.all(np.diff(got) <= 1e-12) and got.min() >= 0
    assert np.allclose(got, want, rtol=1e-9, atol=1e-9 * want[0])
    assert (m.rows is not None) == (n < d)


def test_seeding_draws_what_torch_manual_seed_draws_and_identity_counts_parameters(
    analog: LoadedModel, frontier: LoadedModel
) -> None:
    """The runner's seeding (on the CPU alone: the default generator, no lazy CUDA seeding
    queued) draws the numbers torch.manual_seed gives; a model's identity counts its
    parameters (counted once per model, and again for another model)."""
    from analoglab.experiments.runner import model_identity, seed_everything

    for seed in (0, 7, 2**40 + 3):
        torch.manual_seed(seed)
        want = (torch.rand(5), torch.randint(0, 100, (5,)))
        torch.manual_seed(seed + 1)  # anything else in between
        seed_everything(seed)
        got = (torch.rand(5), torch.randint(0, 100, (5,)))
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    count = sum(p.numel() for p in analog.model.parameters())
    assert model_identity(analog).parameters == count
    assert model_identity(analog).parameters == count  # the cached count
    theirs = sum(p.numel() for p in frontier.model.parameters())
    assert theirs != count and model_identity(frontier).parameters == theirs


def test_the_same_spec_has_the_same_hash_on_every_model(
    analog: LoadedModel, frontier: LoadedModel
) -> None:
    spec = spec_for("steering", analog.tokenizer)
    a, f = run(spec, analog), run(spec, frontier)
    assert a.spec_hash == f.spec_hash == spec_hash(spec)
    report = compare(a, f)
    assert report.method == "steering" and 0.0 <= report.score <= 1.0


# -- layers -----------------------------------------------------------------------------------


def test_layers_resolve_by_depth_index_or_all() -> None:
    blocks = select_blocks(Layers(depths=[0.0, 0.5, 0.49, 1.0]), 3)
    assert blocks.indices == (0, 1, 2) and blocks.depths == (0.0, 0.5, 1.0)
    assert select_blocks(Layers(depths=[0.0, 0.25, 0.5, 0.75, 1.0]), 48).indices == (
        0,
        12,
        24,
        35,
        47,
    )
    assert select_blocks(Layers(indices=[-1, 0, 2]), 3).indices == (2, 0)
    assert select_blocks(Layers(), 4).indices == (0, 1, 2, 3)
    assert select_blocks(Layers(), 1).depths == (0.0,)
    assert relative_depth(3, 4) == 1.0 and relative_depth(0, 1) == 0.0


@pytest.mark.parametrize("layers", [Layers(indices=[2]), Layers(indices=[-3]), Layers(indices=[])])
def test_bad_layers_are_refused_with_the_model_size(layers: Layers) -> None:
    with pytest.raises(ExperimentError, match="layer|empty"):
        select_blocks(layers, 2, "tiny")


def test_a_layer_out_of_range_fails_the_run(analog: LoadedModel) -> None:
    spec = parse_spec(
        {
            "method": "activation_stats",
            "layers": {"indices": [0, 5]},
            "data": {"kind": "prompts", "prompts": ["a cat"]},
        }
    )
    with pytest.raises(ExperimentError, match="layer index 5 is out of range.*2 blocks"):
        run(spec, analog)


def test_prompts_are_left_padded_and_keep_their_last_tokens(analog: LoadedModel) -> None:
    tok = analog.tokenizer
    texts = ["the cat sat on the mat by the door", "a dog"]
    full = token_ids(tok, texts)
    cut = len(full[1]) + 2
    assert len(full[0]) > cut
    enc = encode(tok, texts, max_tokens=cut, device="cpu")
    assert enc.lengths == (cut, len(full[1]))
    assert enc.input_ids[0].tolist() == full[0][-cut:]
    assert enc.input_ids[1, 2:].tolist() == full[1]
    assert enc.attention_mask[1].tolist() == [0, 0] + [1] * len(full[1])
    assert enc.input_ids[1, :2].tolist() == [tok.pad_token_id] * 2


# -- activation statistics --------------------------------------------------------------------


def test_activation_stats_positions_and_pca_table(analog: LoadedModel) -> None:
    prompts = {"kind": "prompts", "prompts": ["the cat sat", "a dog ran far away", "Tom"]}
    results = {
        pos: run(
            parse_spec(
                {
                    "method": "activation_stats",
                    "data": prompts,
                    "position": pos,
                    "pca_components": 5,
                }
            ),
            analog,
        )
        for pos in ("last", "mean", "all")
    }
    assert results["last"].metrics["vectors"] == results["mean"].metrics["vectors"] == 3
    assert results["all"].metrics["vectors"] == sum(
        len(ids) for ids in token_ids(analog.tokenizer, prompts["prompts"])
    )
    for res in results.values():
        table = res.tables["pca_explained_variance"]
        assert len(table) == 2 and all(len(row) == 5 for row in table)
        for row, top1 in zip(table, res.profiles["pca_top1"].values, strict=True):
            assert row[0] == top1 and sum(row) <= 1 + 1e-9
            assert row == sorted(row, reverse=True)
        assert all(0 <= v <= 1 + 1e-9 for v in res.profiles["mean_direction"].values)
    # 3 vectors span at most 2 directions after centring
    assert results["last"].tables["pca_explained_variance"][0][2:] == pytest.approx([0.0] * 3)


# -- steering ---------------------------------------------------------------------------------


def test_steering_by_zero_changes_nothing(analog: LoadedModel) -> None:
    spec = spec_for("steering", analog.tokenizer).model_copy(update={"scales": [0.0]})
    result = run(spec, analog)
    assert result.metrics["effect"] == 0.0
    assert result.profiles["effect"].values == [0.0, 0.0]
    assert result.profiles["side_effect_kl"].values == [0.0, 0.0]
    base = result.metrics["unsteered_score"]
    assert result.tables["score"] == [[base], [base]]


def test_steering_tables_follow_the_scales_and_the_random_control(analog: LoadedModel) -> None:
    spec = spec_for("steering", analog.tokenizer)
    spec = spec.model_copy(update={"scales": [4.0, -1.0, 0.0, 1.0], "position": "last"})
    result = run(spec, analog)
    base, swing = result.metrics["unsteered_score"], result.metrics["swing"]
    for scores, effects in zip(
        result.tables["score"], result.tables["normalised_effect"], strict=True
    ):
        assert len(scores) == 4 and scores[2] == base
        assert effects == pytest.approx([(s - base) / max(abs(swing), 0.5) for s in scores])
    assert result.profiles["effect"].values == [
        row[0] for row in result.tables["normalised_effect"]
    ]
    control = run(spec.model_copy(update={"control": "random_vector"}), analog)
    assert control.metrics["vector_norm_mean"] == pytest.approx(result.metrics["vector_norm_mean"])
    assert control.tables["score"] != result.tables["score"]
    no_neutral = run(spec.model_copy(update={"neutral": None}), analog)
    assert "side_effect_kl" not in no_neutral.profiles
    # the random control's tables are its first draw's; its effect is the draws' mean, and
    # replicates go through them all
    one_draw = run(spec.model_copy(update={"control": "random_vector", "random_draws": 1}), analog)
    assert one_draw.tables == control.tables
    assert one_draw.metrics["effect"] != control.metrics["effect"]
    column = spec.scales.index(4.0)
    assert one_draw.profiles["effect"].values == pytest.approx(
        [row[column] for row in one_draw.tables["normalised_effect"]]
    )
    assert one_draw.bootstrap is not None and control.bootstrap is not None
    assert one_draw.bootstrap.metrics["effect"] != control.bootstrap.metrics["effect"]
    assert control.bootstrap.items == {"evaluate": 6, "contrast": 6}


def test_random_directions_come_in_opposite_pairs_and_their_effect_is_the_mean(
    analog: LoadedModel,
) -> None:
    # At a small scale the response is linear in the direction: a draw and its opposite
    # steer by equal and opposite amounts, so the pair's mean effect is (nearly) nothing.
    spec = spec_for("steering", analog.tokenizer).model_copy(
        update={"scales": [0.05], "control": "random_vector", "position": "last"}
    )
    single = run(spec.model_copy(update={"random_draws": 1}), analog)
    paired = run(spec.model_copy(update={"random_draws": 2}), analog)
    assert abs(single.metrics["effect"]) > 1e-4
    assert abs(paired.metrics["effect"]) < 0.05 * abs(single.metrics["effect"])
    assert paired.bootstrap is not None
    # replicate b uses draw b mod 2: the odd replicates steer the opposite way
    reps = np.asarray(paired.bootstrap.profiles["effect"])
    even, odd = reps[0::2].mean(axis=0), reps[1::2].mean(axis=0)
    assert np.sign(even) == pytest.approx(-np.sign(odd))
    assert np.abs(even + odd).max() < 0.2 * np.abs(even).max()
    # the point profile is the mean of the two draws' profiles
    first = np.asarray(single.profiles["effect"].values)
    assert np.asarray(paired.profiles["effect"].values) == pytest.approx(
        np.zeros_like(first), abs=0.05 * np.abs(first).max()
    )


def test_random_draws_after_the_first_steer_at_the_headline_scale_only(
    analog: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analoglab.experiments.methods import common

    spec = spec_for("steering", analog.tokenizer)
    spec = spec.model_copy(
        update={"scales": [-2.0, 1.0, 4.0], "control": "random_vector", "random_draws": 3}
    )
    scales: list[float] = []
    real_run_alone = common.run_alone

    def counting(model: Any, p: Any) -> Any:  # every pass a method runs alone goes here
        if p.steer is not None:
            scales.append(p.steer.scale)
        return real_run_alone(model, p)

    monkeypatch.setattr(common, "run_alone", counting)
    progress: list[tuple[int, int]] = []
    result = run(spec, analog, progress=lambda done, total: progress.append((done, total)))
    layers, eval_chunks, neutral_chunks = 2, 2, 1  # 6 evaluate prompts, 4 neutral, batches of 4
    # draw 0 sweeps the three scales (the tables); draws 1 and 2 only the headline scale 4
    steer_calls = eval_chunks * layers * (3 + 2)
    assert len(scales) == steer_calls + neutral_chunks * layers
    assert scales.count(-2.0) == scales.count(1.0) == eval_chunks * layers
    # the plan counts what runs: the bar ends at its total
    assert progress[-1][0] == progress[-1][1]
    assert result.bootstrap is not None and len(result.tables["score"][0]) == 3


def test_the_sentiment_direction_steers_the_frontier_and_a_random_one_less(
    frontier: LoadedModel,
) -> None:
    # The tiny frontier learned sentiment: steering along good − bad moves its verdict.
    spec = parse_spec(
        {
            "method": "steering",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 32},
            "evaluate": {"kind": "task_set", "name": "sentiment", "n": 32},
            "target": " good",
            "foil": " bad",
            "scales": [-4, 0, 4],
            "layers": {"depths": [0.0, 1.0]},
        }
    )
    result = run(spec, frontier)
    assert result.metrics["swing"] > 1.0
    assert result.metrics["effect"] > 0.3
    assert all(row[0] < 0.0 < row[2] for row in result.tables["normalised_effect"])
    control = run(spec.model_copy(update={"control": "random_vector"}), frontier)
    assert abs(control.metrics["effect"]) < result.metrics["effect"] / 2


def test_steering_needs_answers_that_differ_and_pairs(analog: LoadedModel) -> None:
    spec = spec_for("steering", analog.tokenizer)
    with pytest.raises(ExperimentError, match="same token"):
        run(spec.model_copy(update={"target": " Tom", "foil": " Tom was"}), analog)
    bad = spec.model_copy(update={"contrast": Prompts(prompts=["x"])})
    with pytest.raises(ExperimentError, match="contrast pairs"):
        run(bad, analog)


# -- probe ------------------------------------------------------------------------------------

SUBJECTS = [
    "the food",
    "the film",
    "the room",
    "the book",
    "the trip",
    "the game",
    "the song",
    "the show",
    "the meal",
    "the town",
    "the park",
    "the shop",
    "the play",
    "the cafe",
    "the bus",
    "the hotel",
    "the class",
    "the team",
    "the city",
    "the view",
]


def separable(n_subjects: int = 20) -> dict[str, Any]:
    """Texts whose label is decided by their last word (Tom: 0, Sam: 1)."""
    items = [
        {"text": f"{subject} was seen by {name}", "label": label}
        for subject in SUBJECTS[:n_subjects]
        for variant in ("", " then")
        for name, label in ((f"{variant} Tom", 0), (f"{variant} Sam", 1))
    ]
    return {"kind": "labelled", "items": items}


def test_a_probe_reads_a_word_that_decides_the_label(analog: LoadedModel) -> None:
    spec = parse_spec({"method": "probe", "data": separable(), "test_fraction": 0.5})
    result = run(spec, analog)
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["chance"] == 0.5 and result.metrics["effect"] == 1.0
    assert result.metrics["test_examples"] == 40 and result.metrics["classes"] == 2
    shuffled = run(spec.model_copy(update={"control": "shuffled_labels"}), analog)
    assert shuffled.metrics["accuracy"] <= 0.7
    assert shuffled.metrics["effect"] < 0.4


def test_probe_intervals_go_through_every_split(analog: LoadedModel) -> None:
    spec = parse_spec({"method": "probe", "data": separable(), "test_fraction": 0.5})
    one = run(spec.model_copy(update={"splits": 1}), analog)
    four = run(spec, analog)  # 4 splits by default; the point estimate reads all of them
    # a word that decides the label: perfect at the layer chosen, on one split or four
    assert one.metrics["accuracy"] == four.metrics["accuracy"] == 1.0
    assert one.metrics["effect"] == four.metrics["effect"] == 1.0
    # the profile is the mean over the splits (split 0 alone is the one-split run's)
    assert four.profiles["accuracy"].values[0] == one.profiles["accuracy"].values[0] == 1.0
    assert four.bootstrap is not None and four.bootstrap.items == {"test": 40}
    # a word that decides the label is read on every split and every resample
    assert four.bootstrap.interval("accuracy") == (1.0, 1.0)
    shuffled = run(spec.model_copy(update={"control": "shuffled_labels"}), analog)
    assert shuffled.bootstrap is not None
    low, high = shuffled.bootstrap.interval("effect") or (1.0, 0.0)
    assert low < 0.1 < high  # a control's interval is wide, and reaches down to nothing


def test_probes_on_pairs_and_on_choices(analog: LoadedModel) -> None:
    pairs = run(
        parse_spec(
            {
                "method": "probe",
                "position": "mean",
                "data": {"kind": "task_set", "name": "sentiment_pairs", "n": 12},
            }
        ),
        analog,
    )
    assert pairs.metrics["classes"] == 2 and pairs.metrics["test_examples"] == 8
    facts = run(
        parse_spec({"method": "probe", "data": {"kind": "task_set", "name": "facts", "n": 36}}),
        analog,
    )
    assert facts.metrics["classes"] > 2
    assert facts.metrics["chance"] < 0.5


def test_a_probe_needs_two_classes_with_examples(analog: LoadedModel) -> None:
    one_class = {"kind": "labelled", "items": [{"text": f"a {i}", "label": 3} for i in range(6)]}
    with pytest.raises(ExperimentError, match="at least 2 classes"):
        run(parse_spec({"method": "probe", "data": one_class}), analog)
    lonely = {
        "kind": "labelled",
        "items": [{"text": f"a {i}", "label": int(i == 0)} for i in range(6)],
    }
    with pytest.raises(ExperimentError, match="class '1' has 1 example"):
        run(parse_spec({"method": "probe", "data": lonely}), analog)
    with pytest.raises(ExperimentError, match="labelled texts"):
        run(parse_spec({"method": "probe", "data": {"kind": "prompts", "prompts": ["a"]}}), analog)



def test_small_probes_are_fitted_on_the_cpu_and_large_ones_where_the_model_is() -> None:
    from analoglab.experiments.methods.logistic import CPU_FIT_VALUES, fit_device

    # a few hundred examples of a small model's width: on the CPU, even for a model on a GPU
    assert fit_device(400 * 128, "cuda") == torch.device("cpu")
    assert fit_device(CPU_FIT_VALUES, torch.device("cuda", 0)) == torch.device("cpu")
    # a large fit stays on the model's device
    assert fit_device(CPU_FIT_VALUES + 1, "cuda:0") == torch.device("cuda", 0)
    assert fit_device(CPU_FIT_VALUES + 1, "cpu") == torch.device("cpu")


def _objective(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float
) -> float:
    x, w, b = x.double(), w.double(), b.double()
    ce = torch.nn.functional.cross_entropy(x @ w + b, y)
    return float(ce + 0.5 * l2 * (w * w).sum())


def test_newton_probe_fits_reach_the_minimum_lbfgs_approaches() -> None:
    from analoglab.experiments.methods.logistic import fit_logistic, fit_logistic_many

    n_classes = 2
    g = torch.Generator().manual_seed(0)
    # four problems of 60 examples in 24 dimensions, the classes partly separable
    x = torch.randn(4, 60, 24, generator=g)
    y = torch.randint(0, n_classes, (4, 60), generator=g)
    x[:, :, 0] += 1.5 * y  # one feature carries the label
    w, b = fit_logistic_many(x, y, n_classes, 0.05)
    assert w.shape == (4, 24, n_classes) and b.shape == (4, n_classes)
    assert w.dtype == x.dtype
    for f in range(4):
        ref_w, ref_b = fit_logistic(x[f], y[f], n_classes, 0.05)
        newton, lbfgs = _objective(x[f], y[f], w[f], b[f], 0.05), _objective(
            x[f], y[f], ref_w, ref_b, 0.05
        )
        # the same strictly convex minimum: Newton's is no higher than L-BFGS's, and close
        assert newton <= lbfgs + 1e-6
        assert lbfgs - newton < 1e-4
        torch.testing.assert_close(w[f], ref_w, atol=2e-3, rtol=0)
        # the gradient vanishes there: the weights are the minimum, not a step towards it
        wd = w[f].double().requires_grad_(True)
        bd = b[f].double().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(x[f].double() @ wd + bd, y[f])
        (loss + 0.5 * 0.05 * (wd * wd).sum()).backward()
        assert wd.grad is not None and float(wd.grad.abs().max()) < 1e-5
        # softmax ignores a constant added to every bias; the fit's biases sum to zero
        assert abs(float(b[f].sum())) < 1e-5
    # a fit does not depend on the others fitted beside it
    alone_w, alone_b = fit_logistic_many(x[2:3], y[2:3], n_classes, 0.05)
    torch.testing.assert_close(alone_w[0], w[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone_b[0], b[2], atol=1e-6, rtol=0)


def test_probe_fits_without_a_penalty_or_too_wide_for_newton_run_lbfgs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from analoglab.experiments.methods import logistic as probe

    assert probe.newton_fits(192, 2, 0.01) and probe.newton_fits(1024, 2, 1e-6)
    # no penalty: separable data has no minimum, Newton's steps would grow without end
    assert not probe.newton_fits(192, 2, 0.0)
    assert not probe.newton_fits(probe.NEWTON_MAX_WIDTH + 1, 2, 0.01)  # too wide
    assert not probe.newton_fits(192, 3, 0.01)  # three classes: L-BFGS
    calls: list[int] = []
    real = probe.fit_logistic

    def counting(x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.shape[0])
        return real(x, *args)

    monkeypatch.setattr(probe, "fit_logistic", counting)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 10, 8, generator=g), torch.randint(0, 2, (3, 10), generator=g)
    w, b = probe.fit_logistic_many(x, y, 2, 0.0)
    assert calls == [10, 10, 10] and w.shape == (3, 8, 2) and b.shape == (3, 2)
    calls.clear()
    probe.fit_logistic_many(x, y, 2, 0.1)
    assert calls == []
    y3 = torch.randint(0, 3, (3, 10), generator=g)
    w, b = probe.fit_logistic_many(x, y3, 3, 0.1)
    assert calls == [10, 10, 10] and w.shape == (3, 8, 3) and b.shape == (3, 3)


def test_pooled_fits_of_other_sizes_and_penalties_equal_each_alone() -> None:
    from analoglab.experiments.methods.logistic import BinaryFits, solve_binary

    g = torch.Generator().manual_seed(3)

    def request(fits: int, n: int, d: int, l2: float) -> BinaryFits:
        x = torch.randn(fits, n, d, generator=g)
        y = torch.randint(0, 2, (fits, n), generator=g)
        x[:, :, 0] += 2.0 * y
        return BinaryFits(x, y, l2)

    # probes of 30 and 12 examples and another penalty at one width, one of another width
    requests = [request(3, 30, 16, 0.01), request(2, 12, 16, 1.0), request(2, 20, 8, 0.1)]
    pooled = solve_binary(requests)
    assert [w.shape for w, _ in pooled] == [(3, 16, 2), (2, 16, 2), (2, 8, 2)]
    for r, (w, b) in zip(requests, pooled, strict=True):
        alone_w, alone_b = solve_binary([r])[0]
        torch.testing.assert_close(w, alone_w, atol=1e-6, rtol=0)
        torch.testing.assert_close(b, alone_b, atol=1e-6, rtol=0)
    # the padding rows of the shorter request change nothing: its fit is its own minimum
    w, b = pooled[1]
    ref_w, ref_b = solve_binary([BinaryFits(requests[1].x[:1], requests[1].y[:1], 1.0)])[0]
    torch.testing.assert_close(w[:1], ref_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(b[:1], ref_b, atol=1e-6, rtol=0)
    # a heavier penalty gives smaller weights on the same kind of data
    assert float(pooled[1][0].norm()) < float(pooled[0][0].norm())


def test_fits_with_fewer_examples_than_features_solve_in_the_examples_space(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from analoglab.experiments.methods import logistic

    g = torch.Generator().manual_seed(5)
    # a probe's shape: 17 training texts of a 64-wide stream (and padding rows)
    x = torch.randn(3, 17, 64, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (3, 17), generator=g)
    # the step itself equals the (d+1)-square Hessian's solve, padding rows included
    weight = torch.rand(3, 17, dtype=torch.float64, generator=g) * 0.05
    weight[:, -3:] = 0.0
    grad = torch.randn(3, 65, dtype=torch.float64, generator=g)
    lam = torch.tensor([5e-3, 0.1, 2.0], dtype=torch.float64)
    xt = torch.cat([x, (weight > 0).to(x.dtype).unsqueeze(2)], dim=2)
    ridge = torch.cat([lam[:, None].expand(3, 64), torch.full((3, 1), 1e-12)], dim=1)
    hess = (xt * weight.unsqueeze(2)).transpose(1, 2) @ xt + torch.diag_embed(ridge)
    expected = -torch.linalg.solve(hess, grad.unsqueeze(2)).squeeze(2)
    step = logistic._few_examples_step(x, weight, grad, lam)
    assert step is not None
    torch.testing.assert_close(step, expected, atol=1e-8 * float(expected.abs().max()), rtol=0)
    # whole fits: the same minimum as through the Hessian (the path turned off)
    request = logistic.BinaryFits(x.float(), y, 0.02)
    few_w, few_b = logistic.solve_binary([request])[0]
    calls: list[int] = []
    real_step = logistic._few_examples_step

    def never(*args: Any) -> None:
        calls.append(1)
        return None

    monkeypatch.setattr(logistic, "_few_examples_step", never)
    full_w, full_b = logistic.solve_binary([request])[0]
    assert calls  # the fits above asked for the examples' step; here it fell back
    torch.testing.assert_close(few_w, full_w, atol=1e-5, rtol=0)
    torch.testing.assert_close(few_b, full_b, atol=1e-5, rtol=0)
    monkeypatch.setattr(logistic, "_few_examples_step", real_step)
    # more examples than features: the Hessian's own solve, the examples' step never asked
    wide_y = torch.randint(0, 2, (2, 40), generator=g)
    wide = logistic.BinaryFits(torch.randn(2, 40, 8, generator=g), wide_y, 0.1)
    monkeypatch.setattr(logistic, "_few_examples_step", never)
    calls.clear()
    logistic.solve_binary([wide])
    assert calls == []


# -- ablation ---------------------------------------------------------------------------------


def test_ablation_effect_is_the_share_of_the_behaviour_removed(frontier: LoadedModel) -> None:
    spec = spec_for("ablation", frontier.tokenizer)
    for mode in ("zero", "mean"):
        result = run(spec.model_copy(update={"ablation": mode}), frontier)
        clean = result.metrics["clean_logit_diff"]
        heads, mlp = result.tables["heads"], result.profiles["mlp"].values
        n_heads = layout_of(frontier.model).n_heads
        assert len(heads) == 2 and all(len(row) == n_heads for row in heads)
        shown = result.metrics["behaviour"] == 1.0
        expected = [
            max(-d / abs(clean) for d in [*row, m]) if shown else 0.0
            for row, m in zip(heads, mlp, strict=True)
        ]
        assert result.profiles["effect"].values == pytest.approx(expected)
        # the headline component is chosen once; its replicates are of that one component
        assert result.bootstrap is not None
        reps = np.asarray(result.bootstrap.metrics["effect"])
        assert abs(float(np.median(reps)) - result.metrics["effect"]) <= 0.5 * float(
            np.ptp(reps)
        ) + 1e-9
    only_mlp = run(spec.model_copy(update={"components": "mlp"}), frontier)
    assert "heads" not in only_mlp.tables and "mlp" in only_mlp.profiles
    only_heads = run(spec.model_copy(update={"components": "heads"}), frontier)
    assert "mlp" not in only_heads.profiles and "heads" in only_heads.tables


def test_mean_ablation_of_an_unvarying_activation_changes_nothing(frontier: LoadedModel) -> None:
    # One token per prompt (the last, the same in every item): each activation is its own mean.
    items = [{"prompt": f"{s} was given to", "target": " Tom", "foil": " Sam"} for s in SUBJECTS]
    spec = parse_spec(
        {
            "method": "ablation",
            "data": {"kind": "choices", "items": items},
            "ablation": "mean",
            "max_tokens_per_prompt": 1,
        }
    )
    result = run(spec, frontier)
    assert all(abs(d) < 1e-5 for row in result.tables["heads"] for d in row)
    assert all(abs(d) < 1e-5 for d in result.profiles["mlp"].values)


def test_ablation_needs_choices(analog: LoadedModel) -> None:
    spec = parse_spec({"method": "ablation", "data": {"kind": "prompts", "prompts": ["a b"]}})
    with pytest.raises(ExperimentError, match="ablation needs choices"):
        run(spec, analog)


# -- patching ---------------------------------------------------------------------------------


def sharp_answers(loaded: LoadedModel, pairs: list[dict[str, str]]) -> tuple[str, str]:
    """A target and foil whose logit difference the corruption moves most (on this model)."""
    from analoglab.experiments.methods.common import forward

    tok = loaded.tokenizer
    clean = forward(loaded.model, encode(tok, [p["clean"] for p in pairs], 128, "cpu"))
    corrupt = forward(loaded.model, encode(tok, [p["corrupt"] for p in pairs], 128, "cpu"))
    diff = (clean - corrupt).mean(0)

    def round_trips(order: torch.Tensor) -> str:
        for i in order.tolist():
            word = tok.decode([i])
            if word.strip() and first_token_ids(tok, [word]) == [i]:
                return str(word)
        raise AssertionError("no answer token round-trips")

    return round_trips(diff.argsort(descending=True)), round_trips(diff.argsort())


def test_patching_the_last_block_at_the_last_token_restores_the_clean_answer(
    frontier: LoadedModel,
) -> None:
    pairs = equal_length_patch_pairs(frontier.tokenizer, 6)
    target, foil = sharp_answers(frontier, pairs)
    items = [{**p, "target": target, "foil": foil} for p in pairs]
    spec = parse_spec(
        {
            "method": "patching",
            "data": {"kind": "patch_pairs", "items": items},
            "per_position": True,
            "batch_size": 4,
        }
    )
    result = run(spec, frontier)
    assert abs(result.metrics["logit_swing"]) >= 1e-3
    assert result.metrics["logit_swing"] == pytest.approx(
        result.metrics["clean_logit_diff"] - result.metrics["corrupt_logit_diff"]
    )
    # the effect transfer compares: the share of items the corruption flips, in [-1, 1]
    assert -1.0 <= result.metrics["effect"] <= 1.0
    recovery = result.profiles["recovery"].values
    assert recovery[-1] == pytest.approx(1.0, abs=1e-4)
    table = result.tables["recovery_by_position"]
    n_pos = int(result.metrics["positions"])
    assert n_pos == min(
        len(ids) for ids in token_ids(frontier.tokenizer, [p["clean"] for p in pairs])
    )
    assert all(len(row) == n_pos for row in table)
    assert [row[-1] for row in table] == recovery
    # after the last block, earlier positions no longer reach the last token's logits
    assert table[-1][:-1] == pytest.approx([0.0] * (n_pos - 1), abs=1e-4)


def test_patching_a_prompt_into_itself_has_no_effect(analog: LoadedModel) -> None:
    text = "Tom and Sam were at the river. Tom passed the ring to"
    item = {"clean": text, "corrupt": text, "target": " Sam", "foil": " Tom"}
    spec = parse_spec(
        {
            "method": "patching",
            "data": {"kind": "patch_pairs", "items": [item]},
            "per_position": True,
        }
    )
    result = run(spec, analog)
    assert result.metrics["effect"] == 0.0
    assert result.profiles["recovery"].values == [0.0, 0.0]
    assert all(v == 0.0 for row in result.tables["recovery_by_position"] for v in row)


def test_patch_pairs_of_unequal_length_are_refused_by_item(analog: LoadedModel) -> None:
    good = {
        "clean": "Tom gave it to",
        "corrupt": "Sam gave it to",
        "target": " Sam",
        "foil": " Tom",
    }
    bad = {
        "clean": "Tom gave it to",
        "corrupt": "Tom and Sam gave it to",
        "target": " Sam",
        "foil": " Tom",
    }
    spec = parse_spec({"method": "patching", "data": {"kind": "patch_pairs", "items": [good, bad]}})
    with pytest.raises(ExperimentError, match="patch pair 1 .* equal token lengths"):
        run(spec, analog)


# -- evaluation -------------------------------------------------------------------------------


def test_evaluation_accuracy_labels_and_bounded_samples(analog: LoadedModel) -> None:
    spec = spec_for("evaluation", analog.tokenizer)
    result = run(spec, analog)
    m = result.metrics
    assert m["effect"] == pytest.approx((m["accuracy"] - 0.5) / 0.5)
    labels = {item.label for item in task_set("facts", 10).items}
    assert {f"accuracy.{label}" for label in labels} <= set(m)
    assert len(result.samples) == 3
    for sample in result.samples:
        assert len(analog.tokenizer(sample, add_special_tokens=False)["input_ids"]) <= 4
    no_samples = run(spec.model_copy(update={"samples": None}), analog)
    assert no_samples.samples == [] and no_samples.metrics == result.metrics


def test_evaluation_replicates_resample_the_items(frontier: LoadedModel) -> None:
    spec = parse_spec(
        {
            "method": "evaluation",
            "data": {"kind": "task_set", "name": "sentiment", "n": 40},
            "bootstrap": {"resamples": 400, "seed": 3},
        }
    )
    result = run(spec, frontier)
    boot = result.bootstrap
    assert boot is not None and boot.resamples == 400 and boot.seed == 3
    replicates = boot.metrics["accuracy"]
    # every replicate is a share of 40 items, centred on the point accuracy
    assert all(abs(v * 40 - round(v * 40)) < 1e-6 for v in replicates)
    assert sum(replicates) / 400 == pytest.approx(result.metrics["accuracy"], abs=0.03)
    assert boot.metrics["effect"] == pytest.approx([2 * v - 1 for v in replicates], abs=1e-5)


def test_evaluation_agrees_with_the_foundry_choice_accuracy(frontier: LoadedModel) -> None:
    from analoglab.foundry.fidelity import choice_accuracy

    items = task_set("sentiment", 16).items
    spec = parse_spec(
        {
            "method": "evaluation",
            "batch_size": 5,
            "data": {"kind": "task_set", "name": "sentiment", "n": 16},
        }
    )
    with torch.no_grad():
        expected = choice_accuracy(frontier.model, frontier.tokenizer, items)
    assert run(spec, frontier).metrics["accuracy"] == expected


# -- fidelity ---------------------------------------------------------------------------------


def test_a_model_is_faithful_to_itself(frontier: LoadedModel) -> None:
    spec = spec_for("fidelity", frontier.tokenizer)
    result = run(spec, frontier, reference=frontier)
    assert result.metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.metrics["top1_agreement"] == 1.0
    assert result.metrics["behaviour_agreement"] == 1.0
    assert result.profiles["cka"].values == pytest.approx([1.0, 1.0], abs=1e-6)
    assert result.metrics["cka_mean"] == pytest.approx(1.0, abs=1e-6)


def test_fidelity_of_an_analog_is_below_perfect(analog: LoadedModel, frontier: LoadedModel) -> None:
    result = run(spec_for("fidelity", analog.tokenizer), analog, reference=frontier)
    assert result.metrics["kl"] > 0
    assert 0 <= result.metrics["top1_agreement"] <= 1
    assert all(0 <= v <= 1 + 1e-9 for v in result.profiles["cka"].values)
    assert result.profiles["cka"].indices == [0, 1]


def test_fidelity_needs_a_reference_with_the_same_vocabulary(
    analog: LoadedModel, frontier: LoadedModel
) -> None:
    spec = spec_for("fidelity", analog.tokenizer)
    with pytest.raises(ExperimentError, match="reference"):
        run(spec, analog)

    class Other:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner) + 1

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner(*args, **kwargs)

    other = LoadedModel(frontier.model, Other(frontier.tokenizer), "other", frontier.path, "x")
    with pytest.raises(ExperimentError, match="share a tokenizer"):
        run(spec, analog, reference=other)
