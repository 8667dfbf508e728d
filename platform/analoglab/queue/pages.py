"""The reviewers' pages: server-rendered HTML under ``/review``, usable without JavaScript.

``GET /review`` lists the signed-in reviewer's labs' jobs awaiting review and awaiting release;
``GET /review/jobs/{id}`` shows one job for humans (the spec's method, data sizes and layers,
its vetting under the current policy, reviews, the audit history, the analog result it checks,
and the posted result once there is one) with the forms to decide on it. The forms post to
``/review/jobs/{id}/review`` (approve, reject or request changes, with a comment) and
``/review/jobs/{id}/release`` (release or withhold, with a reason), then redirect (303) back.

Sign-in: the same bearer tokens as the API (``Authorization: Bearer``), or the
``analoglab_token`` cookie that ``POST /review/login`` sets from a form, so that a browser can
use the pages. The cookie is HttpOnly, ``SameSite=Strict`` and scoped to ``/review``; the API
never reads it. Every form carries a CSRF token, an HMAC of the session's token under the
app's secret (``app.state.page_secret``), which each POST checks (403 without a valid one);
the login form uses a double-submit cookie instead. Everything a user wrote is escaped.

Only reviewers of a job's lab may act on it; they and admins may read its page. Anyone else
gets 404 for a job they could not see through the API, else 403. The pages call
:class:`~.jobs.JobQueue` operations only: what may happen to a job is decided there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from analoglab.errors import AnalogLabError
from analoglab.models.catalog import FrontierModel
from analoglab.queue.auth import Identity, identify
from analoglab.queue.errors import Forbidden, Invalid, NotAuthenticated, NotFound, QueueError
from analoglab.queue.jobs import JobQueue
from analoglab.queue.models import AuditEntry, Job, Review
from analoglab.queue.service import can_see
from analoglab.queue.states import State
from analoglab.queue.vetting import data_sizes, estimated_cost, layer_count

COOKIE = "analoglab_token"
LOGIN_CSRF_COOKIE = "analoglab_login_csrf"
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024
MAX_TEXT = 10_000
MAX_SHOWN_RESULT = 100_000
SESSION_SECONDS = 12 * 3600
LIST_LIMIT = 200

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:1rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:.5rem;overflow:auto;
white-space:pre-wrap}.state{font-weight:bold}nav{border-bottom:1px solid #ccc;padding:.5rem 0;
margin-bottom:1rem}nav form{display:inline}textarea{width:100%;max-width:40rem}
.error{color:#a00}
"""


def e(value: object) -> str:
    """``value`` as escaped HTML text (quotes included, so it is safe in attributes too)."""
    return escape("" if value is None else str(value), quote=True)


# -- sessions and CSRF ------------------------------------------------------------------------


@dataclass(frozen=True)
class PageSession:
    """The signed-in caller of a page and the token it signed in with."""

    ident: Identity
    token: str


