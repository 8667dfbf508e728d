"""How a worker hands its result back through a text stream (a pod's log, a pipe).

The result (an ExperimentResult as JSON) is written between two marker lines, base64-encoded
so that nothing in it can be mistaken for a marker, with its sha256 on the end line::

    ===== analoglab result begin =====
    <base64 of the JSON, in lines of 76 characters>
    ===== analoglab result end sha256=<hex> =====

:func:`unframe` finds the last complete frame in a stream that may hold any other output
(library warnings, progress), checks the size against a cap *before* decoding and the digest
after, and raises :class:`FramingError` with the reason otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from analoglab.errors import AnalogLabError

BEGIN = "===== analoglab result begin ====="
END = re.compile(r"^===== analoglab result end sha256=([0-9a-f]{64}) =====$")


class FramingError(AnalogLabError):
    """No complete, intact result in the stream, or one larger than allowed."""


def frame(result: dict[str, Any]) -> str:
    """The framed text of ``result`` (ends with a newline)."""
    raw = json.dumps(result, separators=(",", ":"), sort_keys=True).encode()
    body = base64.encodebytes(raw).decode()
    digest = hashlib.sha256(raw).hexdigest()
    return f"{BEGIN}\n{body}===== analoglab result end sha256={digest} =====\n"


def unframe(text: str, max_bytes: int) -> dict[str, Any]:
    """The result framed last in ``text``; at most ``max_bytes`` of JSON."""
    lines = text.splitlines()
    end_at = None
    for i in range(len(lines) - 1, -1, -1):
        if END.match(lines[i].strip()):
            end_at = i
            break
    if end_at is None:
        raise FramingError("the worker wrote no complete result (it crashed or was cut short)")
    begin_at = None
    for i in range(end_at - 1, -1, -1):
        if lines[i].strip() == BEGIN:
            begin_at = i
            break
    if begin_at is None:
        raise FramingError("the worker's output has a result end without its beginning")
    body = "".join(line.strip() for line in lines[begin_at + 1 : end_at])
    if len(body) * 3 // 4 > max_bytes + 3:
        raise FramingError(
            f"the result is about {len(body) * 3 // 4} bytes, over the cap of {max_bytes}"
        )
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FramingError(f"the framed result is not valid base64: {exc}") from exc
    if len(raw) > max_bytes:
        raise FramingError(f"the result is {len(raw)} bytes, over the cap of {max_bytes}")
    match = END.match(lines[end_at].strip())
    assert match is not None
    if hashlib.sha256(raw).hexdigest() != match.group(1):
        raise FramingError("the framed result does not match its checksum (truncated or mixed)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FramingError(f"the framed result is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FramingError("the framed result is not a JSON object")
    return data
