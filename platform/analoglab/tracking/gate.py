"""The MLflow gate: MLflow's UI and REST API behind the hub's sign-in.

``mlflow server`` has no authentication of its own, so on the platform it listens only on a
private loopback port and every request reaches it through this gate, an ASGI app that runs
as the JupyterHub service ``mlflow`` (served by the hub's proxy at ``/services/mlflow/``):

- **API calls** carry a hub token: ``Authorization: token|Bearer <token>`` — a notebook's
  ``JUPYTERHUB_API_TOKEN``, which MLflow's client sends when ``MLFLOW_TRACKING_TOKEN`` holds it.
  The hub says whose it is (``HubAuth.user_for_token``, answers cached ``cache_seconds``);
  an unknown token is a 401, a token without the service's access scope
  (``access:services!service=mlflow``, or ``access:services``) a 403.
- **Browsers** sign in with the hub's OAuth: a page request without a session is redirected to
  the hub's ``/hub/api/oauth2/authorize`` (with a random ``state`` and a PKCE challenge kept in
  a signed, short-lived cookie); the callback (``<prefix>/oauth_callback``) checks the state,
  trades the code for a token and keeps it server-side; the browser gets only a signed,
  HttpOnly, SameSite=Lax cookie naming its session (Secure when the hub is reached over
  HTTPS). Each request re-checks the session's token with the hub (cached), so signing out of
  the hub — which revokes the token — signs out here too; ``<prefix>/logout`` ends the session
  and signs out of the hub. A cookie-signed-in write (POST, PUT, PATCH, DELETE) must come from
  the hub's own origin (``Origin``/``Referer``), against cross-site request forgery.
- **Forwarding** (:mod:`.proxy`): every method, bodies streamed both ways (artifacts can be
  large), the prefix stripped (MLflow runs at its root: the UI uses relative URLs), paths
  with dot segments refused, hop-by-hop headers, the caller's credentials and ``Origin``
  dropped, ``X-Forwarded-*`` and ``X-Analoglab-User: <hub name>`` (``service:<name>`` for a
  hub service) added. MLflow not answering (still starting: 10–15 s) is a 503.

Who may do what: everyone the hub lets reach the service may read and write (researchers log
runs); finer MLflow permissions (per experiment) are future work. ``<prefix>/health`` is
MLflow's health check, open to anyone (it says only "OK").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jupyterhub.httpclient import JupyterHubHTTPClient  # type: ignore[import-untyped]
from jupyterhub.services.auth import HubOAuth, check_scopes  # type: ignore[import-untyped]
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.types import Receive, Scope, Send
from tornado.web import HTTPError

from analoglab.tracking.errors import TrackingError
from analoglab.tracking.proxy import (
    PathRefused,
    is_same_origin,
    request_headers,
    response_headers,
    safe_next,
    upstream_path,
)

log = logging.getLogger(__name__)

SESSION_COOKIE = "analoglab-mlflow-session"
STATE_COOKIE = "analoglab-mlflow-oauth-state"
DEFAULT_PREFIX = "/services/mlflow"
#: Paths (under the prefix) that only programs call: without credentials they get a 401, not
#: a redirect to the sign-in page.
API_PATHS = ("/api/", "/ajax-api/", "/graphql", "/get-artifact", "/model-versions/")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: What JupyterHub issues as tokens; anything else is refused without asking it.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
MAX_HEADER_BYTES = 32 * 1024
STATE_SECONDS = 600


@dataclass(frozen=True)
class GateConfig:
    """How the gate reaches MLflow and the hub. ``None`` fields come from the environment a
    JupyterHub managed service gets (``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``,
    ``JUPYTERHUB_CLIENT_ID``, ``JUPYTERHUB_OAUTH_CALLBACK_URL``,
    ``JUPYTERHUB_OAUTH_ACCESS_SCOPES`` / ``JUPYTERHUB_SERVICE_NAME``), as ``HubOAuth`` reads
    them."""

    upstream: str
    prefix: str = DEFAULT_PREFIX
    api_url: str | None = None
    api_token: str | None = None
    client_id: str | None = None
    callback_url: str | None = None
    authorize_url: str | None = None
    access_scopes: frozenset[str] | None = None
    cache_seconds: int = 60
    session_seconds: int = 12 * 3600
    hub_timeout: float = 10.0
    upstream_timeout: float = 300.0
    max_sessions: int = 10_000


@dataclass(frozen=True)
class Identity:
    """Who a request comes from, as the hub names them."""

    name: str
    kind: str = "user"

    @property
    def header(self) -> str:
        return self.name if self.kind == "user" else f"{self.kind}:{self.name}"


class Refused(Exception):
    """A request the gate answers itself, with ``status`` and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Session:
    token: str
    identity: Identity
    created: float = field(default_factory=time.monotonic)


