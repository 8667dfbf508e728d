"""The reviewers' pages: server-rendered HTML under ``/review``, usable without JavaScript.

``GET /review`` lists the signed-in reviewer's labs' jobs awaiting review and awaiting release;
``GET /review/jobs/{id}`` shows one job for humans (the spec's method, data sizes and layers,
its vetting under the current policy, reviews, the audit history, the analog result it checks,
and the posted result once there is one) with the forms to decide on it. The forms post to
``/review/jobs/{id}/review`` (approve, reject or request changes, with a comment) and
``/review/jobs/{id}/release`` (release or withhold, with a reason), then redirect (303) back.
The pages are Jinja2 templates (``queue/templates/``) rendered with autoescape; control and
bidi characters in anything a user wrote are shown as visible ``U+XXXX`` marks, so that a
right-to-left override cannot disguise a name.

Sign-in. Where the service runs as a JupyterHub service with an OAuth client
(:func:`~.hubauth.hub_sign_in`), a browser without a session is sent to the hub's OAuth
authorize URL; the hub sends it back to ``<prefix>/oauth_callback`` with a code, exchanged
(with PKCE, the OAuth state checked against a signed, short-lived cookie) for the user's token,
whose identity and roles are resolved as for API tokens. Without a hub, ``/review/login`` takes
a pasted queue token instead. Either way the browser gets a session (:mod:`.sessions`): the
``analoglab_session`` cookie holds a signed random id, never a token; it is HttpOnly,
``SameSite=Lax`` with the hub (its redirect back must carry the OAuth state cookie) and
``Strict`` without, ``Secure`` when the request came over https (uvicorn reads
``X-Forwarded-Proto`` from trusted proxies) or the hub's public URL (``JUPYTERHUB_PUBLIC_URL``)
is https, scoped to ``<prefix>/`` (the callback sees it too); ``POST /review/logout`` ends the
session in the database. Scripts and tests may also send ``Authorization: Bearer <token>``.
Every form carries a CSRF token, an HMAC of the session's id (or the bearer token) under the
app's secret (``app.state.page_secret``), checked on each POST (403 without a valid one); the
token form uses a double-submit cookie.

Only reviewers of a job's lab may act on it; they and admins may read its page. Anyone else
gets 404 for a job they could not see through the API, else 403. The pages call
:class:`~.jobs.JobQueue` operations only: what may happen to a job is decided there.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import unicodedata
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from analoglab.config import get_settings
from analoglab.errors import AnalogLabError
from analoglab.models.catalog import FrontierModel
from analoglab.queue.auth import Identity, identify, shown_safely
from analoglab.queue.errors import Forbidden, Invalid, NotAuthenticated, NotFound, QueueError
from analoglab.queue.hubauth import HubSignIn, hub_sign_in
from analoglab.queue.jobs import JobQueue
from analoglab.queue.models import Job
from analoglab.queue.service import can_see
from analoglab.queue.sessions import SessionStore, csrf_for
from analoglab.queue.states import State
from analoglab.queue.vetting import data_sizes, estimated_cost, layer_count

COOKIE = "analoglab_session"
STATE_COOKIE = "analoglab_oauth_state"
LOGIN_CSRF_COOKIE = "analoglab_login_csrf"
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024
MAX_TEXT = 10_000
MAX_SHOWN_RESULT = 100_000
LIST_LIMIT = 200
OAUTH_STATE_SECONDS = 600
CALLBACK = "/oauth_callback"
log = logging.getLogger(__name__)

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

#: Characters shown as a visible mark rather than as themselves: bidi controls (they reorder
#: what follows), zero-width characters, and C0/C1 controls other than tab and newline.
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_INVISIBLE = {0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF}


def _shown_as_mark(ch: str) -> bool:
    code = ord(ch)
    if code in _BIDI or code in _INVISIBLE:
        return True
    return ch not in "\n\t" and unicodedata.category(ch) == "Cc"


def visible(value: object) -> object:
    """``value`` for a template: None as nothing; in text, control, bidi and zero-width
    characters as a visible ``U+XXXX`` mark (escaped HTML); markup and other values as they
    are (autoescape escapes them)."""
    if value is None:
        return ""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    if not any(_shown_as_mark(ch) for ch in value):
        return value
    parts = [
        Markup('<span class="ctl">U+{:04X}</span>').format(ord(ch))
        if _shown_as_mark(ch)
        else escape(ch)
        for ch in value
    ]
    return Markup("").join(parts)


templates = Environment(
    loader=PackageLoader("analoglab.queue", "templates"),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    finalize=visible,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["tojson_text"] = lambda value: json.dumps(value, sort_keys=True)


# -- sessions and CSRF ------------------------------------------------------------------------


@dataclass(frozen=True)
class PageSession:
    """The signed-in caller of a page, and the key of its forms' CSRF tokens (the session's
    id for a browser session, the token for a bearer caller)."""

    ident: Identity
    csrf_key: str
    session_id: str | None = None


def csrf_token(secret: bytes, key: str) -> str:
    """The CSRF token of a session's forms: HMAC-SHA256 of its key under the app's secret."""
    return csrf_for(secret, key)


def _secret(request: Request) -> bytes:
    secret: bytes = request.app.state.page_secret
    return secret


def _prefix(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _base(request: Request) -> str:
    return _prefix(request) + "/review"


def _cookie_path(request: Request) -> str:
    """The service's prefix: the pages and the OAuth callback (the API ignores the cookies)."""
    return _prefix(request) + "/"


