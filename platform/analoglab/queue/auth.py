"""Who is calling: an :class:`Identity` with roles, found by a pluggable authenticator.

Roles: ``researcher`` (submits and follows own jobs), ``reviewer:<lab>`` (reviews, releases
and sets policy for that lab's frontiers), ``agent:<lab>`` (claims and runs that lab's jobs),
``admin`` (operator: sees everything, verifies the audit log, sets any policy).

This stage authenticates static bearer tokens from configuration, stored only as sha256
hashes (:class:`StaticTokens`, read by :func:`load_tokens` from TOML)::

    [tokens.<sha256 of the token>]
    name = "alice"
    roles = ["researcher"]

Any object with ``authenticate(token) -> Identity | None`` (fast, no I/O: the service calls
it on its event loop) or ``async authenticate_async(token)`` (anything that waits on the
network) can replace it; :func:`identify` calls either. :class:`ChainAuthenticator` asks
several in order: the service chains the static tokens with JupyterHub's tokens
(:mod:`.hubauth`) when it runs as a hub service. An authenticator may also raise a
:class:`~.errors.QueueError` (403: a known token without any queue role; 503: the hub does
not answer) instead of returning None (401).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analoglab.errors import ConfigError
from analoglab.queue.bounds import printable_name
from analoglab.queue.errors import Forbidden

ROLE_PATTERN = re.compile(r"^(researcher|admin|(reviewer|agent):[a-z0-9][a-z0-9._-]*)$")


def hash_token(token: str) -> str:
    """The sha256 hex digest under which a token is configured."""
    return hashlib.sha256(token.encode()).hexdigest()


class Identity(BaseModel):
    """A caller: a name and the roles it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    roles: frozenset[str] = frozenset()
    groups: frozenset[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        frozenset(), max_length=64, description="hub groups (fair-share weights)"
    )

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: frozenset[str]) -> frozenset[str]:
        bad = sorted(r for r in roles if not ROLE_PATTERN.fullmatch(r))
        if bad:
            raise ValueError(
                f"unknown roles {bad}: use researcher, reviewer:<lab>, agent:<lab> or admin"
            )
        return roles

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_researcher(self) -> bool:
        return "researcher" in self.roles

    def reviews(self, lab: str) -> bool:
        return f"reviewer:{lab}" in self.roles

    def is_agent_of(self, lab: str) -> bool:
        return f"agent:{lab}" in self.roles


@runtime_checkable
class Authenticator(Protocol):
    """Turns a bearer token into an identity, or None when the token is unknown (no I/O)."""

    def authenticate(self, token: str) -> Identity | None: ...


@runtime_checkable
class AsyncAuthenticator(Protocol):
    """Like :class:`Authenticator`, for lookups that wait (a JupyterHub API call)."""

    async def authenticate_async(self, token: str) -> Identity | None: ...


AnyAuthenticator = Authenticator | AsyncAuthenticator


def shown_safely(ident: Identity) -> Identity:
    """``ident``, if its name may be shown on pages and in the audit log (printable, no bidi
    controls); :class:`Forbidden` otherwise. Every way in (API token, page session, hub
    OAuth) passes here."""
    try:
        printable_name(ident.name)
    except ValueError as exc:
        raise Forbidden(f"the user name is refused: {exc}") from None
    return ident


async def identify(authenticator: AnyAuthenticator, token: str) -> Identity | None:
    """The identity of ``token`` from either kind of authenticator (see :func:`shown_safely`)."""
    if isinstance(authenticator, AsyncAuthenticator):
        ident = await authenticator.authenticate_async(token)
    else:
        ident = authenticator.authenticate(token)
    return None if ident is None else shown_safely(ident)


async def aclose(authenticator: AnyAuthenticator) -> None:
    """Release what an authenticator holds (HTTP sessions), where it has an ``aclose``."""
    close = getattr(authenticator, "aclose", None)
    if close is not None:
        await close()


class ChainAuthenticator:
    """Asks each authenticator in turn; the first that knows the token answers.

    A member that raises (403, 503) ends the search: put cheap, local ones first.
    """

    def __init__(self, members: Sequence[AnyAuthenticator]) -> None:
        self.members = list(members)

    async def authenticate_async(self, token: str) -> Identity | None:
        for member in self.members:
            ident = await identify(member, token)
            if ident is not None:
                return ident
        return None

    async def aclose(self) -> None:
        for member in self.members:
            await aclose(member)


class StaticTokens:
    """Tokens from configuration, kept as sha256 hashes only."""

    def __init__(self, by_hash: Mapping[str, Identity]) -> None:
        self._by_hash = {h.lower(): ident for h, ident in by_hash.items()}

    def authenticate(self, token: str) -> Identity | None:
        return self._by_hash.get(hash_token(token))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> StaticTokens:
        """From ``{sha256: {name, roles}}`` (the TOML's ``tokens`` table)."""
        out: dict[str, Identity] = {}
        for digest, ident in data.items():
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ConfigError(
                    f"token key {digest[:12]}... is not a sha256 hex digest: configure "
                    "the hash of each token (analoglab.queue.auth.hash_token), never the token"
                )
            try:
                out[digest] = (
                    ident if isinstance(ident, Identity) else Identity.model_validate(ident)
                )
            except ValidationError as exc:
                raise ConfigError(f"token {digest[:12]}...: {exc.errors()[0]['msg']}") from exc
        return cls(out)


def load_tokens(path: str | Path) -> StaticTokens:
    """Read a tokens TOML file (see the module docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"tokens file {path} cannot be read: {exc}") from exc
    return StaticTokens.from_mapping(data.get("tokens", {}))
