"""JupyterHub tokens for the queue service: whose token it is, and which queue roles its scopes
grant.

This module owns the mapping from JupyterHub scopes to queue roles and the question put to the
hub. :class:`HubAuthenticator` asks JupyterHub who owns a bearer token with
:class:`jupyterhub.services.auth.HubAuth` (``GET <hub>/hub/api/user`` sent with that token,
answers cached for ``cache_seconds``, keyed by the token's sha256) and maps the *token's* scopes
(what the token asked for, intersected by the hub with what its owner holds) to roles:

=================================== ==================
JupyterHub scope                    queue role
=================================== ==================
``custom:analoglab:submit``         ``researcher``
``custom:analoglab:review:<lab>``   ``reviewer:<lab>``
``custom:analoglab:agent:<lab>``    ``agent:<lab>``
``custom:analoglab:admin``          ``admin``
=================================== ==================

The hub's operator defines these scopes in ``c.JupyterHub.custom_scopes`` and grants them with
``c.JupyterHub.load_roles`` (``docs/queue.md`` has a ``jupyterhub_config.py``). A user is named
by their hub name, a hub service as ``service:<name>``.

Answers: a token the hub does not know is None (the service's 401); a known token holding none
of these scopes is a 403 naming them; where access scopes are set (HubAuth's default: the hub's
``JUPYTERHUB_OAUTH_ACCESS_SCOPES``, else ``access:services!service=<JUPYTERHUB_SERVICE_NAME>``,
both set by the hub for a managed service) a token holding none of them is a 403; a hub that
does not answer, answers with an error, or takes over ``timeout`` seconds is a 503.

:func:`with_hub_tokens` chains the static tokens (lab agents, one machine without a hub) with
the hub's when :func:`hub_auth_enabled`: the ``queue_hub_auth`` setting, else whether
``JUPYTERHUB_API_TOKEN`` is set (the hub sets it for the services it manages).
:func:`service_binding` is where a managed service listens (``JUPYTERHUB_SERVICE_URL``) and
the URL prefix the hub's proxy forwards to it unchanged (``JUPYTERHUB_SERVICE_PREFIX``).

Browsers sign in to the review pages through the hub's OAuth: :class:`HubSignIn` (over
:class:`jupyterhub.services.auth.HubOAuth`, configured from the environment the hub gives a
managed service: ``JUPYTERHUB_CLIENT_ID``, ``JUPYTERHUB_API_TOKEN``,
``JUPYTERHUB_OAUTH_CALLBACK_URL``, ``JUPYTERHUB_HOST``, ``JUPYTERHUB_BASE_URL``) builds the
authorize URL (with PKCE) and exchanges the code the hub sends back for the user's OAuth token,
whose identity and roles :class:`HubAuthenticator` then resolves exactly as for an API token.
The token's scopes are the service's ``oauth_client_allowed_scopes`` that the user holds: give
the queue service the ``custom:analoglab:*`` scopes there (``docs/queue.md``).
:func:`hub_sign_in` says whether a service signs browsers in this way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode, urlparse

from jupyterhub.httpclient import JupyterHubHTTPClient  # type: ignore[import-untyped]
from jupyterhub.services.auth import (  # type: ignore[import-untyped]
    HubAuth,
    HubOAuth,
    check_scopes,
)
from pydantic import ValidationError
from tornado.web import HTTPError

from analoglab.config import Settings
from analoglab.queue.auth import ROLE_PATTERN, AnyAuthenticator, ChainAuthenticator, Identity
from analoglab.queue.errors import Forbidden, Unavailable

#: What a JupyterHub API token can look like (it issues url-safe strings of 32 or more
#: characters); anything else is refused without a round trip to the hub.
HUB_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,256}")
log = logging.getLogger(__name__)

SCOPE_PREFIX = "custom:analoglab:"
DEFAULT_TIMEOUT = 10.0

_KIND_ROLES = {"review": "reviewer", "agent": "agent"}


def roles_from_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The queue roles that JupyterHub ``scopes`` grant (others, and filtered scopes, ignored)."""
    roles: set[str] = set()
    for scope in scopes:
        if not scope.startswith(SCOPE_PREFIX) or "!" in scope:
            continue
        rest = scope.removeprefix(SCOPE_PREFIX)
        if rest == "submit":
            roles.add("researcher")
        elif rest == "admin":
            roles.add("admin")
        else:
            kind, _, lab = rest.partition(":")
            role = f"{_KIND_ROLES.get(kind, '?')}:{lab}"
            if ROLE_PATTERN.match(role):
                roles.add(role)
    return frozenset(roles)


def scope_for_role(role: str) -> str:
    """The JupyterHub scope that grants a queue role (``reviewer:lab-a`` →
    ``custom:analoglab:review:lab-a``)."""
    if not ROLE_PATTERN.match(role):
        raise ValueError(f"unknown role {role!r}")
    if role == "researcher":
        return SCOPE_PREFIX + "submit"
    if role == "admin":
        return SCOPE_PREFIX + "admin"
    kind, _, lab = role.partition(":")
    return f"{SCOPE_PREFIX}{'review' if kind == 'reviewer' else 'agent'}:{lab}"


