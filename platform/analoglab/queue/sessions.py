"""The review pages' sign-in sessions: a random id in a signed cookie, the rest in the database.

A browser that signs in (through the hub's OAuth, or with a pasted token where the queue runs
without a hub) gets a session: a random id (32 bytes) that the ``analoglab_session`` cookie
carries, signed with the app's page secret (:class:`itsdangerous.TimestampSigner`). The
database keeps only the id's sha256 with the identity and roles resolved at sign-in, and when
the session ends (``queue_session_seconds``, 8 h by default). The cookie is never a token the
API accepts; a session can be ended at once (sign-out deletes its row, so the old cookie no
longer signs anyone in), and it works across replicas and restarts that share the database
and the page secret. Roles are those of the sign-in: sign out and in again to pick up new ones.

The CSRF token of a session's forms is an HMAC of its id under the page secret
(:func:`csrf_for`), so it changes with every sign-in and dies with the session.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, TimestampSigner
from sqlalchemy import Engine, delete, select

from analoglab.queue.auth import Identity
from analoglab.queue.db import make_sessionmaker
from analoglab.queue.models import PageSession, utcnow

DEFAULT_SECONDS = 8 * 3600
_SALT = "analoglab-review-session"


def csrf_for(secret: bytes, key: str) -> str:
    """The CSRF token of forms shown to a session (``key``: its id, or a bearer token)."""
    return hmac.new(secret, b"analoglab-csrf:" + key.encode(), hashlib.sha256).hexdigest()


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Started:
    """A new session: its id (kept by no one but the browser) and its signed cookie value."""

    session_id: str
    cookie: str
    expires_at: dt.datetime


class SessionStore:
    """Sessions in the queue's database (table ``page_sessions``)."""

    def __init__(
        self,
        engine: Engine,
        secret: bytes,
        *,
        seconds: int = DEFAULT_SECONDS,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.sessions = make_sessionmaker(engine)
        self.signer = TimestampSigner(secret, salt=_SALT)
        self.seconds = seconds
        self.clock = clock

    def start(self, ident: Identity, via: str) -> Started:
        """A session for ``ident`` (``via``: ``hub`` or ``token``); expired rows are dropped."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + dt.timedelta(seconds=self.seconds)
        with self.sessions.begin() as db:
            db.execute(delete(PageSession).where(PageSession.expires_at <= now))
            db.add(
                PageSession(
                    id_hash=_digest(session_id),
                    name=ident.name,
                    roles=sorted(ident.roles),
                    via=via,
                    created_at=now,
                    expires_at=expires,
                )
            )
        cookie = self.signer.sign(session_id).decode()
        return Started(session_id, cookie, expires)

    def session_id(self, cookie: str) -> str | None:
        """The id a cookie carries, when its signature holds (None: forged or altered)."""
        try:
            return self.signer.unsign(cookie.encode(), max_age=self.seconds).decode()
        except (BadSignature, UnicodeError):
            return None

    def identity(self, session_id: str) -> Identity | None:
        """Who the session signed in, while it lasts (None: unknown, ended or expired)."""
        with self.sessions() as db:
            row = db.execute(
                select(PageSession).where(PageSession.id_hash == _digest(session_id))
            ).scalar_one_or_none()
        if row is None or row.expires_at <= self.clock():
            return None
        return Identity(name=row.name, roles=frozenset(row.roles))

    def end(self, session_id: str) -> None:
        """Forget the session: its cookie signs no one in from now on."""
        with self.sessions.begin() as db:
            db.execute(delete(PageSession).where(PageSession.id_hash == _digest(session_id)))