def _https(request: Request) -> bool:
    """Whether browsers reach the pages over TLS: the request came over https (uvicorn reads
    ``X-Forwarded-Proto`` from trusted proxies), or the hub's public URL is https (TLS ended
    before the hub's proxy, which then forwards plain http)."""
    public = os.environ.get("JUPYTERHUB_PUBLIC_URL", "")
    return request.url.scheme == "https" or public.startswith("https://")


def _sessions(request: Request) -> SessionStore:
    """The app's session store, made on first use (lifetime: the ``queue_session_seconds``
    setting of ``app.state.settings``, else of the environment)."""
    state = request.app.state
    store: SessionStore | None = getattr(state, "page_sessions", None)
    if store is None:
        settings = getattr(state, "settings", None) or get_settings()
        queue: JobQueue = state.queue
        store = SessionStore(
            queue.engine,
            _secret(request),
            seconds=settings.queue_session_seconds,
            clock=queue.clock,
        )
        state.page_sessions = store
    return store


def _sign_in(request: Request) -> HubSignIn | None:
    """The hub's OAuth sign-in where the service has one (decided once per app)."""
    state = request.app.state
    if not hasattr(state, "hub_sign_in"):
        state.hub_sign_in = hub_sign_in(state.authenticator)
        expected = _prefix(request) + CALLBACK
        if state.hub_sign_in is not None and state.hub_sign_in.callback_path != expected:
            log.warning(
                "the hub sends browsers back to %s, but the review pages' OAuth callback is %s: "
                "set the service's oauth_redirect_uri to it",
                state.hub_sign_in.callback_path,
                expected,
            )
    found: HubSignIn | None = state.hub_sign_in
    return found


