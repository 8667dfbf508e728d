"""Vetting: each rule with a failing case; every reason listed; quota and rate limit."""

from __future__ import annotations

import datetime as dt

import pytest

from analoglab.experiments.spec import parse_spec
from analoglab.models.catalog import FrontierModel, FrontierPolicy
from analoglab.queue.errors import Invalid
from analoglab.queue.jobs import JobQueue
from analoglab.queue.vetting import (
    Usage,
    VettingLimits,
    estimate_tokens,
    estimated_cost,
    vet,
)

from .conftest import ARCH, Clock, probe_spec

FRONTIER = FrontierModel(
    id="f", lab="l", architecture=ARCH, parameters=1, trained=dt.date(2026, 1, 1)
)
POLICY = FrontierPolicy(max_prompts=10, max_tokens_per_prompt=200, daily_quota_per_user=3)
NO_USAGE = Usage()
LIMITS = VettingLimits(max_abs_scale=8, max_samples=4, max_cost=1000, rate_per_minute=2)


def codes(
    spec: dict[str, object], policy: FrontierPolicy = POLICY, usage: Usage = NO_USAGE
) -> list[str]:
    return [f.code for f in vet(parse_spec(spec), FRONTIER, policy, LIMITS, usage)]


def steering(scales: list[float], n: int = 2) -> dict[str, object]:
    return {
        "method": "steering",
        "contrast": {"kind": "pairs", "pairs": [{"positive": "good", "negative": "bad"}] * n},
        "evaluate": {"kind": "prompts", "prompts": ["The film was"] * n},
        "target": " good",
        "foil": " bad",
        "layers": {"depths": [0.5]},
        "scales": scales,
    }


def test_a_good_spec_passes() -> None:
    assert codes(probe_spec(n=8)) == []


@pytest.mark.parametrize(
    ("spec", "policy", "usage", "code"),
    [
        (
            probe_spec(),
            POLICY.model_copy(update={"allowed_methods": ["steering"]}),
            Usage(),
            "method_not_allowed",
        ),
        (probe_spec(n=11), POLICY, Usage(), "too_many_prompts"),
        (
            {"method": "evaluation", "data": {"kind": "prompts", "prompts": ["x" * 700]}},
            POLICY,
            Usage(),
            "prompt_too_long",
        ),
        (probe_spec(max_tokens_per_prompt=300), POLICY, Usage(), "token_budget"),
        (steering([-10.0, 0.0, 2.0]), POLICY, Usage(), "scale_out_of_bounds"),
        (
            {
                "method": "evaluation",
                "data": {"kind": "prompts", "prompts": ["hi"]},
                "samples": {"n": 2},
            },
            POLICY,
            Usage(),
            "samples_not_allowed",
        ),
        (
            {
                "method": "evaluation",
                "data": {"kind": "prompts", "prompts": ["hi"]},
                "samples": {"n": 8},
            },
            POLICY.model_copy(update={"allow_samples": True}),
            Usage(),
            "too_many_samples",
        ),
        (
            steering([float(s) for s in range(-5, 6)], n=5)
            | {"layers": {"depths": [0.1 * i for i in range(11)]}},
            POLICY,
            Usage(),
            "cost_over_cap",
        ),
        (
            {"method": "probe", "data": {"kind": "task_set", "name": "sentiment", "n": 8}},
            POLICY,
            Usage(),
            "not_self_contained",
        ),
        (probe_spec(), POLICY, Usage(today_on_frontier=3), "daily_quota"),
        (probe_spec(), POLICY, Usage(last_minute=2), "rate_limited"),
    ],
)
def test_each_rule_fails_its_case(
    spec: dict[str, object], policy: FrontierPolicy, usage: Usage, code: str
) -> None:
    assert code in codes(spec, policy, usage)


def test_every_reason_is_listed() -> None:
    spec = {
        "method": "evaluation",
        "data": {"kind": "prompts", "prompts": ["y" * 700] * 12},
        "samples": {"n": 9, "max_new_tokens": 8},
        "max_tokens_per_prompt": 512,
    }
    policy = POLICY.model_copy(update={"allowed_methods": ["probe"]})
    found = codes(spec, policy, Usage(today_on_frontier=5, last_minute=5))
    assert found == [
        "method_not_allowed",
        "too_many_prompts",
        "prompt_too_long",
        "token_budget",
        "samples_not_allowed",
        "too_many_samples",
        "daily_quota",
        "rate_limited",
    ]


def test_estimates_are_as_documented() -> None:
    assert estimate_tokens("abcdefg") == 3
    spec = parse_spec(steering([1.0, 2.0, 3.0], n=2))
    assert estimated_cost(spec, FRONTIER) == (2 + 2) * 1 * 3
    every_layer = parse_spec({"method": "probe", "data": probe_spec()["data"]})
    assert estimated_cost(every_layer, FRONTIER) == 8 * FRONTIER.architecture.layers


def test_a_failed_submission_lists_every_reason(queue: JobQueue) -> None:
    bad = probe_spec(n=70, max_tokens_per_prompt=1000)
    with pytest.raises(Invalid) as err:
        queue.submit("alice", "frontier-a", bad)
    assert [f["code"] for f in err.value.detail["findings"]] == ["too_many_prompts", "token_budget"]
    with pytest.raises(Invalid) as err:
        queue.submit("alice", "frontier-a", {"method": "probe", "layers": 3})
    assert err.value.detail["findings"][0]["code"] == "invalid_spec"


def test_task_sets_are_inlined_at_submission(queue: JobQueue) -> None:
    spec = {"method": "probe", "data": {"kind": "task_set", "name": "sentiment", "n": 8}}
    job = queue.submit("alice", "frontier-a", spec)
    assert job.spec["data"]["kind"] == "choices" and len(job.spec["data"]["items"]) == 8


def test_quota_and_rate_limit_are_counted_in_the_database(queue: JobQueue, clock: Clock) -> None:
    queue.set_policy("frontier-a", FrontierPolicy(daily_quota_per_user=3, max_prompts=64), "admin")
    for _ in range(3):
        queue.submit("alice", "frontier-a", probe_spec())
        clock.advance(30)
    with pytest.raises(Invalid) as err:
        queue.submit("alice", "frontier-a", probe_spec())
    assert [f["code"] for f in err.value.detail["findings"]] == ["daily_quota"]
    queue.submit("bob", "frontier-a", probe_spec())  # others are not limited
    clock.advance(24 * 3600)
    queue.submit("alice", "frontier-a", probe_spec())  # a new day

    queue.set_policy("frontier-a", FrontierPolicy(daily_quota_per_user=100, max_prompts=64), "a")
    clock.advance(120)
    for _ in range(queue.settings.limits.rate_per_minute):
        queue.submit("carol", "frontier-a", probe_spec())
    with pytest.raises(Invalid) as err:
        queue.submit("carol", "frontier-a", probe_spec())
    assert [f["code"] for f in err.value.detail["findings"]] == ["rate_limited"]
    clock.advance(61)
    queue.submit("carol", "frontier-a", probe_spec())