def hub_auth_enabled(settings: Settings) -> bool:
    """Whether the service takes hub tokens: the ``queue_hub_auth`` setting, else whether it
    runs as a hub service (``JUPYTERHUB_API_TOKEN`` set)."""
    if settings.queue_hub_auth is not None:
        return settings.queue_hub_auth
    return bool(os.environ.get("JUPYTERHUB_API_TOKEN"))


class HubAuthenticator:
    """Bearer tokens issued by JupyterHub, checked with ``HubAuth`` (see the module docstring).

    ``api_url``: the hub's API (default ``JUPYTERHUB_API_URL``, else
    ``http://127.0.0.1:8081/hub/api``); ``access_scopes``: a token must hold one of them
    (default: HubAuth's, from the environment a managed service gets; empty: none needed).
    """

    def __init__(
        self,
        api_url: str | None = None,
        *,
        cache_seconds: int = 60,
        timeout: float = DEFAULT_TIMEOUT,
        access_scopes: Iterable[str] | None = None,
    ) -> None:
        options: dict[str, Any] = {"cache_max_age": max(cache_seconds, 0)}
        if api_url:
            options["api_url"] = api_url
        if access_scopes is not None:
            options["access_scopes"] = set(access_scopes)
        self.hub_auth: Any = HubAuth(**options)
        self.use_cache = cache_seconds > 0  # HubAuth's max age 0 would mean "forever"
        self.timeout = timeout

    @property
    def api_url(self) -> str:
        return str(self.hub_auth.api_url)

    @property
    def access_scopes(self) -> frozenset[str]:
        return frozenset(self.hub_auth.access_scopes)

    async def _user_model(self, token: str) -> dict[str, Any] | None:
        try:
            model = await asyncio.wait_for(
                self.hub_auth.user_for_token(token, use_cache=self.use_cache, sync=False),
                self.timeout,
            )
        except TimeoutError:
            raise Unavailable(
                f"JupyterHub at {self.api_url} did not answer within {self.timeout:g} s: "
                "retry shortly"
            ) from None
        except HTTPError as exc:  # HubAuth's: no connection, or the hub answered an error
            log.warning("JupyterHub token check failed: %s", exc.log_message or exc)
            what = (
                "does not answer"
                if str(exc.log_message or "").startswith("Failed to connect")
                else "answered with an error"
            )
            raise Unavailable(
                f"JupyterHub at {self.api_url} {what}: the token cannot be checked; retry "
                "shortly, or ask the hub's operator"
            ) from None
        except Exception as exc:  # aiohttp, OSError, or HubAuth tripping on an odd answer
            log.warning("JupyterHub token check failed: %r", exc)
            raise Unavailable(
                "JupyterHub answered with an error: the token cannot be checked; retry shortly"
            ) from None
        return model if isinstance(model, dict) else None

    async def authenticate_async(self, token: str) -> Identity | None:
        """The token's owner and the roles its scopes grant; None when the hub does not know
        it; 403 when it grants no queue role or lacks the access scope; 503 without a hub."""
        if not HUB_TOKEN.fullmatch(token):
            return None  # not something JupyterHub issues: no need to ask it (a 401)
        model = await self._user_model(token)
        if model is None or not model.get("name"):
            return None
        kind = str(model.get("kind", "user"))
        if kind == "user" and ":" in str(model["name"]):
            # A user named "service:x" would pass for the service x.
            raise Forbidden("JupyterHub user names with ':' cannot use the queue")
        name = str(model["name"]) if kind == "user" else f"{kind}:{model['name']}"
        scopes = {str(s) for s in model.get("scopes") or ()}
        needed = self.access_scopes
        if needed and not check_scopes(set(needed), scopes):
            raise Forbidden(
                f"the JupyterHub token of {name} may not use this service: it needs one of "
                f"{sorted(needed)}"
            )
        roles = roles_from_scopes(scopes)
        if not roles:
            raise Forbidden(
                f"the JupyterHub token of {name} holds no queue scope: ask the hub's operator "
                f"for {SCOPE_PREFIX}submit (researchers), {SCOPE_PREFIX}review:<lab>, "
                f"{SCOPE_PREFIX}agent:<lab> or {SCOPE_PREFIX}admin"
            )
        try:
            groups = frozenset(str(g) for g in model.get("groups") or ())
            return Identity(name=name, roles=roles, groups=groups)
        except ValidationError as exc:
            raise Forbidden(f"the JupyterHub identity {name[:40]!r} is not usable: {exc}") from None

    async def aclose(self) -> None:
        """Close the HTTP session HubAuth opened on the running event loop."""
        await JupyterHubHTTPClient.loop_instance().close()


