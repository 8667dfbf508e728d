"""The queue's exception hierarchy: each error carries the HTTP status the service answers with.

The service turns a :class:`QueueError` into ``{"detail": message}`` with its ``status``; the
client raises the same type from a server's answer, so a notebook sees the server's reason.
"""

from __future__ import annotations

from typing import Any

from analoglab.errors import AnalogLabError


class QueueError(AnalogLabError):
    """Something the queue refused or could not do; ``status`` is its HTTP status code."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.detail: Any = detail if detail is not None else message


class NotAuthenticated(QueueError):
    """No token, or a token the queue does not know."""

    status = 401


class Forbidden(QueueError):
    """The caller's roles do not allow this action on this lab or job."""

    status = 403


class NotFound(QueueError):
    """No such job, frontier or lab (or the caller may not know it exists)."""

    status = 404


class Conflict(QueueError):
    """The job is not in a state where this can happen (or another caller got there first)."""

    status = 409


class TransitionRefused(Conflict):
    """A state transition the state machine does not allow, or a lost compare-and-set."""


class LeaseLost(Conflict):
    """The agent's lease on a job expired or was taken over: stop working on it."""


class Invalid(QueueError):
    """A request whose content is unacceptable (bad spec, bad result, failed vetting)."""

    status = 422


class Unavailable(QueueError):
    """Something the queue depends on (its database, JupyterHub) does not answer: retry later."""

    status = 503