async def page_session(request: Request) -> PageSession:
    """The caller, from ``Authorization: Bearer`` or the session cookie; 401 otherwise."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("send the token as 'Authorization: Bearer <token>'")
        token = token.strip()
        ident = await identify(request.app.state.authenticator, token)
        if ident is None:
            raise NotAuthenticated("unknown token")
        return PageSession(ident=ident, csrf_key=token)
    cookie = request.cookies.get(COOKIE, "")
    store = _sessions(request)
    session_id = store.session_id(cookie) if cookie else None
    found = await run_in_threadpool(store.identity, session_id) if session_id else None
    if session_id is None or found is None:
        raise NotAuthenticated("not signed in" if not cookie else "the session has ended")
    return PageSession(ident=found, csrf_key=session_id, session_id=session_id)


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
    expected = csrf_token(_secret(request), sess.csrf_key)
    if not hmac.compare_digest(form.get(CSRF_FIELD, "").encode(), expected.encode()):
        raise Forbidden("missing or invalid CSRF token: reload the page and try again")
    return form


def _text(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").replace("\r\n", "\n")
    if len(value) > MAX_TEXT:
        raise Invalid(f"{name} is over {MAX_TEXT} characters")
    return value


# -- rendering --------------------------------------------------------------------------------


def render(
    request: Request,
    template: str,
    title: str,
    *,
    sess: PageSession | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page from ``template`` with the common context (title, base URL, signed-in user)."""

    def csrf_input() -> Markup:
        if sess is None:
            return Markup("")
        token = csrf_token(_secret(request), sess.csrf_key)
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token)

    html = templates.get_template(template).render(
        title=title, base=_base(request), sess=sess, csrf_input=csrf_input, **context
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def spec_view(queue: JobQueue, job: Job) -> dict[str, Any]:
    """What the page shows of a job's spec: rows of (label, text), or why it does not
    validate, and its JSON."""
    from analoglab.experiments.spec import parse_spec

    view: dict[str, Any] = {"json": json.dumps(job.spec, indent=2, sort_keys=True)}
    try:
        spec = parse_spec(job.spec)
    except AnalogLabError as exc:
        return view | {"error": str(exc), "rows": []}
    rows: list[tuple[str, object]] = [
        ("method", spec.method),
        ("name", spec.name or ""),
        ("description", spec.description),
    ]
    for field, n in data_sizes(spec).items():
        kind = getattr(getattr(spec, field), "kind", "")
        rows.append((f"data: {field}", f"{n} ({kind})"))
    try:
        frontier: FrontierModel | None = queue.frontier(job.frontier)
    except QueueError:
        frontier = None
    layers = getattr(spec, "layers", None)
    if layers is not None:
        n_layers = layer_count(spec, frontier) if frontier is not None else "?"
        chosen = (
            f"depths {layers.depths}"
            if layers.depths is not None
            else f"indices {layers.indices}"
            if layers.indices is not None
            else "every block"
        )
        rows.append(("layers", f"{chosen} ({n_layers} in all)"))
    scales = getattr(spec, "scales", None)
    if scales is not None:
        rows.append(("scales", scales))
    rows.append(("max tokens per prompt", spec.max_tokens_per_prompt))
    if frontier is not None:
        rows.append(("estimated cost", estimated_cost(spec, frontier)))
    return view | {"error": None, "rows": rows}


def vetting_view(queue: JobQueue, job: Job) -> dict[str, Any]:
    try:
        return {"error": None, "findings": queue.findings(job)}
    except QueueError as exc:
        return {"error": str(exc), "findings": []}


def result_text(job: Job) -> str | None:
    """The posted result as JSON for the page, cut at :data:`MAX_SHOWN_RESULT` characters."""
    if job.result is None:
        return None
    text = json.dumps(job.result, indent=2, sort_keys=True)
    if len(text) > MAX_SHOWN_RESULT:
        return text[:MAX_SHOWN_RESULT] + "\n… (cut; read it from the API)"
    return text


def _form_kind(sess: PageSession, job: Job) -> str | None:
    if not sess.ident.reviews(job.lab):
        return None
    if job.state == State.AWAITING_REVIEW:
        return "review"
    if job.state == State.AWAITING_RELEASE:
        return "release"
    return None


# -- routes -----------------------------------------------------------------------------------


def _cookie_args(request: Request, path: str, max_age: int) -> dict[str, Any]:
    """HttpOnly; Secure over https; ``SameSite=Lax`` where the hub signs users in (its
    redirect back must carry the cookies), else ``Strict``."""
    return {
        "max_age": max_age,
        "path": path,
        "httponly": True,
        "samesite": "lax" if _sign_in(request) is not None else "strict",
        "secure": _https(request),
    }


def _state_serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(request), salt="analoglab-oauth-state")


def _safe_next(request: Request, target: str | None) -> str:
    """Where to go after signing in: a page of this service, else the review queue."""
    base = _base(request)
    if target and target.startswith(base) and not target.startswith("//") and "\\" not in target:
        return target
    return base


def start_oauth(request: Request, sign_in: HubSignIn, next_url: str | None) -> Response:
    """Send the browser to the hub's authorize URL; the state (with the PKCE verifier and
    where to go next) rides in a signed cookie for the callback to check."""
    verifier, challenge = sign_in.pkce()
    state = secrets.token_urlsafe(24)
    payload = {"state": state, "verifier": verifier, "next": _safe_next(request, next_url)}
    response = RedirectResponse(sign_in.authorize_url(state, challenge), status_code=302)
    response.set_cookie(
        STATE_COOKIE,
        _state_serializer(request).dumps(payload),
        **_cookie_args(request, _cookie_path(request), OAUTH_STATE_SECONDS),
    )
    response.headers.update(_HEADERS)
    return response