class HubSignIn:
    """Sign-in of browsers through the hub's OAuth (authorization code with PKCE).

    ``client_id``, ``api_token``, ``callback_url``: default from the hub's environment for a
    managed service (see the module docstring); ``hub`` resolves the token's owner and roles.
    """

    def __init__(
        self,
        hub: HubAuthenticator,
        *,
        client_id: str | None = None,
        api_token: str | None = None,
        callback_url: str | None = None,
    ) -> None:
        options: dict[str, Any] = {"api_url": hub.api_url}
        for name, value in (
            ("oauth_client_id", client_id),
            ("api_token", api_token),
            ("oauth_redirect_uri", callback_url),
        ):
            if value:
                options[name] = value
        self.oauth: Any = HubOAuth(**options)
        self.hub = hub

    @property
    def client_id(self) -> str:
        return str(self.oauth.oauth_client_id)

    @property
    def callback_path(self) -> str:
        """The path of the callback URL (the hub sends the browser there with a code)."""
        return urlparse(str(self.oauth.oauth_redirect_uri)).path

    def pkce(self) -> tuple[str, str]:
        """A fresh PKCE ``(verifier, challenge)`` (S256)."""
        verifier, challenge, _method = self.oauth.generate_pkce_code_challenge()
        return str(verifier), str(challenge)

    def authorize_url(self, state: str, code_challenge: str) -> str:
        """Where to send a browser to sign in: the hub's authorize endpoint for this client."""
        query = {
            "client_id": self.client_id,
            "redirect_uri": str(self.oauth.oauth_redirect_uri),
            "response_type": "code",
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        return f"{self.oauth.oauth_authorization_url}?{urlencode(query)}"

    async def token_for_code(self, code: str, code_verifier: str) -> str:
        """The user's OAuth token for the code the hub gave the browser; 403 when the hub
        refuses the code (used, expired, another client's), 503 when it does not answer."""
        try:
            token = await asyncio.wait_for(
                self.oauth.token_for_code(code, code_verifier=code_verifier, sync=False),
                self.hub.timeout,
            )
        except TimeoutError:
            raise Unavailable(
                f"JupyterHub did not answer within {self.hub.timeout:g} s: sign in again shortly"
            ) from None
        except HTTPError as exc:
            message = str(exc.log_message or "")
            log.warning("JupyterHub OAuth code exchange failed: %s", message)
            if message.startswith("Failed to check authorization:"):
                reason = message.partition(":")[2].strip()
                raise Forbidden(
                    f"JupyterHub refused the sign-in ({reason}): sign in again"
                ) from None
            raise Unavailable(
                "JupyterHub does not answer or answered with an error: sign in again shortly"
            ) from None
        except Exception as exc:  # aiohttp, OSError, an odd answer without access_token
            log.warning("JupyterHub OAuth code exchange failed: %r", exc)
            raise Unavailable("JupyterHub answered with an error: sign in again shortly") from None
        return str(token)

    async def identity(self, token: str) -> Identity | None:
        """Who the token's owner is, with the roles its scopes grant (as for API tokens)."""
        return await self.hub.authenticate_async(token)


def hub_sign_in(authenticator: AnyAuthenticator) -> HubSignIn | None:
    """Browser sign-in through the hub's OAuth, where the service runs as a hub service with
    an OAuth client (``JUPYTERHUB_CLIENT_ID`` and ``JUPYTERHUB_API_TOKEN`` set) and takes hub
    tokens; None otherwise (the review pages then take a pasted token)."""
    if not (os.environ.get("JUPYTERHUB_CLIENT_ID") and os.environ.get("JUPYTERHUB_API_TOKEN")):
        return None
    members = (
        authenticator.members if isinstance(authenticator, ChainAuthenticator) else [authenticator]
    )
    hub = next((m for m in members if isinstance(m, HubAuthenticator)), None)
    return HubSignIn(hub) if hub is not None else None


def with_hub_tokens(static: AnyAuthenticator, settings: Settings) -> AnyAuthenticator:
    """``static`` alone, or followed by the hub's tokens when :func:`hub_auth_enabled`."""
    if not hub_auth_enabled(settings):
        return static
    hub = HubAuthenticator(
        settings.queue_hub_api_url, cache_seconds=settings.queue_hub_cache_seconds
    )
    return ChainAuthenticator([static, hub])


def service_binding(
    host: str | None = None,
    port: int | None = None,
    prefix: str | None = None,
    *,
    default_port: int = 8765,
    default_prefix: str = "",
) -> tuple[str, int, str]:
    """``(host, port, prefix)`` to serve on: the arguments, else what the hub gives a managed
    service (``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``; read only where
    ``JUPYTERHUB_SERVICE_NAME`` is set, since a notebook server has them too), else
    ``127.0.0.1:<default_port>`` at ``default_prefix`` (the queue's: 8765 at the root). The
    prefix (no trailing slash) is the app's ``root_path``: the proxy forwards
    ``/services/<name>/...`` with the prefix kept."""
    managed = bool(os.environ.get("JUPYTERHUB_SERVICE_NAME"))
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "") if managed else "")
    if prefix is None:
        prefix = (
            os.environ.get("JUPYTERHUB_SERVICE_PREFIX") if managed else None
        ) or default_prefix
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return host or url.hostname or "127.0.0.1", port or url.port or default_port, prefix
