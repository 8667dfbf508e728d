"""What the queue's API accepts at its edge: bounded ids, printable names, finite numbers, no
bool-as-int, and a request body size limit.

Pure validators (used as pydantic ``AfterValidator``s and FastAPI parameter types by
:mod:`.service`) and one ASGI middleware, :class:`BodyLimit`, that answers 413 before a route
reads an oversized body. Anything refused here is a 4xx with a reason, never a 500.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from pydantic import AfterValidator

#: The largest id the database's 64-bit integers hold.
MAX_ID = 2**63 - 1
#: Default cap of a request body (``QueueSettings.max_request_bytes``).
MAX_REQUEST_BYTES = 1 << 20

_BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: In a name: any C0/C1 control (NUL, ESC of ANSI sequences, tabs, newlines) or bidi control.
_NOT_IN_NAMES = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
#: In free text (comments, reasons): the same, but tab and newlines are fine.
_NOT_IN_TEXT = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}]")


def _where(match: re.Match[str]) -> str:
    return f"U+{ord(match.group()):04X} at position {match.start()}"


def printable_name(value: str) -> str:
    """``value`` if it holds no control character (NUL, ANSI escapes, newlines) and no bidi
    control (U+202A–202E, U+2066–2069, U+200E/F); else ValueError."""
    bad = _NOT_IN_NAMES.search(value)
    if bad is not None:
        raise ValueError(f"names are printable characters only: {_where(bad)} is not")
    return value


def printable_text(value: str) -> str:
    """As :func:`printable_name`, allowing tabs and line breaks (comments, reasons)."""
    bad = _NOT_IN_TEXT.search(value)
    if bad is not None:
        raise ValueError(f"no control or bidi characters in text: {_where(bad)} is one")
    return value


def finite(value: Any) -> Any:
    """``value`` (a JSON tree) if every number in it is finite; else ValueError (NaN and
    Infinity are not JSON, and would be stored as invalid JSON)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


def bools_read_as_numbers(given: Any, parsed: Any, path: str = "") -> list[str]:
    """The paths where ``given`` holds a JSON boolean that parsing turned into a number (a
    ``batch_size: true`` read as 1)."""
    if isinstance(given, bool):
        return [path or "value"] if not isinstance(parsed, bool) and isinstance(
            parsed, int | float
        ) else []
    out: list[str] = []
    if isinstance(given, dict) and isinstance(parsed, dict):
        for key, sub in given.items():
            if key in parsed:
                out += bools_read_as_numbers(sub, parsed[key], f"{path}.{key}" if path else key)
    elif isinstance(given, list) and isinstance(parsed, list):
        for i, (a, b) in enumerate(zip(given, parsed, strict=False)):
            out += bools_read_as_numbers(a, b, f"{path}[{i}]")
    return out


Name = Annotated[str, AfterValidator(printable_name)]
Text = Annotated[str, AfterValidator(printable_text)]
FiniteJSON = Annotated[dict[str, Any], AfterValidator(finite)]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (declared in Content-Length or
    counted as it streams) is answered ``413 {"detail": reason}`` and never reaches a route."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"the request body is over the queue's limit of {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        # Read the body here (at most max_bytes + one chunk), then hand it on as one message.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
