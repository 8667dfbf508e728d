"""Result framing through a text stream (what a pod's log carries)."""

from __future__ import annotations

import pytest

from analoglab.lab.framing import BEGIN, FramingError, frame, unframe

RESULT = {"method": "evaluation", "metrics": {"accuracy": 0.75}, "text": "=====\n end"}


def test_round_trip_among_other_output() -> None:
    stream = "loading weights...\nwarning: x\n" + frame(RESULT) + "bye\n"
    assert unframe(stream, 10_000) == RESULT


def test_the_last_complete_frame_wins() -> None:
    older = {"n": 1}
    assert unframe(frame(older) + frame(RESULT), 10_000) == RESULT


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no result here\n", "no complete result"),
        (frame(RESULT).split("=====\n", 1)[1], "without its beginning"),
        (frame(RESULT)[: len(frame(RESULT)) // 2], "no complete result"),
    ],
)
def test_incomplete_streams_are_refused(text: str, reason: str) -> None:
    with pytest.raises(FramingError, match=reason):
        unframe(text, 10_000)


def test_a_tampered_body_fails_its_checksum() -> None:
    lines = frame(RESULT).splitlines()
    body = frame({"method": "evaluation", "metrics": {"accuracy": 0.25}, "text": "=====\n end"})
    lines[1:-1] = body.splitlines()[1:-1]
    with pytest.raises(FramingError, match="checksum"):
        unframe("\n".join(lines), 10_000)


def test_the_size_cap_is_checked_before_decoding() -> None:
    big = {"blob": "x" * 5000}
    with pytest.raises(FramingError, match="over the cap of 1000"):
        unframe(frame(big), 1000)
    assert unframe(frame(big), 6000) == big


def test_not_base64_is_refused() -> None:
    text = f"{BEGIN}\n!!!!\n===== analoglab result end sha256={'0' * 64} =====\n"
    with pytest.raises(FramingError, match="base64"):
        unframe(text, 1000)