def csrf_token(secret: bytes, session_token: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 of its token under the app's secret."""
    return hmac.new(secret, b"analoglab-csrf:" + session_token.encode(), hashlib.sha256).hexdigest()


def _secret(request: Request) -> bytes:
    secret: bytes = request.app.state.page_secret
    return secret


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + "/review"


async def page_session(request: Request) -> PageSession:
    """The caller, from ``Authorization: Bearer`` or the ``analoglab_token`` cookie; 401."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("send the token as 'Authorization: Bearer <token>'")
        token = token.strip()
    else:
        token = request.cookies.get(COOKIE, "")
    if not token:
        raise NotAuthenticated("not signed in")
    ident = await identify(request.app.state.authenticator, token)
    if ident is None:
        raise NotAuthenticated("unknown token")
    return PageSession(ident=ident, token=token)


Session = Annotated[PageSession, Depends(page_session)]


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (first value of each field); 413 when too large."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise QueueError(f"the form is over {MAX_FORM_BYTES} bytes", status=413)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid(f"unreadable form: {exc}") from exc
    return {k: v[0] for k, v in fields.items()}


async def _checked_form(request: Request, sess: PageSession) -> dict[str, str]:
    """The form, once its CSRF token matches the session's (403 otherwise)."""
    form = await _form(request)
    expected = csrf_token(_secret(request), sess.token)
    if not hmac.compare_digest(form.get(CSRF_FIELD, "").encode(), expected.encode()):
        raise Forbidden("missing or invalid CSRF token: reload the page and try again")
    return form


def _text(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").replace("\r\n", "\n")
    if len(value) > MAX_TEXT:
        raise Invalid(f"{name} is over {MAX_TEXT} characters")
    return value


# -- rendering --------------------------------------------------------------------------------


def _page(
    request: Request,
    title: str,
    body: str,
    *,
    sess: PageSession | None = None,
    status: int = 200,
) -> HTMLResponse:
    base = _base(request)
    nav = f'<a href="{e(base)}">Review queue</a>'
    if sess is not None:
        nav += (
            f" · signed in as <b>{e(sess.ident.name)}</b> "
            f'<form method="post" action="{e(base)}/logout">'
            f"{_csrf_input(request, sess)}<button>Sign out</button></form>"
        )
    else:
        nav += f' · <a href="{e(base)}/login">Sign in</a>'
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} · Analog Lab queue</title><style>{_STYLE}</style></head>"
        f"<body><nav>{nav}</nav><h1>{e(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_HEADERS)


def _csrf_input(request: Request, sess: PageSession) -> str:
    token = csrf_token(_secret(request), sess.token)
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{e(token)}">'


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table; ``rows`` hold HTML already escaped by the caller."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _when(value: Any) -> str:
    return e(value.strftime("%Y-%m-%d %H:%M:%S UTC")) if value is not None else ""


def _job_rows(request: Request, jobs: list[Job]) -> str:
    if not jobs:
        return "<p>None.</p>"
    base = _base(request)
    rows = [
        [
            f'<a href="{e(base)}/jobs/{job.id}">#{job.id}</a>',
            e(job.spec.get("method", "?")),
            e(job.frontier),
            e(job.submitter),
            _when(job.created_at),
            e(str(job.spec.get("description", ""))[:120]),
        ]
        for job in jobs
    ]
    return _table(["job", "method", "frontier", "submitter", "submitted", "description"], rows)


def _ref(ref: str | None) -> str:
    if not ref:
        return "none"
    if ref.startswith(("http://", "https://")):
        return f'<a href="{e(ref)}" rel="noopener noreferrer">{e(ref)}</a>'
    return f"<code>{e(ref)}</code>"


def _spec_section(queue: JobQueue, job: Job) -> str:
    from analoglab.experiments.spec import parse_spec

    spec_json = json.dumps(job.spec, indent=2, sort_keys=True)
    raw = f"<details><summary>The full spec (JSON)</summary><pre>{e(spec_json)}</pre></details>"
    try:
        spec = parse_spec(job.spec)
    except AnalogLabError as exc:
        return f'<p class="error">The stored spec does not validate: {e(exc)}</p>{raw}'
    rows: list[list[str]] = [
        ["method", e(spec.method)],
        ["name", e(spec.name or "")],
        ["description", f'<div style="white-space:pre-wrap">{e(spec.description)}</div>'],
    ]
    sizes = data_sizes(spec)
    for field, n in sizes.items():
        kind = getattr(getattr(spec, field), "kind", "")
        rows.append([f"data: {e(field)}", f"{n} ({e(kind)})"])
    try:
        frontier: FrontierModel | None = queue.frontier(job.frontier)
    except QueueError:
        frontier = None
    layers = getattr(spec, "layers", None)
    if layers is not None:
        n_layers = layer_count(spec, frontier) if frontier is not None else "?"
        chosen = (
            f"depths {e(layers.depths)}"
            if layers.depths is not None
            else f"indices {e(layers.indices)}"
            if layers.indices is not None
            else "every block"
        )
        rows.append(["layers", f"{chosen} ({e(n_layers)} in all)"])
    scales = getattr(spec, "scales", None)
    if scales is not None:
        rows.append(["scales", e(scales)])
    rows.append(["max tokens per prompt", e(spec.max_tokens_per_prompt)])
    if frontier is not None:
        rows.append(["estimated cost", e(estimated_cost(spec, frontier))])
    return _table(["", ""], rows) + raw


def _vetting_section(queue: JobQueue, job: Job) -> str:
    try:
        findings = queue.findings(job)
    except QueueError as exc:
        return f'<p class="error">Cannot vet it now: {e(exc)}</p>'
    if not findings:
        return "<p>Passed at submission, and passes the frontier's current policy.</p>"
    items = "".join(f"<li><code>{e(f.code)}</code>: {e(f.message)}</li>" for f in findings)
    return f"<p>Passed at submission; under the current policy it would not:</p><ul>{items}</ul>"


def _reviews_section(reviews: list[Review]) -> str:
    if not reviews:
        return "<p>No reviews yet.</p>"
    rows = [
        [_when(r.created_at), e(r.reviewer), e(r.decision), f"<pre>{e(r.comment)}</pre>"]
        for r in reviews
    ]
    return _table(["when", "reviewer", "decision", "comment"], rows)


def _history_section(entries: list[AuditEntry]) -> str:
    if not entries:
        return "<p>No audit entries.</p>"
    rows = [
        [
            e(a.seq),
            _when(a.at),
            e(a.actor),
            e(a.action),
            e(f"{a.from_state or '-'} → {a.to_state or '-'}"),
            f"<code>{e(json.dumps(a.detail, sort_keys=True))}</code>",
        ]
        for a in entries
    ]
    return _table(["seq", "when", "actor", "action", "states", "detail"], rows)


def _result_section(job: Job) -> str:
    if job.result is None:
        return ""
    text = json.dumps(job.result, indent=2, sort_keys=True)
    cut = len(text) > MAX_SHOWN_RESULT
    shown = text[:MAX_SHOWN_RESULT] + ("\n… (cut; read it from the API)" if cut else "")
    return (
        f"<h2>Result</h2><p>{e(job.result_size)} bytes, sha256 <code>{e(job.result_hash)}</code>"
        f"</p><details><summary>The posted result (JSON)</summary><pre>{e(shown)}</pre></details>"
    )


def _forms(request: Request, sess: PageSession, job: Job) -> str:
    if not sess.ident.reviews(job.lab):
        return ""
    action = f"{e(_base(request))}/jobs/{job.id}"
    csrf = _csrf_input(request, sess)
    if job.state == State.AWAITING_REVIEW:
        return (
            f'<h2>Review</h2><form method="post" action="{action}/review">{csrf}'
            '<p><label>Comment<br><textarea name="comment" rows="4" maxlength="10000">'
            "</textarea></label></p>"
            '<button name="decision" value="approve">Approve</button> '
            '<button name="decision" value="request_changes">Request changes</button> '
            '<button name="decision" value="reject">Reject</button></form>'
        )
    if job.state == State.AWAITING_RELEASE:
        return (
            f'<h2>Release</h2><form method="post" action="{action}/release">{csrf}'
            '<p><label>Reason<br><textarea name="reason" rows="4" maxlength="10000">'
            "</textarea></label></p>"
            '<button name="decision" value="release">Release</button> '
            '<button name="decision" value="withhold">Withhold</button></form>'
        )
    return ""


# -- routes -----------------------------------------------------------------------------------


class PageRoute(APIRoute):
    """Turns a queue error in a page into an HTML page with its status (not JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except QueueError as exc:
                login = ""
                if exc.status == 401:
                    login = f'<p><a href="{e(_base(request))}/login">Sign in</a></p>'
                return _page(
                    request,
                    f"Error {exc.status}",
                    f'<p class="error">{e(exc)}</p>{login}',
                    status=exc.status,
                )

        return route


router = APIRouter(prefix="/review", route_class=PageRoute, tags=["review pages"])


def _queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def readable_job(queue: JobQueue, ident: Identity, job_id: int) -> Job:
    """The job, for reviewers of its lab and admins; 404 for a job the caller could not see
    through the API, 403 for one it could."""
    job = queue.get(job_id)
    if ident.reviews(job.lab) or ident.is_admin:
        return job
    if can_see(ident, job):
        raise Forbidden(f"only reviewers of lab {job.lab!r} see its review pages")
    raise NotFound(f"no job {job_id}")


def _reviewed_labs(ident: Identity) -> list[str]:
    return sorted(r.partition(":")[2] for r in ident.roles if r.startswith("reviewer:"))


@router.get("", response_class=HTMLResponse, include_in_schema=False)
def review_home(request: Request, sess: Session) -> HTMLResponse:
    """The signed-in reviewer's labs: jobs awaiting review and awaiting release."""
    queue = _queue(request)
    labs: list[str | None] = list(_reviewed_labs(sess.ident))
    if sess.ident.is_admin:
        labs = [None, *labs]
    if not labs:
        raise Forbidden("only reviewers of a lab (and admins) use the review pages")
    body = ""
    for lab in labs:
        body += f"<h2>{'All labs (admin)' if lab is None else 'Lab ' + e(lab)}</h2>"
        for state, label in (
            (State.AWAITING_REVIEW, "Awaiting review"),
            (State.AWAITING_RELEASE, "Awaiting release"),
        ):
            jobs, more = queue.list_jobs(lab=lab, state=state, limit=LIST_LIMIT)
            note = f" (the newest {LIST_LIMIT})" if more is not None else ""
            body += f"<h3>{label}{note}</h3>{_job_rows(request, jobs)}"
    return _page(request, "Review queue", body, sess=sess)


@router.get(
    "/jobs/{job_id}", response_class=HTMLResponse, name="review_job", include_in_schema=False
)
def review_job(job_id: int, request: Request, sess: Session) -> HTMLResponse:
    """One job for humans, with the forms its state allows."""
    queue = _queue(request)
    job = readable_job(queue, sess.ident, job_id)
    facts = [
        ["state", f'<span class="state">{e(job.state)}</span>'],
        ["lab", e(job.lab)],
        ["frontier", e(job.frontier)],
        ["submitter", e(job.submitter)],
        ["submitted", _when(job.created_at)],
        ["updated", _when(job.updated_at)],
        ["spec hash", f"<code>{e(job.spec_hash)}</code>"],
        ["analog result", _ref(job.analog_result_ref)],
        ["attempts", e(job.attempts)],
    ]
    if job.lease_holder:
        facts.append(["lease", f"{e(job.lease_holder)} until {_when(job.lease_expires_at)}"])
    if job.release_decision:
        facts.append(["release", f"{e(job.release_decision)}: {e(job.release_reason)}"])
    body = (
        _table(["", ""], facts)
        + _forms(request, sess, job)
        + "<h2>Spec</h2>"
        + _spec_section(queue, job)
        + "<h2>Vetting</h2>"
        + _vetting_section(queue, job)
        + "<h2>Reviews</h2>"
        + _reviews_section(queue.reviews(job.id))
        + _result_section(job)
        + "<h2>History</h2>"
        + _history_section(queue.history(job.id))
    )
    title = f"Job #{job.id}: {job.spec.get('method', '?')} on {job.frontier}"
    return _page(request, title, body, sess=sess)


def _redirect_to_job(request: Request, job_id: int) -> RedirectResponse:
    return RedirectResponse(f"{_base(request)}/jobs/{job_id}", status_code=303)


def _need_reviewer(queue: JobQueue, ident: Identity, job_id: int) -> Job:
    job = readable_job(queue, ident, job_id)
    if not ident.reviews(job.lab):
        raise Forbidden(f"only reviewers of lab {job.lab!r} may do this")
    return job


@router.post("/jobs/{job_id}/review", include_in_schema=False)
async def review_post(job_id: int, request: Request, sess: Session) -> Response:
    """Approve, reject or request changes (``decision``) with a ``comment``."""
    form = await _checked_form(request, sess)
    queue = _queue(request)

    def act() -> None:
        _need_reviewer(queue, sess.ident, job_id)
        queue.review(job_id, sess.ident.name, form.get("decision", ""), _text(form, "comment"))

    await run_in_threadpool(act)
    return _redirect_to_job(request, job_id)


@router.post("/jobs/{job_id}/release", include_in_schema=False)
async def release_post(job_id: int, request: Request, sess: Session) -> Response:
    """Release or withhold (``decision``) the posted result, with a ``reason``."""
    form = await _checked_form(request, sess)
    queue = _queue(request)

    def act() -> None:
        _need_reviewer(queue, sess.ident, job_id)
        queue.release(job_id, sess.ident.name, form.get("decision", ""), _text(form, "reason"))

    await run_in_threadpool(act)
    return _redirect_to_job(request, job_id)


def _login_form(request: Request, csrf: str, message: str = "") -> str:
    error = f'<p class="error">{e(message)}</p>' if message else ""
    return (
        f'{error}<form method="post" action="{e(_base(request))}/login">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{e(csrf)}">'
        '<p><label>Token <input type="password" name="token" autocomplete="off" required>'
        "</label></p><button>Sign in</button></form>"
    )


def _set_login_csrf(request: Request, response: Response, value: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        value,
        max_age=3600,
        path=_base(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request) -> HTMLResponse:
    """The sign-in form (it takes a queue token)."""
    csrf = secrets.token_urlsafe(32)
    response = _page(request, "Sign in", _login_form(request, csrf))
    _set_login_csrf(request, response, csrf)
    return response


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the token and keep it in the ``analoglab_token`` cookie; 401 when unknown."""
    form = await _form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("missing or invalid CSRF token: open the sign-in page again")
    token = form.get("token", "").strip()
    if not token or await identify(request.app.state.authenticator, token) is None:
        csrf = secrets.token_urlsafe(32)
        response: Response = _page(
            request, "Sign in", _login_form(request, csrf, "unknown token"), status=401
        )
        _set_login_csrf(request, response, csrf)
        return response
    response = RedirectResponse(_base(request), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_SECONDS,
        path=_base(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=_base(request))
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, sess: Session) -> Response:
    """Forget the cookie."""
    await _checked_form(request, sess)
    response = RedirectResponse(f"{_base(request)}/login", status_code=303)
    response.delete_cookie(COOKIE, path=_base(request))
    return response
