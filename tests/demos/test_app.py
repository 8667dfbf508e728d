"""The demo launched for real (tiny analogs), driven with ``gradio_client`` as any visitor's
browser or script would: every endpoint, bad input answered with a clear message, a
published steering result appearing once it is logged, and a released transfer check on the
board."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from analoglab.config import Settings
from analoglab.demos import PUBLIC, publish
from analoglab.demos.limits import Limits

pytestmark = pytest.mark.slow

ANALOG = "tiny-analog-s"
SAMPLING = (12, 0.8, 0.95, 40, 3)  # new tokens, temperature, top-p, top-k, seed


def refused(client: Any, *args: Any, api_name: str) -> str:
    """The message a visitor sees for a request the demo refuses."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    message = str(caught.value)
    assert "Traceback" not in message and "/tmp" not in message and ".py" not in message
    return message


def test_the_api_lists_every_endpoint(client: Any) -> None:
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in (
        "/card",
        "/talk",
        "/look",
        "/vectors",
        "/steer",
        "/fidelity",
        "/board",
        "/profiles",
    ):
        assert name in named


def test_the_card_shows_where_an_analog_comes_from(client: Any) -> None:
    card = client.predict(ANALOG, api_name="/card")
    assert ANALOG in card and "tiny-frontier" in card and "tiny-lab" in card
    assert "of the frontier" in card and "next token" in card  # size ratio and fidelity


def test_talk_streams_a_completion_in_several_chunks(client: Any) -> None:
    job = client.submit(ANALOG, "the cake was", *SAMPLING, api_name="/talk")
    chunks = list(job)
    assert len(chunks) > 1
    assert all(isinstance(c, str) for c in chunks)
    assert chunks[-1].startswith(chunks[0])  # each chunk is the completion so far
    # the same seed gives the same completion
    assert client.predict(ANALOG, "the cake was", *SAMPLING, api_name="/talk") == chunks[-1]


def test_look_inside_draws_the_logit_lens_and_the_norms(client: Any) -> None:
    lens, norms = client.predict(ANALOG, "the cake was lovely and", api_name="/look")
    for plot in (lens, norms):
        assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")


def test_steer_puts_default_and_steered_side_by_side(client: Any) -> None:
    choices, text = client.predict(ANALOG, api_name="/vectors")
    keys = [key for _label, key in choices["choices"]]
    assert "demo:sentiment" in keys and "not checked on the frontier" in text
    default, steered, moved = client.predict(
        ANALOG, "the cake was", "demo:sentiment", 12.0, 12, 5, api_name="/steer"
    )
    assert isinstance(default, str) and isinstance(steered, str)
    rows = moved["value"]["data"]
    assert rows and all(len(row) == 4 for row in rows)
    # strength 0 changes nothing: the same prompt and seed give the default completion
    same, unsteered, _ = client.predict(
        ANALOG, "the cake was", "demo:sentiment", 0.0, 12, 5, api_name="/steer"
    )
    assert same == default == unsteered


def test_fidelity_puts_the_cards_side_by_side(client: Any) -> None:
    table = client.predict(api_name="/fidelity")["value"]
    assert [row[0] for row in table["data"]] == ["tiny-analog-m", "tiny-analog-s"]
    assert "KL (nats/token)" in table["headers"]
    # the cards' representation similarity and per-task agreement (the fidelity stage's)
    cka = table["headers"].index("CKA (inside alike)")
    assert all(0 < float(row[cka]) <= 1 for row in table["data"])
    sentiment = table["headers"].index("sentiment: analog / frontier (same answer)")
    assert all(row[sentiment].endswith("%)") for row in table["data"])


def test_an_empty_board_says_why(client: Any) -> None:
    table, note, *_ = client.predict("all", "all", "all", "all", api_name="/board")
    assert table["value"]["data"] == [] or note
    if not table["value"]["data"]:
        assert "No transfer check has been released yet" in note


# -- bad input ------------------------------------------------------------------------------


def test_an_over_long_prompt_is_refused(client: Any) -> None:
    long = "the cake was " * 100
    message = refused(client, ANALOG, long, *SAMPLING, api_name="/talk")
    assert f"at most {Limits().max_prompt_chars}" in message
    assert "at most" in refused(client, ANALOG, long, api_name="/look")


def test_an_unknown_analog_is_refused(client: Any) -> None:
    message = refused(client, "gpt-17", "hello", *SAMPLING, api_name="/talk")
    assert "gpt-17" in message
    assert "gpt-17" in refused(client, "gpt-17", api_name="/vectors")