class PageRoute(APIRoute):
    """Turns a queue error in a page into an HTML page with its status (not JSON); a browser
    without a session is sent to the hub's sign-in where there is one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except QueueError as exc:
                sign_in = _sign_in(request) if exc.status == 401 else None
                browser = "authorization" not in request.headers
                if sign_in is not None and browser and request.method == "GET":
                    target = request.url.path
                    if request.url.query:
                        target += "?" + request.url.query
                    return start_oauth(request, sign_in, target)
                again = exc.status == 401 or request.url.path.endswith(CALLBACK)
                link = f"{_base(request)}/login" if again else None
                return render(
                    request,
                    "error.html",
                    f"Error {exc.status}",
                    status=exc.status,
                    message=str(exc),
                    sign_in=link,
                )

        return route


router = APIRouter(route_class=PageRoute, tags=["review pages"])


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


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
def review_home(request: Request, sess: Session) -> HTMLResponse:
    """The signed-in reviewer's labs: jobs awaiting review and awaiting release."""
    queue = _queue(request)
    labs: list[str | None] = list(_reviewed_labs(sess.ident))
    if sess.ident.is_admin:
        labs = [None, *labs]
    if not labs:
        raise Forbidden("only reviewers of a lab (and admins) use the review pages")
    shown = []
    for lab in labs:
        groups = []
        for state, label in (
            (State.AWAITING_REVIEW, "Awaiting review"),
            (State.AWAITING_RELEASE, "Awaiting release"),
        ):
            jobs, more = queue.list_jobs(lab=lab, state=state, limit=LIST_LIMIT)
            groups.append({"label": label, "jobs": jobs, "more": more is not None})
        shown.append({"name": lab, "groups": groups})
    return render(request, "home.html", "Review queue", sess=sess, labs=shown, limit=LIST_LIMIT)


@router.get(
    "/review/jobs/{job_id}",
    response_class=HTMLResponse,
    name="review_job",
    include_in_schema=False,
)
def review_job(job_id: int, request: Request, sess: Session) -> HTMLResponse:
    """One job for humans, with the forms its state allows."""
    queue = _queue(request)
    job = readable_job(queue, sess.ident, job_id)
    return render(
        request,
        "job.html",
        f"Job #{job.id}: {job.spec.get('method', '?')} on {job.frontier}",
        sess=sess,
        job=job,
        form=_form_kind(sess, job),
        spec=spec_view(queue, job),
        vetting=vetting_view(queue, job),
        reviews=queue.reviews(job.id),
        place=queue.place(job),
        result=result_text(job),
        history=queue.history(job.id),
    )


def _redirect_to_job(request: Request, job_id: int) -> RedirectResponse:
    return RedirectResponse(f"{_base(request)}/jobs/{job_id}", status_code=303)


def _need_reviewer(queue: JobQueue, ident: Identity, job_id: int) -> Job:
    job = readable_job(queue, ident, job_id)
    if not ident.reviews(job.lab):
        raise Forbidden(f"only reviewers of lab {job.lab!r} may do this")
    return job


@router.post("/review/jobs/{job_id}/review", include_in_schema=False)
async def review_post(job_id: int, request: Request, sess: Session) -> Response:
    """Approve, reject or request changes (``decision``) with a ``comment``."""
    form = await _checked_form(request, sess)
    queue = _queue(request)

    def act() -> None:
        _need_reviewer(queue, sess.ident, job_id)
        queue.review(job_id, sess.ident.name, form.get("decision", ""), _text(form, "comment"))

    await run_in_threadpool(act)
    return _redirect_to_job(request, job_id)


@router.post("/review/jobs/{job_id}/release", include_in_schema=False)
async def release_post(job_id: int, request: Request, sess: Session) -> Response:
    """Release or withhold (``decision``) the posted result, with a ``reason``."""
    form = await _checked_form(request, sess)
    queue = _queue(request)

    def act() -> None:
        _need_reviewer(queue, sess.ident, job_id)
        queue.release(job_id, sess.ident.name, form.get("decision", ""), _text(form, "reason"))

    await run_in_threadpool(act)
    return _redirect_to_job(request, job_id)


# -- signing in and out -----------------------------------------------------------------------


