"""The platform's authenticator: ``nativeauthenticator``, made to run on JupyterHub 6.

nativeauthenticator 1.3 (the latest release) signs users in with bcrypt-hashed passwords and
holds sign-ups for an admin's approval, but its login handler still times logins with
``self.statsd``, which JupyterHub 6 removed (every login was a 500), and renders the login
form with a signature JupyterHub 6's error path does not call. :class:`LoginHandler` supplies a
timer that does nothing and renders errors as the hub does; :class:`PlatformAuthenticator` is
nativeauthenticator with that handler. Nothing else changes: same database table, same pages.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.handlers.base import BaseHandler  # type: ignore[import-untyped]
from nativeauthenticator import NativeAuthenticator  # type: ignore[import-untyped]
from nativeauthenticator.handlers import (  # type: ignore[import-untyped]
    LoginHandler as NativeLoginHandler,
)


class _NoTimer:
    """Stands in for the statsd client JupyterHub 6 no longer has."""

    def timer(self, name: str) -> _NoTimer:
        return self

    def start(self) -> _NoTimer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class LoginHandler(NativeLoginHandler):  # type: ignore[misc]
    statsd = _NoTimer()

    def render_template(self, name: str, sync: bool = False, **ns: Any) -> Any:
        if name == "error.html":  # nativeauthenticator's form takes no error-page arguments
            return BaseHandler.render_template(self, name, sync=sync, **ns)
        return super().render_template(name, sync=sync, **ns)


class PlatformAuthenticator(NativeAuthenticator):  # type: ignore[misc]
    """nativeauthenticator with a login handler that works on JupyterHub 6."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        handlers: list[tuple[str, Any]] = super().get_handlers(app)
        return [(path, LoginHandler if path == r"/login" else h) for path, h in handlers]
