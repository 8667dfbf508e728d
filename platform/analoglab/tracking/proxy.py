"""What the MLflow gate forwards: pure functions over paths and headers, no I/O.

The gate (:mod:`.gate`) serves MLflow under a URL prefix (``/services/mlflow`` on the hub)
while MLflow itself runs at the root of a private loopback port. These functions decide

- :func:`upstream_path`: the path MLflow sees (the prefix stripped), or a refusal for paths
  with dot segments (``/services/mlflow/../../hub/api``) or outside the prefix;
- :func:`request_headers`: what goes upstream — hop-by-hop headers, the caller's
  ``Authorization`` and cookies, ``Origin`` and any client-sent identity or ``X-Forwarded-*``
  headers dropped; the signed-in user's name (``X-Analoglab-User``) and ``X-Forwarded-*``
  added by the gate itself;
- :func:`response_headers`: what comes back — hop-by-hop headers, cookies and the upstream's
  ``Server``/``Date`` dropped, redirects into MLflow rewritten under the prefix;
- :func:`is_same_origin`: whether a browser's ``Origin``/``Referer`` names the host it sent
  the request to (cookie-signed-in writes must, against cross-site request forgery).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlsplit

#: RFC 9110 §7.6.1 connection-specific headers, never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: The header carrying the signed-in user's hub name to MLflow.
USER_HEADER = "x-analoglab-user"
#: Dropped from requests: credentials MLflow need not see, and what only the gate may set.
_REQUEST_DROP = frozenset(
    {
        "host",
        "authorization",
        "cookie",
        "origin",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        USER_HEADER,
    }
)
_RESPONSE_DROP = frozenset({"set-cookie", "server", "date"})

Headers = list[tuple[str, str]]


class PathRefused(ValueError):
    """A request path the gate does not forward (the message says why)."""


def upstream_path(raw_path: str, prefix: str) -> str:
    """The path under ``prefix`` as MLflow sees it (``/services/mlflow/x`` → ``/x``), still
    percent-encoded as it came; :class:`PathRefused` for a path outside the prefix or with a
    ``.``/``..`` segment (in any encoding)."""
    if raw_path != prefix and not raw_path.startswith(prefix + "/"):
        raise PathRefused(f"not under {prefix}/")
    rest = raw_path[len(prefix) :] or "/"
    decoded = unquote(rest)
    if any(seg in (".", "..") for seg in decoded.replace("\\", "/").split("/")):
        raise PathRefused("dot segments are not allowed in paths")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise PathRefused("control characters are not allowed in paths")
    return rest


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }


def request_headers(
    headers: Sequence[tuple[str, str]],
    *,
    user: str,
    client: str | None,
    proto: str,
    host: str,
    prefix: str,
) -> Headers:
    """The headers forwarded to MLflow for a request from ``user`` (see the module docstring).

    ``client``: the caller's address; ``proto``/``host``: the scheme and host the caller used
    (``X-Forwarded-*`` from the hub's proxy, else the request's own)."""
    named = _connection_tokens(headers)
    chain = [v.strip() for n, v in headers if n.lower() == "x-forwarded-for" and v.strip()]
    kept = [
        (name, value)
        for name, value in headers
        if (low := name.lower()) not in HOP_BY_HOP and low not in _REQUEST_DROP and low not in named
    ]
    if client:
        chain.append(client)
    if chain:
        kept.append(("X-Forwarded-For", ", ".join(chain)))
    kept += [
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Prefix", prefix),
        ("X-Analoglab-User", user),
    ]
    return kept


def response_headers(headers: Sequence[tuple[str, str]], *, upstream: str, prefix: str) -> Headers:
    """The upstream's response headers as the gate answers them (see the module docstring)."""
    named = _connection_tokens(headers)
    kept: Headers = []
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP or low in _RESPONSE_DROP or low in named:
            continue
        if low == "location":
            value = rewrite_location(value, upstream=upstream, prefix=prefix)
        kept.append((name, value))
    return kept


def rewrite_location(location: str, *, upstream: str, prefix: str) -> str:
    """A redirect into MLflow (absolute to the upstream, or from its root) under the prefix;
    others (relative, elsewhere) as they are."""
    base = upstream.rstrip("/")
    if location == base or location.startswith(base + "/"):
        return prefix + (location[len(base) :] or "/")
    if location.startswith("/") and not location.startswith("//"):
        return prefix + location
    return location


def is_same_origin(origin: str | None, referer: str | None, host: str) -> bool:
    """Whether the browser's ``Origin`` (else ``Referer``) names ``host`` (``name[:port]``)."""
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def safe_next(next_url: str | None, prefix: str) -> str:
    """Where to send a browser after signing in: ``next_url`` when it is a path under
    ``prefix`` on this host, else the prefix's root (no open redirects)."""
    if (
        next_url
        and next_url.startswith(prefix + "/")
        and not next_url.startswith("//")
        and "\\" not in next_url
        and not any(ord(c) < 0x20 for c in next_url)
    ):
        try:
            upstream_path(next_url.split("?", 1)[0], prefix)
        except PathRefused:
            return prefix + "/"
        return next_url
    return prefix + "/"