def test_an_out_of_range_strength_is_refused(client: Any) -> None:
    message = refused(
        client, ANALOG, "the cake was", "demo:sentiment", 500.0, 12, 5, api_name="/steer"
    )
    assert "500" in message and "16" in message


def test_an_unknown_vector_is_refused(client: Any) -> None:
    message = refused(client, ANALOG, "the cake was", "run:nope", 2.0, 12, 5, api_name="/steer")
    assert "steering vector" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (0, 10_000),  # new tokens far beyond the limit
        (1, 50.0),  # temperature
        (2, 0.0),  # top-p
        (3, -5),  # top-k
        (4, -1),  # seed
    ],
)
def test_a_crafted_request_past_the_widgets_is_refused(
    demo_url: str, field: int, value: Any
) -> None:
    """Straight to the HTTP API, no client-side checks: the server refuses it with a sentence."""
    data = [ANALOG, "the cake was", *SAMPLING]
    data[2 + field] = value
    message = _raw_call(demo_url, "talk", data)
    assert message is not None, "a request past the bounds was served"
    assert "Traceback" not in message and ".py" not in message


def test_the_handlers_check_their_inputs_themselves(demo_url: str) -> None:
    """Values Gradio's widgets would let through (not a number, not finite) are refused by the
    demo's own checks."""
    data = [ANALOG, "the cake was", 12, 0.8, 0.95, 40, 3]
    data[3] = math.nan
    message = _raw_call(demo_url, "talk", data)
    assert message is not None and "Traceback" not in message


def _raw_call(url: str, api: str, data: list[Any]) -> str | None:
    """POST to Gradio's HTTP API and read the event stream; the error message, if any."""
    with httpx.Client(base_url=url, timeout=60) as http:
        start = http.post(f"gradio_api/call/{api}", content=json.dumps({"data": data}))
        if start.status_code != 200:
            return start.text
        event = start.json()["event_id"]
        body = http.get(f"gradio_api/call/{api}/{event}").text
    if "event: error" not in body:
        return None
    payload = body.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
    return str(json.loads(payload)) if payload not in ("null", "") else "error"


# -- published results -----------------------------------------------------------------------


def test_a_published_steering_result_appears_once_it_is_logged(
    client: Any, demo_home: Settings
) -> None:
    from analoglab.experiments.runner import run
    from analoglab.experiments.spec import parse_spec
    from analoglab.models.loading import load_analog
    from analoglab.tracking import TrackingStore, log_result

    spec = parse_spec(
        {
            "method": "steering",
            "description": "sentiment from contrast pairs",
            "contrast": {"kind": "task_set", "name": "sentiment_pairs", "n": 8},
            "evaluate": {"kind": "task_set", "name": "neutral", "n": 4},
            "target": " good",
            "foil": " bad",
            "layers": {"depths": [1.0]},
            "scales": [0, 2],
        }
    )
    result = run(spec, load_analog(ANALOG, device="cpu", settings=demo_home))
    run_id = log_result(spec, result, model=ANALOG, settings=demo_home)

    before, _ = client.predict(ANALOG, api_name="/vectors")
    assert not any(key == f"run:{run_id}" for _l, key in before["choices"])  # not public yet

    publish(run_id, demo_home)
    tags = TrackingStore.open(demo_home).client.get_run(run_id).data.tags
    assert tags[PUBLIC] == "1"
    after, text = client.predict(ANALOG, api_name="/vectors")
    keys = [key for _l, key in after["choices"]]
    assert keys[0] == f"run:{run_id}" and "demo:sentiment" in keys
    assert run_id[:8] in text and "Not checked on the frontier yet" in text
    _default, steered, _ = client.predict(
        ANALOG, "the cake was", f"run:{run_id}", 8.0, 12, 5, api_name="/steer"
    )
    assert isinstance(steered, str)
    # only for its own analog
    other, _ = client.predict("tiny-analog-m", api_name="/vectors")
    assert all(key != f"run:{run_id}" for _l, key in other["choices"])