class _Sessions:
    """Signed-in browsers: session id → the hub token their sign-in got. Kept in memory only
    (a restarted gate sends browsers through the hub's OAuth again, without a prompt)."""

    def __init__(self, max_age: int, max_sessions: int) -> None:
        self.max_age = max_age
        self.max_sessions = max_sessions
        self._by_id: OrderedDict[str, _Session] = OrderedDict()

    def create(self, token: str, identity: Identity) -> str:
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = _Session(token, identity)
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)
        return sid

    def get(self, sid: str) -> _Session | None:
        session = self._by_id.get(sid)
        if session is not None and time.monotonic() - session.created > self.max_age:
            self.drop(sid)
            return None
        return session

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)


def _bearer(value: str | None) -> str | None:
    """The token of ``Authorization: token|Bearer <token>`` (None without one)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return None
    return token.strip()


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


class MlflowGate:
    """The ASGI app (see the module docstring); build it with :func:`create_gate`."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.prefix = config.prefix.rstrip("/")
        if not self.prefix.startswith("/"):
            raise TrackingError(f"the gate's prefix must start with '/': {config.prefix!r}")
        self.upstream = config.upstream.rstrip("/")
        options: dict[str, Any] = {"cache_max_age": max(config.cache_seconds, 0)}
        for name, value in (
            ("api_url", config.api_url),
            ("api_token", config.api_token),
            ("oauth_client_id", config.client_id),
            ("oauth_redirect_uri", config.callback_url),
            ("oauth_authorization_url", config.authorize_url),
        ):
            if value:
                options[name] = value
        if not config.callback_url and not os.environ.get("JUPYTERHUB_OAUTH_CALLBACK_URL"):
            options["oauth_redirect_uri"] = self.prefix + "/oauth_callback"
        if config.access_scopes is not None:
            options["access_scopes"] = set(config.access_scopes)
        try:
            self.hub: Any = HubOAuth(**options)
        except Exception as exc:  # traitlets' validation of an empty token or client id
            raise TrackingError(
                "the MLflow gate needs the hub's service environment (JUPYTERHUB_API_TOKEN, "
                f"JUPYTERHUB_CLIENT_ID): run it as a JupyterHub service ({exc})"
            ) from None
        if not self.hub.api_token or not self.hub.oauth_client_id:
            raise TrackingError(
                "the MLflow gate needs the hub's service environment (JUPYTERHUB_API_TOKEN, "
                "JUPYTERHUB_CLIENT_ID): run it as a JupyterHub service"
            )
        if not self.hub.access_scopes:
            raise TrackingError(
                "the MLflow gate needs the scope that grants access to it: run it as a "
                "JupyterHub service (JUPYTERHUB_SERVICE_NAME) or configure access_scopes"
            )
        self.callback_path = urlsplit(self.hub.oauth_redirect_uri).path
        if not self.callback_path.startswith(self.prefix + "/"):
            raise TrackingError(
                f"the OAuth callback {self.hub.oauth_redirect_uri} is not under {self.prefix}/"
            )
        self.use_cache = config.cache_seconds > 0  # HubAuth's max age 0 means "forever"
        self.sessions = _Sessions(config.session_seconds, config.max_sessions)
        self.signer = URLSafeTimedSerializer(secrets.token_bytes(32), salt="analoglab-mlflow")
        self._client: httpx.AsyncClient | None = None

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # MLflow's UI uses no websockets
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except Refused as refused:
            response = self._refusal(request, refused)
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await JupyterHubHTTPClient.loop_instance().close()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(self.config.upstream_timeout, connect=5.0)
            self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
            for name in ("accept", "accept-encoding", "user-agent"):  # the caller's, or none
                self._client.headers.pop(name, None)
        return self._client

    # -- routing ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        if sum(len(k) + len(v) for k, v in request.scope["headers"]) > MAX_HEADER_BYTES:
            raise Refused(431, "request headers too large")
        if path == self.prefix:
            return RedirectResponse(self.prefix + "/", status_code=302)
        try:
            rest = upstream_path(path, self.prefix)
        except PathRefused as exc:
            status = 404 if "not under" in str(exc) else 400
            raise Refused(status, f"{exc}") from None
        if path == self.callback_path:
            return await self._callback(request)
        if rest == "/logout":
            return self._logout(request)
        if rest == "/health" and request.method in ("GET", "HEAD"):
            return await self._forward(request, rest, None)
        identity = await self._identity(request, rest)
        return await self._forward(request, rest, identity)

    # -- who is asking ------------------------------------------------------------------------

    async def _identity(self, request: Request, rest: str) -> Identity:
        token = _bearer(request.headers.get("authorization"))
        if token is not None:
            return await self._token_identity(token)
        sid = self._session_id(request)
        session = self.sessions.get(sid) if sid else None
        if session is not None and sid is not None:
            try:
                identity = await self._token_identity(session.token)
            except Refused as refused:
                if refused.status != 401:
                    raise
                self.sessions.drop(sid)  # revoked (signed out of the hub) or expired
            else:
                if request.method in UNSAFE_METHODS and not is_same_origin(
                    request.headers.get("origin"),
                    request.headers.get("referer"),
                    self._public_host(request),
                ):
                    raise Refused(403, "a cross-site write was refused (Origin does not match)")
                return identity
        if request.method in ("GET", "HEAD") and not rest.startswith(API_PATHS):
            raise _SignIn()
        raise Refused(
            401,
            "sign in: send a JupyterHub token (Authorization: Bearer <token>, e.g. "
            "MLFLOW_TRACKING_TOKEN=$JUPYTERHUB_API_TOKEN) or open the UI in a browser",
        )

    async def _token_identity(self, token: str) -> Identity:
        if not token or len(token) > 256 or not set(token) <= _TOKEN_CHARS:
            raise Refused(401, "not a JupyterHub token")
        model = await self._ask_hub(
            self.hub.user_for_token(token, use_cache=self.use_cache, sync=False)
        )
        if not isinstance(model, dict) or not model.get("name"):
            raise Refused(401, "unknown or expired JupyterHub token")
        identity = Identity(str(model["name"]), str(model.get("kind", "user")))
        if identity.kind == "user" and ":" in identity.name:
            raise Refused(403, "hub user names with ':' cannot use MLflow")
        scopes = {str(s) for s in model.get("scopes") or ()}
        needed = set(self.hub.access_scopes)
        if not check_scopes(needed, scopes):
            raise Refused(
                403,
                f"the JupyterHub token of {identity.header} may not use MLflow: it needs one "
                f"of {sorted(needed)} (ask the hub's operator)",
            )
        return identity

    async def _ask_hub(self, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self.config.hub_timeout)
        except TimeoutError:
            raise Refused(
                503, f"JupyterHub did not answer within {self.config.hub_timeout:g} s: retry"
            ) from None
        except HTTPError as exc:
            log.warning("JupyterHub check failed: %s", exc.log_message or exc)
            raise Refused(503, "JupyterHub cannot check the sign-in now: retry shortly") from None
        except Exception as exc:  # a refused connection, an odd answer: still a 503, no trace
            log.warning("JupyterHub check failed: %r", exc)
            raise Refused(503, "JupyterHub cannot check the sign-in now: retry shortly") from None

    def _session_id(self, request: Request) -> str | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        try:
            sid = self.signer.loads(cookie, max_age=self.sessions.max_age, salt="session")
        except BadSignature:
            return None
        return sid if isinstance(sid, str) else None

    @staticmethod
    def _public_host(request: Request) -> str:
        forwarded = request.headers.get("x-forwarded-host")
        if forwarded:
            return forwarded.split(",")[0].strip()
        return request.headers.get("host", "")

    @staticmethod
    def _public_proto(request: Request) -> str:
        forwarded = request.headers.get("x-forwarded-proto")
        if forwarded:
            return forwarded.split(",")[0].strip().lower()
        return request.url.scheme

    def _secure(self, request: Request) -> bool:
        return self._public_proto(request) == "https"

    # -- signing in and out -------------------------------------------------------------------

    def _start_sign_in(self, request: Request) -> Response:
        state = secrets.token_urlsafe(24)
        verifier, challenge = _pkce()
        query = request.scope.get("query_string", b"").decode("latin-1")
        here = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        next_url = safe_next(here + (f"?{query}" if query else ""), self.prefix)
        params = {
            "client_id": self.hub.oauth_client_id,
            "redirect_uri": self.hub.oauth_redirect_uri,
            "response_type": "code",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response = RedirectResponse(
            f"{self.hub.oauth_authorization_url}?{urlencode(params)}", status_code=302
        )
        response.set_cookie(
            STATE_COOKIE,
            self.signer.dumps({"s": state, "n": next_url, "v": verifier}, salt="state"),
            max_age=STATE_SECONDS,
            path=self.prefix + "/",
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
        )
        return response

    async def _callback(self, request: Request) -> Response:
        restart = f'<a href="{escape(self.prefix)}/">Sign in again</a>.'
        if request.query_params.get("error"):
            raise Refused(403, f"the hub refused the sign-in: {request.query_params['error']}")
        code, state = request.query_params.get("code"), request.query_params.get("state")
        try:
            saved = self.signer.loads(
                request.cookies.get(STATE_COOKIE, ""), max_age=STATE_SECONDS, salt="state"
            )
        except BadSignature:
            saved = None
        if (
            not code
            or not state
            or not isinstance(saved, dict)
            or not secrets.compare_digest(str(saved.get("s", "")), state)
        ):
            raise _PageRefused(
                400, f"This sign-in expired or was started in another window. {restart}"
            )
        try:
            token = await asyncio.wait_for(
                self.hub.token_for_code(code, code_verifier=str(saved["v"]), sync=False),
                self.config.hub_timeout,
            )
        except (HTTPError, TimeoutError, KeyError, TypeError):
            raise _PageRefused(400, f"The hub did not accept this sign-in. {restart}") from None
        identity = await self._token_identity(str(token))
        sid = self.sessions.create(str(token), identity)
        response = RedirectResponse(safe_next(str(saved.get("n")), self.prefix), status_code=302)
        response.delete_cookie(STATE_COOKIE, path=self.prefix + "/")
        response.set_cookie(
            SESSION_COOKIE,
            self.signer.dumps(sid, salt="session"),
            max_age=self.config.session_seconds,
            path=self.prefix + "/",
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
        )
        log.info("%s signed in to MLflow", identity.header)
        return response

    def _logout(self, request: Request) -> Response:
        sid = self._session_id(request)
        if sid:
            self.sessions.drop(sid)
        hub_logout = self.hub.hub_host + self.hub.hub_prefix + "logout"
        response = RedirectResponse(hub_logout, status_code=302)
        response.delete_cookie(SESSION_COOKIE, path=self.prefix + "/")
        return response

    def _refusal(self, request: Request, refused: Refused) -> Response:
        if isinstance(refused, _SignIn):
            return self._start_sign_in(request)
        if isinstance(refused, _PageRefused):
            page = f"<!doctype html><title>MLflow</title><p>{refused.message}</p>"
            return HTMLResponse(page, status_code=refused.status)
        headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
        if refused.status == 503:
            headers = {"Retry-After": "5"}
        code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 503: "TEMPORARILY_UNAVAILABLE"}
        return JSONResponse(
            {"error_code": code.get(refused.status, "BAD_REQUEST"), "message": refused.message},
            status_code=refused.status,
            headers=headers,
        )

    # -- forwarding ---------------------------------------------------------------------------

    async def _forward(self, request: Request, rest: str, identity: Identity | None) -> Response:
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = self.upstream + rest + (f"?{query}" if query else "")
        client = request.client.host if request.client else None
        headers = request_headers(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
            user=identity.header if identity else "",
            client=client,
            proto=self._public_proto(request),
            host=self._public_host(request),
            prefix=self.prefix,
        )
        if identity is None:
            headers = [(k, v) for k, v in headers if k.lower() != "x-analoglab-user"]
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        upstream_request = self.client.build_request(
            request.method,
            url,
            headers=headers,
            content=request.stream() if has_body else None,
        )
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.TimeoutException:
            raise Refused(504, "MLflow did not answer in time") from None
        except httpx.TransportError as exc:
            log.warning("MLflow at %s is not reachable: %r", self.upstream, exc)
            raise Refused(503, "MLflow is not reachable (starting?): retry shortly") from None
        response = StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            background=BackgroundTask(upstream.aclose),
        )
        response.raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response_headers(
                upstream.headers.multi_items(), upstream=self.upstream, prefix=self.prefix
            )
        ]
        return response


class _SignIn(Refused):
    """No session on a page request: answered with a redirect to the hub's sign-in."""

    def __init__(self) -> None:
        super().__init__(302, "sign in")


class _PageRefused(Refused):
    """A refusal a browser reads (an HTML page)."""


def service_binding(
    host: str | None = None, port: int | None = None, prefix: str | None = None
) -> tuple[str, int, str]:
    """``(host, port, prefix)`` for the gate: as for any managed service
    (:func:`analoglab.queue.hubauth.service_binding`), else ``127.0.0.1:8766`` under
    ``/services/mlflow``."""
    from analoglab.queue.hubauth import service_binding as binding

    return binding(host, port, prefix, default_port=8766, default_prefix=DEFAULT_PREFIX)


def create_gate(config: GateConfig) -> MlflowGate:
    """The gate in front of the MLflow server at ``config.upstream``."""
    return MlflowGate(config)
