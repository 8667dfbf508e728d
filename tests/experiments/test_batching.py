"""Batched execution: which jobs merge (pure planning) and that a job's result is the same
alone or batched with others (the tiny foundry's frontier, float32 CPU).

Every shareable method is run alone (:func:`run`) and in one batch with the others
(:func:`run_batch`), with prompts of different lengths (so rows get more left padding in the
packed passes than alone) and different batch sizes; each result's numbers must match.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch

from analoglab.config import Settings
from analoglab.experiments.batching import (
    JobShape,
    pack_passes,
    plan_groups,
    tokens_within_memory,
    why_alone,
)
from analoglab.experiments.methods.common import ExperimentError, Pass, Steer, encode, run_alone
from analoglab.experiments.packed import run_packed, run_together
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.runner import run, run_batch
from analoglab.experiments.spec import AnySpec, parse_spec
from analoglab.foundry.build import BuildResult
from analoglab.models.loading import LoadedModel, load_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def frontier(tiny_build: tuple[Settings, BuildResult]) -> LoadedModel:
    settings = tiny_build[0]
    return load_model(settings.lab_sites_path / "tiny-lab/models/tiny-frontier", device="cpu")


# -- planning (pure) --------------------------------------------------------------------------


def shape(key: int, method: str, frontier: str = "f", **spec: Any) -> JobShape:
    return JobShape(key=key, frontier=frontier, weights="w", spec={"method": method, **spec})


def test_a_job_that_cannot_share_is_never_merged() -> None:
    jobs = [
        shape(1, "evaluation"),
        shape(2, "ablation"),
        shape(3, "patching"),
        shape(4, "steering"),
        shape(5, "mapped_steering"),
        shape(6, "probe"),
        shape(7, "fidelity"),
        shape(8, "activation_stats"),
    ]
    groups = plan_groups(jobs, batch_tokens=10**9)
    assert groups == [[1, 4, 6, 8], [2], [3], [5], [7]]
    for method in ("ablation", "patching", "mapped_steering", "mapped_probe", "fidelity"):
        assert why_alone({"method": method}) is not None
    for method in ("evaluation", "activation_stats", "probe", "steering"):
        assert why_alone({"method": method}) is None


def test_plan_keeps_frontiers_apart_in_order_up_to_max_jobs() -> None:
    jobs = [shape(k, "evaluation", "a" if k % 2 else "b") for k in range(1, 9)]
    assert plan_groups(jobs, batch_tokens=128) == [[1, 3, 5, 7], [2, 4, 6, 8]]
    assert plan_groups(jobs, batch_tokens=128, max_jobs=3) == [[1, 3, 5], [2, 4, 6], [7], [8]]
    assert plan_groups(jobs, batch_tokens=0) == [[k] for k in range(1, 9)]  # off
    # another weights file of the same frontier is another model: never merged
    other = [
        JobShape(1, "a", "w1", {"method": "probe"}),
        JobShape(2, "a", "w2", {"method": "probe"}),
    ]
    assert plan_groups(other, batch_tokens=128) == [[1], [2]]


def test_passes_pack_within_the_bound() -> None:
    shapes = [(4, 10), (4, 12), (2, 30), (8, 5), (100, 100)]
    packs = pack_passes(shapes, batch_tokens=100)
    assert packs == [[0, 1], [2], [3], [4]]
    for pack in packs[:-1]:
        rows = sum(shapes[i][0] for i in pack)
        width = max(shapes[i][1] for i in pack)
        assert rows * width <= 100
    assert pack_passes(shapes, batch_tokens=10**6) == [[0, 1, 2, 3, 4]]
    assert pack_passes([], batch_tokens=100) == []
    # a pass's fixed cost decides the cuts: 10 short rows and 2 long ones cost 10·5 + 2·40
    # tokens apart against 12·40 together, so apart unless a pass costs more than that gap
    short_long = [(1, 5)] * 10 + [(1, 40)] * 2
    assert pack_passes(short_long, 1000, pass_tokens=20) == [list(range(10)), [10, 11]]
    assert pack_passes(short_long, 1000, pass_tokens=400) == [list(range(12))]
    assert pack_passes(short_long, 1000) == [list(range(12))]  # default: the fewest passes
    # with no fixed cost every width runs alone, and never over the bound
    assert pack_passes(shapes, batch_tokens=100, pass_tokens=0) == [[0], [1], [2], [3], [4]]
    # the cuts are the cheapest: against every way to cut 6 batches (in order) in two
    rows = [(3, 4), (1, 9), (2, 9), (5, 12), (1, 30), (2, 31)]
    cost = lambda packs: sum(  # noqa: E731
        sum(rows[i][0] for i in p) * max(rows[i][1] for i in p) + 25 for p in packs
    )
    best = pack_passes(rows, 10**6, pass_tokens=25)
    for cut in range(1, 6):
        assert cost(best) <= cost([list(range(cut)), list(range(cut, 6))])
    assert cost(best) <= cost([list(range(6))])
    assert tokens_within_memory(2**30, hidden=64, intermediate=256, layers=4) > 1000
    assert tokens_within_memory(10, hidden=64, intermediate=256, layers=4) == 1


# -- alone vs batched -------------------------------------------------------------------------

PROMPTS = [
    "The film was",
    "After a long and tiring day at the office the old man finally sat down and said",
    "Paris is the capital of",
    "I",
]


def shareable_specs() -> list[AnySpec]:
    """One job per shareable method and option, data of different lengths and batch sizes."""
    raw: list[dict[str, Any]] = [
        {
            "method": "evaluation",
            "data": {"kind": "task_set", "name": "facts", "n": 7},
            "batch_size": 3,
            "samples": {"n": 2, "max_new_tokens": 3},
        },
        {"method": "evaluation", "data": {"kind": "task_set", "name": "ioi", "n": 5}, "seed": 3},
        {
            "method": "activation_stats",
            "data": {"kind": "prompts", "prompts": PROMPTS},
            "position": "all",
            "batch_size": 3,
        },
        {
            "method": "activation_stats",
            "data": {"kind": "prompts", "prompts": PROMPTS},
            "position": "mean",
        },
        {
            "method": "activation_stats",
            "data": {"kind": "task_set", "name": "neutral", "n": 5},
            "position": "last",
            "layers": {"depths": [0.0, 1.0]},
        },
        {
            "method": "probe",
            "data": {"kind": "task_set", "name": "sentiment", "n": 20},
            "batch_size": 7,
            "splits": 2,
        },
        {
            "method": "probe",
            "data": {"kind": "task_set", "name": "sentiment", "n": 16},
            "position": "mean",
            "control": "shuffled_labels",
            "seed": 5,
        },
        {
            "method": "steering",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 5},
            "evaluate": {"kind": "task_set", "name": "sentiment", "n": 5},
            "neutral": {"kind": "task_set", "name": "neutral", "n": 3},
            "target": " good",
            "foil": " bad",
            "scales": [-2, 0, 3],
            "batch_size": 2,
        },
        {
            "method": "steering",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 4},
            "evaluate": {"kind": "prompts", "prompts": PROMPTS},
            "target": " good",
            "foil": " bad",
            "scales": [4],
            "position": "last",
            "layers": {"indices": [0, -1]},
            "control": "random_vector",
            "random_draws": 2,
            "seed": 11,
        },
    ]
    return [parse_spec(r) for r in raw]


def numbers(result: ExperimentResult) -> dict[str, Any]:
    data = result.model_dump(mode="json")
    data.pop("timings")
    data.pop("size_bytes")
    return data


def assert_close(a: Any, b: Any, where: str = "result") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=ATOL), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_every_shareable_method_gives_the_same_result_alone_and_batched(
    frontier: LoadedModel,
) -> None:
    specs = shareable_specs()
    assert {s.method for s in specs} == {"evaluation", "activation_stats", "probe", "steering"}
    alone = [run(s, frontier) for s in specs]
    batched = run_batch(specs, frontier, batch_tokens=4096)
    assert len(batched) == len(specs)
    for spec, a, b in zip(specs, alone, batched, strict=True):
        assert isinstance(b, ExperimentResult), f"{spec.method}: {b}"
        assert b.timings["batched_with"] == len(specs)
        assert "batched_with" not in a.timings
        assert_close(numbers(a), numbers(b), spec.method)
    # a tight bound packs fewer rows a pass, and still changes nothing
    tight = run_batch(specs[:3], frontier, batch_tokens=64)
    for a, b in zip(alone[:3], tight, strict=True):
        assert isinstance(b, ExperimentResult)
        assert_close(numbers(a), numbers(b))


def test_the_probes_of_a_batch_fit_in_one_pooled_call(
    frontier: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analoglab.experiments import packed

    calls: list[list[tuple[int, ...]]] = []
    real = packed.solve_binary

    def counting(requests: list[Any]) -> list[Any]:
        calls.append([tuple(r.x.shape) for r in requests])
        return real(requests)

    monkeypatch.setattr(packed, "solve_binary", counting)
    specs = [s for s in shareable_specs() if s.method == "probe"]
    assert len(specs) == 2
    batched = run_batch(specs, frontier, batch_tokens=4096)
    # both probes' fits (every layer and split of each: 2 and 4 splits) in one call
    assert len(calls) == 1 and len(calls[0]) == 2
    layers = calls[0][0][0] // 2
    assert [shape[0] for shape in calls[0]] == [2 * layers, 4 * layers]
    for spec, b in zip(specs, batched, strict=True):
        assert isinstance(b, ExperimentResult)
        assert_close(numbers(run(spec, frontier)), numbers(b), spec.method)


def test_a_job_that_cannot_share_runs_alone_in_a_batch(frontier: LoadedModel) -> None:
    ablation = parse_spec(
        {"method": "ablation", "data": {"kind": "task_set", "name": "ioi", "n": 4}}
    )
    evaluation = shareable_specs()[1]
    results = run_batch([ablation, evaluation], frontier)
    assert all(isinstance(r, ExperimentResult) for r in results)
    assert "batched_with" not in results[0].timings  # type: ignore[union-attr]
    assert_close(numbers(run(ablation, frontier)), numbers(results[0]))  # type: ignore[arg-type]


def test_a_failing_job_fails_only_itself(frontier: LoadedModel) -> None:
    bad = parse_spec(
        {
            "method": "activation_stats",
            "data": {"kind": "prompts", "prompts": PROMPTS},
            "layers": {"indices": [99]},
        }
    )
    specs = [shareable_specs()[0], bad, shareable_specs()[2]]
    results = run_batch(specs, frontier)
    assert isinstance(results[1], ExperimentError)
    assert "out of range" in str(results[1])
    for spec, r in zip([specs[0], specs[2]], [results[0], results[2]], strict=True):
        assert isinstance(r, ExperimentResult)
        assert_close(numbers(run(spec, frontier)), numbers(r))


def test_per_row_hooks_touch_only_their_own_rows(frontier: LoadedModel) -> None:
    model, tok = frontier.model, frontier.tokenizer
    name = "blocks.0.hook_resid_post"
    vector = torch.randn(
        frontier.model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    passes = [
        Pass(encode(tok, PROMPTS[:2], 64, "cpu")),
        Pass(encode(tok, PROMPTS[2:], 64, "cpu"), steer=Steer(name, vector, 3.0, (-1,))),
        Pass(encode(tok, PROMPTS[:3], 64, "cpu"), capture=(name,)),  # every position
        Pass(
            encode(tok, PROMPTS, 64, "cpu"),
            steer=Steer(name, vector, -1.0),
            capture=(name,),
            positions=(-1,),
        ),
    ]
    with torch.no_grad():
        alone = [run_alone(model, p) for p in passes]
        # one forward pass for all, rows spread over several small ones, and rows cut where
        # passes cost nothing beyond their tokens (every width in a pass of its own)
        for bound, fixed in ((10**6, None), (40, None), (10**6, 0)):
            packed = run_packed(
                model, passes, pad=tok.pad_token_id or 0, batch_tokens=bound, pass_tokens=fixed
            )
            for p, a, b in zip(passes, alone, packed, strict=True):
                assert a.logits.shape == b.logits.shape
                torch.testing.assert_close(a.logits, b.logits, atol=ATOL, rtol=1e-5)
                assert set(a.cache) == set(b.cache)
                for k in a.cache:
                    assert a.cache[k].shape == b.cache[k].shape
                    if p.positions is None:  # every position: the real tokens are the same
                        real = p.enc.real
                        torch.testing.assert_close(
                            a.cache[k][real], b.cache[k][real], atol=ATOL, rtol=1e-5
                        )
                        assert not b.cache[k][~real].any()  # left padding: zeros
                    else:
                        torch.testing.assert_close(a.cache[k], b.cache[k], atol=ATOL, rtol=1e-5)
    # the steering moved the steered rows: the test would pass vacuously otherwise
    assert not torch.allclose(packed[1].logits, run_alone(model, Pass(passes[1].enc)).logits)


def test_rows_asked_by_several_passes_run_once(frontier: LoadedModel) -> None:
    """Jobs over the same prompts with the same edit (or none) share one row of the packed
    pass; another scale, another vector or another prompt is another row."""
    model, tok = frontier.model, frontier.tokenizer
    name = "blocks.0.hook_resid_post"
    d = frontier.model.config.hidden_size
    vector = torch.randn(d, generator=torch.Generator().manual_seed(1))
    same = vector.clone()  # equal values in another tensor: the same edit
    other = torch.randn(d, generator=torch.Generator().manual_seed(2))
    passes = [
        Pass(encode(tok, PROMPTS, 64, "cpu")),
        Pass(encode(tok, PROMPTS, 64, "cpu"), capture=(name,), positions=(-1,)),
        Pass(encode(tok, PROMPTS[:2], 64, "cpu")),
        Pass(encode(tok, PROMPTS, 64, "cpu"), steer=Steer(name, vector, 2.0)),
        Pass(encode(tok, PROMPTS, 64, "cpu"), steer=Steer(name, same, 2.0), capture=(name,)),
        Pass(encode(tok, PROMPTS, 64, "cpu"), steer=Steer(name, vector, 3.0)),
        Pass(encode(tok, PROMPTS[1:], 64, "cpu"), steer=Steer(name, other, 2.0)),
    ]
    seen: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(int(kwargs["input_ids"].shape[0])),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            packed = run_packed(model, passes, pad=tok.pad_token_id or 0, batch_tokens=10**6)
    finally:
        handle.remove()
    n = len(PROMPTS)
    # unsteered once, steered by (vector, 2) once, by (vector, 3) once, by other once
    assert seen == [3 * n + (n - 1)]
    with torch.no_grad():
        for p, b in zip(passes, packed, strict=True):
            a = run_alone(model, p)
            torch.testing.assert_close(a.logits, b.logits, atol=ATOL, rtol=1e-5)
            for k in a.cache:
                real = p.enc.real if p.positions is None else slice(None)
                torch.testing.assert_close(a.cache[k][real], b.cache[k][real], atol=ATOL, rtol=1e-5)
    assert not torch.allclose(packed[3].logits, packed[5].logits)  # the scales differ


def test_packed_passes_build_no_autograd_graph(frontier: LoadedModel) -> None:
    """Grad mode is per thread: the packed passes run without a graph wherever called."""
    tok = frontier.tokenizer
    with torch.enable_grad():
        (answer,) = run_packed(frontier.model, [Pass(encode(tok, PROMPTS, 64, "cpu"))])
    assert not answer.logits.requires_grad


def test_each_job_keeps_its_own_random_state(frontier: LoadedModel) -> None:
    enc = encode(frontier.tokenizer, PROMPTS, 32, "cpu")

    def job(seed: int) -> Any:
        def body(turns: Any) -> list[float]:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            drawn: list[float] = []
            for _ in range(3):
                drawn += [random.random(), float(np.random.rand()), float(torch.rand(1))]
                turns.passes([Pass(enc)])
            return drawn

        return body

    class Alone:
        def passes(self, passes: list[Pass]) -> list[Any]:
            return [run_alone(frontier.model, p) for p in passes]

    def alone(seed: int) -> list[float]:
        with torch.no_grad():
            return job(seed)(Alone())

    expected = [alone(1), alone(2), alone(3)]
    with torch.no_grad():
        got = run_together([job(1), job(2), job(3)], frontier.model, batch_tokens=4096)
    assert got == expected


def test_jobs_run_on_one_thread_and_the_shared_passes_on_all(frontier: LoadedModel) -> None:
    """The jobs' own code runs with torch on one CPU thread (each job thread would start its
    own OpenMP team); the shared passes, and the caller afterwards, have the worker's count."""
    enc = encode(frontier.tokenizer, PROMPTS, 32, "cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    in_passes: list[int] = []
    model = frontier.model
    handle = model.register_forward_pre_hook(
        lambda _m, _args: in_passes.append(torch.get_num_threads())
    )

    def body(turns: Any) -> list[int]:
        seen = [torch.get_num_threads()]
        turns.passes([Pass(enc)])
        return [*seen, torch.get_num_threads()]

    try:
        with torch.no_grad():
            got = run_together([body, body], model, batch_tokens=4096)
        after = torch.get_num_threads()
    finally:
        handle.remove()
        torch.set_num_threads(before)
    assert got == [[1, 1], [1, 1]]
    assert in_passes == [2]
    assert after == 2


def test_a_jobs_chunks_share_one_round(
    frontier: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method streams its independent chunks (:meth:`Context.stream`): batched, every
    chunk of every job goes into one round of packed passes (a steering job's steered passes,
    which need its vectors, into a second), as many chunks a round as ``batch_tokens``
    holds; alone, a chunk's pass runs only when its answer is asked for."""
    from analoglab.experiments import packed
    from analoglab.experiments.methods.common import Context

    rounds: list[int] = []
    real = packed.run_packed

    def counting(model: Any, passes: Any, *args: Any, **kwargs: Any) -> Any:
        rounds.append(len(passes))
        return real(model, passes, *args, **kwargs)

    monkeypatch.setattr(packed, "run_packed", counting)
    specs = shareable_specs()
    evaluation, stats, probe, steering = specs[0], specs[2], specs[5], specs[8]
    # 3 chunks of 3 (facts, 7 items), 2 of 3 (4 prompts), 3 of 7 (20 texts), 2 of 16 (4 pairs)
    batched = run_batch([evaluation, stats, probe, steering], frontier, batch_tokens=4096)
    # then the steering's unsteered pass and its steered ones (2 draws × 2 layers)
    assert rounds == [3 + 2 + 3 + 2, 1 + 4]
    for spec, b in zip([evaluation, stats, probe, steering], batched, strict=True):
        assert isinstance(b, ExperimentResult)
        assert_close(numbers(run(spec, frontier)), numbers(b), spec.method)
    # a bound of a few tokens: a window of one pass, a round per chunk
    rounds.clear()
    tight = run_batch([evaluation, probe], frontier, batch_tokens=1)
    assert rounds == [2, 2, 2]  # each job's 3 chunks, one at a time, in step
    for spec, b in zip([evaluation, probe], tight, strict=True):
        assert isinstance(b, ExperimentResult)
        assert_close(numbers(run(spec, frontier)), numbers(b), spec.method)

    # alone: lazily, one pass at a time
    built: list[int] = []
    enc = encode(frontier.tokenizer, PROMPTS, 32, "cpu")

    def passes() -> Any:
        for k in range(3):
            built.append(k)
            yield Pass(enc)

    ctx = Context(
        loaded=frontier, layout=packed_layout(frontier), batch_size=4, max_tokens=32, seed=0
    )
    stream = ctx.stream(passes())
    first, answer = next(stream)
    assert built == [0] and first.enc is enc
    torch.testing.assert_close(answer.logits, run_alone(frontier.model, Pass(enc)).logits)
    assert [p.enc is enc for p, _ in stream] == [True, True] and built == [0, 1, 2]


def packed_layout(loaded: LoadedModel) -> Any:
    from analoglab.interventions import layout_of

    return layout_of(loaded.model)