def test_a_released_transfer_check_is_on_the_board(client: Any, demo_home: Settings) -> None:
    from analoglab.tracking import TrackingStore, tags

    store = TrackingStore.open(demo_home)
    exp = store.experiment_id()
    common = {tags.KIND: tags.KIND_TRANSFER, tags.ANALOG: ANALOG, tags.FRONTIER: "tiny-frontier"}
    released = store.client.create_run(
        exp,
        tags={
            **common,
            tags.METHOD: "probe",
            tags.SPEC_HASH: "a" * 64,
            tags.VERDICT: "transfers",
            tags.JOB_ID: "job-1",
        },
    ).info.run_id
    for name, value in (
        ("transfer.score", 0.83),
        ("transfer.score.low", 0.7),
        ("transfer.score.high", 0.9),
        ("transfer.profile_correlation", 0.95),
    ):
        store.client.log_metric(released, name, value)
    # not released through the queue (no job): not shown
    store.client.create_run(
        exp,
        tags={
            **common,
            tags.METHOD: "ablation",
            tags.SPEC_HASH: "b" * 64,
            tags.VERDICT: "transfers",
        },
    )
    table, note, _lab, _frontier, method, _verdict, scores, picker = client.predict(
        "all", "all", "all", "all", api_name="/board"
    )
    rows = table["value"]["data"]
    assert len(rows) == 1
    assert rows[0][:5] == ["tiny-lab", "tiny-frontier", ANALOG, "probe", "transfers"]
    assert rows[0][5] == "0.83 [0.70, 0.90]" and "profile correlation 0.95" in rows[0][6]
    assert "1 of 1" in note
    assert [c[1] for c in method["choices"]] == ["all", "probe"]
    # the chart draws the shown checks; the profile picker offers them, the first picked
    assert scores["type"] == "matplotlib" and scores["plot"].startswith("data:image/")
    assert [c[1] for c in picker["choices"]] == [released] and picker["value"] == released
    filtered, note, *_, picker = client.predict("all", "all", "ablation", "all", api_name="/board")
    assert filtered["value"]["data"] == [] and "0 of 1" in note
    assert picker["choices"] == [] and picker["value"] is None


def test_a_released_checks_layer_profiles_share_one_depth_axis(
    client: Any, demo_home: Settings
) -> None:
    """``/profiles`` draws the analog's and the frontier's profiles of a check the board
    shows (from the check's child runs); a run the board does not show is refused."""
    from analoglab.experiments.spec import parse_spec
    from analoglab.experiments.transfer import compare
    from analoglab.tracking import TransferCheckRun

    from ..tracking.conftest import PROBE, build_result

    spec = parse_spec(PROBE)
    check = TransferCheckRun.open(spec, analog=ANALOG, frontier="tiny-frontier", settings=demo_home)
    analog = build_result(spec, ANALOG, values=[0.5, 0.9, 0.7])
    frontier = build_result(spec, "tiny-frontier", values=[0.5, 0.6, 0.95, 0.9, 0.8], weights="f")
    check.log_analog(analog)
    check.set_job("job-7")
    check.log_frontier(frontier)
    check.log_report(compare(analog, frontier))

    *_, picker = client.predict("all", "all", "all", "all", api_name="/board")
    assert check.run_id in [c[1] for c in picker["choices"]]
    plot, sentence = client.predict(check.run_id, api_name="/profiles")
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")
    assert "first block (0) to the last (1)" in sentence

    from analoglab.demos.published import Published

    drawn = Published(demo_home, cache_seconds=0.0).profiles(check.run_id)
    assert drawn is not None and set(drawn.profiles) == {"accuracy"}
    analog_curve, frontier_curve = drawn.profiles["accuracy"]
    assert [p[0] for p in analog_curve] == [0.0, 0.5, 1.0]  # 3 blocks on the 0–1 axis
    assert [p[0] for p in frontier_curve] == [0.0, 0.25, 0.5, 0.75, 1.0]  # 5 blocks on it
    assert [p[1] for p in frontier_curve] == [0.5, 0.6, 0.95, 0.9, 0.8]

    message = refused(client, "f" * 32, api_name="/profiles")
    assert "no released transfer check" in message


def test_a_link_restores_its_view(client: Any) -> None:
    """``/restore`` reads the page's query string: tab, analog, prompt, vector, strength and
    seed; values out of bounds fall back to the defaults, never to an error."""
    link = "?tab=steer&analog=tiny-analog-m&prompt=the+hotel+was&vector=demo%3Asentiment"
    analog, prompt, vectors, _text, strength, seed = client.predict(
        link + "&strength=-3&seed=9", api_name="/restore"
    )
    assert (analog, prompt, vectors["value"], strength, seed) == (
        "tiny-analog-m",
        "the hotel was",
        "demo:sentiment",
        -3.0,
        9,
    )
    analog, prompt, _v, _t, strength, seed = client.predict(
        "?analog=gpt-17&prompt=" + "x" * 5000 + "&strength=999&seed=-4", api_name="/restore"
    )
    assert analog in ("tiny-analog-m", "tiny-analog-s") and prompt == "the cake was"
    assert (strength, seed) == (4.0, 0)