def _set_login_csrf(request: Request, response: Response, value: str) -> None:
    response.set_cookie(LOGIN_CSRF_COOKIE, value, **_cookie_args(request, _base(request), 3600))


def _login_page(request: Request, message: str = "", status: int = 200) -> Response:
    csrf = secrets.token_urlsafe(32)
    response = render(
        request, "login.html", "Sign in", status=status, login_csrf=csrf, message=message
    )
    _set_login_csrf(request, response, csrf)
    return response


async def _signed_in(request: Request, ident: Identity, via: str, next_url: str) -> Response:
    """Start a session for ``ident`` and send the browser on with its cookie."""
    shown_safely(ident)  # a hub user signed in by OAuth has not passed through identify()
    store = _sessions(request)
    started = await run_in_threadpool(store.start, ident, via)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        COOKIE, started.cookie, **_cookie_args(request, _cookie_path(request), store.seconds)
    )
    return response


@router.get("/review/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str | None = None) -> Response:
    """Sign in: through the hub where there is one, else the form that takes a queue token."""
    sign_in = _sign_in(request)
    if sign_in is not None:
        return start_oauth(request, sign_in, next)
    return _login_page(request)


@router.post("/review/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the pasted token and start a session (401 when unknown); not where the hub signs
    users in."""
    if _sign_in(request) is not None:
        raise Forbidden("sign in through JupyterHub: open the review pages")
    form = await _form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("missing or invalid CSRF token: open the sign-in page again")
    token = form.get("token", "").strip()
    ident = await identify(request.app.state.authenticator, token) if token else None
    if ident is None:
        return _login_page(request, "unknown token", status=401)
    response = await _signed_in(request, ident, "token", _base(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=_base(request))
    return response


@router.get(CALLBACK, include_in_schema=False)
async def oauth_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    """Where the hub sends the browser back: check the OAuth state, exchange the code for the
    user's token, resolve who it is and start a session."""
    sign_in = _sign_in(request)
    if sign_in is None:
        raise NotFound("this queue does not sign users in through JupyterHub")
    if error:
        raise Invalid(f"JupyterHub did not sign you in: {error_description or error}")
    if not code or not state:
        raise Invalid("the OAuth callback needs a code and a state: sign in again")
    try:
        saved: dict[str, str] = _state_serializer(request).loads(
            request.cookies.get(STATE_COOKIE, ""), max_age=OAUTH_STATE_SECONDS
        )
    except BadSignature:
        saved = {}
    if not saved or not hmac.compare_digest(str(saved.get("state", "")), state):
        # a second tab's older sign-in, finished after a newer one: already signed in is fine
        cookie = request.cookies.get(COOKIE, "")
        store = _sessions(request)
        session_id = store.session_id(cookie) if cookie else None
        if session_id and await run_in_threadpool(store.identity, session_id) is not None:
            return RedirectResponse(_base(request), status_code=303)
        raise Forbidden("the OAuth state does not match this browser's: sign in again")
    token = await sign_in.token_for_code(code, str(saved["verifier"]))
    ident = await sign_in.identity(token)
    if ident is None:
        raise Forbidden("JupyterHub did not say who you are: sign in again")
    response = await _signed_in(request, ident, "hub", _safe_next(request, saved.get("next")))
    response.delete_cookie(STATE_COOKIE, path=_cookie_path(request))
    return response


@router.post("/review/logout", include_in_schema=False)
async def logout(request: Request, sess: Session) -> Response:
    """End the session: its cookie signs no one in any more."""
    await _checked_form(request, sess)
    if sess.session_id is not None:
        await run_in_threadpool(_sessions(request).end, sess.session_id)
    response = RedirectResponse(f"{_base(request)}/signed-out", status_code=303)
    response.delete_cookie(COOKIE, path=_cookie_path(request))
    return response


@router.get("/review/signed-out", response_class=HTMLResponse, include_in_schema=False)
def signed_out(request: Request) -> HTMLResponse:
    """Said after signing out (signing in again is a click away, not automatic)."""
    sign_in = _sign_in(request)
    hub_logout = None
    if sign_in is not None:
        hub_logout = str(sign_in.oauth.hub_host) + str(sign_in.oauth.hub_prefix) + "logout"
    return render(
        request,
        "signed_out.html",
        "Signed out",
        again=f"{_base(request)}/login?next={quote(_base(request))}",
        hub_logout=hub_logout,
    )
