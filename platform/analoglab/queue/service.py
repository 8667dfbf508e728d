"""The gated queue's REST service: a FastAPI app over :class:`~.jobs.JobQueue`.

This module owns HTTP: routes, request and response shapes, authorisation (who may call
what, from :class:`~.auth.Identity` roles) and turning errors into ``{"detail": reason}``
with a 4xx status. The queue's logic lives in :mod:`.jobs`. ``create_app`` migrates the
database to the newest schema, then serves; an expired-lease sweep runs on every claim and
every ``sweep_seconds``. OpenAPI is at ``/openapi.json`` and ``/docs``. The reviewers' HTML
pages (:mod:`.pages`) are mounted under ``/review``. Callers are authenticated by static tokens
(:mod:`.auth`), chained with JupyterHub's where configured (:mod:`.hubauth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from analoglab import __version__
from analoglab.config import Settings, get_settings
from analoglab.errors import ModelNotFoundError
from analoglab.experiments.spec import METHODS
from analoglab.models.card import NAME_PATTERN
from analoglab.models.catalog import Catalog, FrontierModel, FrontierPolicy
from analoglab.queue import fairshare
from analoglab.queue.auth import (
    AnyAuthenticator,
    Identity,
    StaticTokens,
    aclose,
    identify,
    load_tokens,
)
from analoglab.queue.bounds import MAX_ID, BodyLimit, FiniteJSON, Name, Text
from analoglab.queue.db import default_url, make_engine
from analoglab.queue.errors import Forbidden, NotAuthenticated, NotFound, QueueError
from analoglab.queue.evidence import AuditReport, VerifyIn
from analoglab.queue.evidence import verify as verify_evidence
from analoglab.queue.head import HeadError, Notary, SignedHead
from analoglab.queue.jobs import (
    MAX_CLAIM,
    CatalogFrontiers,
    JobQueue,
    QueueSettings,
    ResultPost,
)
from analoglab.queue.migrate import upgrade
from analoglab.queue.models import Job, Review, utcnow
from analoglab.queue.states import State

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
CLAIM_POLL_SECONDS = 0.25

# -- shapes -----------------------------------------------------------------------------------

JobId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a job's id")]
Cursor = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="the next_cursor of the previous page")
]
LabName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="a lab's id")]
FrontierName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="a frontier's id")]


class ErrorOut(BaseModel):
    """Every error's body: ``detail`` says why, in words; a failed vetting adds ``findings``
    and a malformed request ``errors`` (each field's problem)."""

    detail: str
    findings: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] | None = None


_WHY = {
    401: "no token, or a token the queue does not know",
    403: "the caller's roles do not allow this (or a job's submitter reviewing it)",
    404: "no such job, frontier or lab (or not one the caller may see)",
    409: "the job is not in a state for this, or the caller's lease is not the current one",
    413: "the request body is over the queue's size limit",
    422: "the request is malformed or its content is refused",
    503: "the database or JupyterHub does not answer: retry shortly",
}
_AUTHED = (401, 403, 422, 503)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route for OpenAPI: the ones every signed-in route may give,
    and ``codes``."""
    return {c: {"model": ErrorOut, "description": _WHY[c]} for c in sorted({*_AUTHED, *codes})}


class _In(BaseModel):
    """A request body: unknown fields refused, no coercion (``true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class PolicyIn(FrontierPolicy):
    """A frontier's policy as a lab admin sends it: caps not negative, methods known."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    @model_validator(mode="after")
    def _bounded(self) -> PolicyIn:
        for name, value in self.model_dump().items():
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{name} must not be negative")
        unknown = sorted(set(self.allowed_methods) - set(METHODS))
        if unknown:
            raise ValueError(
                f"unknown methods {', '.join(unknown)}: methods are {', '.join(METHODS)}"
            )
        return self


class ReviewOut(BaseModel):
    reviewer: str
    decision: str
    comment: str
    created_at: dt.datetime


class PlaceOut(BaseModel):
    """Where an approved job stands in line for its frontier (fair-share order)."""

    position: int = Field(description="1: the next job the frontier's lab site claims")
    waiting: int = Field(description="approved jobs waiting for this frontier")
    seconds_per_job: float | None = Field(
        description="the site's recent pace: mean claim-to-result time of its last jobs "
        "(null until a job has finished on this frontier)"
    )
    agents: int = Field(description="agents that ran those jobs (jobs run side by side)")
    estimated_start: dt.datetime | None
    estimated_finish: dt.datetime | None


class JobOut(BaseModel):
    id: int
    state: State
    frontier: str
    lab: str
    submitter: str
    spec_hash: str
    spec: dict[str, Any]
    analog_result_ref: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int
    attempts: int
    lease_holder: str | None
    lease_expires_at: dt.datetime | None
    result_size: int | None
    release_decision: str | None
    release_reason: str | None
    reviews: list[ReviewOut] = Field(default_factory=list)
    place: PlaceOut | None = Field(
        None,
        description="for an approved job read by itself: its place in line and estimated "
        "start and finish; null otherwise",
    )


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: int | None = Field(None, description="pass as ?cursor= for the next page")


class SubmitIn(_In):
    frontier: str = Field(pattern=NAME_PATTERN, description="id of the target frontier model")
    spec: FiniteJSON = Field(description="an ExperimentSpec")
    analog_result_ref: Name | None = Field(
        None, max_length=500, description="link to the analog run this checks (MLflow run)"
    )


class ResubmitIn(_In):
    spec: FiniteJSON = Field(description="the new ExperimentSpec")


class ReviewIn(_In):
    decision: Literal["approve", "reject", "request_changes"]
    comment: Text = Field("", max_length=10_000)


class ReleaseIn(_In):
    decision: Literal["release", "withhold"]
    reason: Text = Field("", max_length=10_000)


class ClaimOut(BaseModel):
    job: JobOut
    lease_id: str
    lease_expires_at: dt.datetime


LeaseId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="the lease id the claim answered with (the agent's proof it holds the job)",
    ),
]


class ClaimIn(_In):
    lease_id: str | None = Field(
        None,
        description="chosen by the agent (32 to 64 characters of [A-Za-z0-9_-]): a retried "
        "claim with the same id returns the same job (idempotent)",
    )


class ClaimsIn(_In):
    lease_ids: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None,
        max_length=MAX_CLAIM,
        description="one per job asked for (`count`), chosen by the agent (each 32 to 64 "
        "characters of [A-Za-z0-9_-]): a retried claim with the same ids returns the jobs "
        "the first took and takes no more (idempotent)",
    )


class ClaimsOut(BaseModel):
    claims: list[ClaimOut]


class ResultPostIn(_In):
    job_id: int = Field(ge=1, le=MAX_ID)
    lease_id: LeaseId
    result: FiniteJSON = Field(description="an ExperimentResult")
    signature: str | None = Field(None, max_length=200, description="as for one result")
    key_id: str | None = Field(None, max_length=32, description="as for one result")


class ResultsIn(_In):
    results: list[ResultPostIn] = Field(min_length=1, max_length=MAX_CLAIM)


class ResultAnswer(BaseModel):
    job_id: int
    status: int = Field(description="what posting this result alone would have answered")
    state: str | None = Field(None, description="the job's state after the post (status 200)")
    detail: str | None = Field(None, description="why the result was refused (status ≠ 200)")


class ResultsOut(BaseModel):
    answers: list[ResultAnswer]


class HeartbeatIn(_In):
    lease_id: LeaseId
    lease_seconds: StrictInt | None = Field(
        None,
        description="the lease's new length from now; omitted: the lease's current length "
        "(the seconds asked at the claim or at the last heartbeat)",
    )


class ResultIn(_In):
    lease_id: LeaseId
    result: FiniteJSON | None = Field(None, description="an ExperimentResult")
    withheld: Text | None = Field(
        None,
        min_length=1,
        max_length=2_000,
        description="instead of a result: why the lab's own release checks withheld it "
        "(the submitter reads it)",
    )
    signature: str | None = Field(
        None,
        max_length=200,
        description="the lab's Ed25519 signature (base64) over the result's canonical JSON",
    )
    key_id: str | None = Field(
        None, max_length=32, description="the id of the lab key that made the signature"
    )

    @model_validator(mode="after")
    def _one_of(self) -> ResultIn:
        if (self.result is None) == (self.withheld is None):
            raise ValueError("give either a result or the reason it was withheld, not both")
        return self


class GiveBackIn(_In):
    lease_id: LeaseId
    reason: Text = Field("", max_length=10_000)
    error: bool = Field(False, description="the run failed: count an attempt")


class ResultOut(BaseModel):
    job_id: int
    state: State
    result: dict[str, Any]
    size: int
    signature: str | None = Field(
        None, description="the lab's signature over the result's canonical JSON (base64)"
    )
    key_id: str | None = Field(None, description="the lab key that signed it")


class Health(BaseModel):
    status: str
    version: str


def job_out(
    job: Job, reviews: list[Review] | None = None, place: fairshare.Place | None = None
) -> JobOut:
    return JobOut(
        id=job.id,
        state=State(job.state),
        frontier=job.frontier,
        lab=job.lab,
        submitter=job.submitter,
        spec_hash=job.spec_hash,
        spec=job.spec,
        analog_result_ref=job.analog_result_ref,
        created_at=job.created_at,
        updated_at=job.updated_at,
        version=job.version,
        attempts=job.attempts,
        lease_holder=job.lease_holder,
        lease_expires_at=job.lease_expires_at,
        result_size=job.result_size,
        release_decision=job.release_decision,
        release_reason=job.release_reason,
        reviews=[
            ReviewOut(
                reviewer=r.reviewer, decision=r.decision, comment=r.comment, created_at=r.created_at
            )
            for r in reviews or []
        ],
        place=None if place is None else PlaceOut(**dataclasses.asdict(place)),
    )


# -- authorisation ----------------------------------------------------------------------------


def can_see(ident: Identity, job: Job) -> bool:
    return (
        ident.is_admin
        or job.submitter == ident.name
        or ident.reviews(job.lab)
        or ident.is_agent_of(job.lab)
    )


bearer = HTTPBearer(
    auto_error=False,
    description="a queue token (from the tokens file) or a JupyterHub API token",
)


async def current_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Identity:
    """The caller, from ``Authorization: Bearer <token>``; 401 without a known token (403 for a
    hub token without queue scopes, 503 when the hub does not answer)."""
    if credentials is None or not credentials.credentials.strip():
        if not request.headers.get("authorization"):
            raise NotAuthenticated("no token: send 'Authorization: Bearer <token>'")
        raise NotAuthenticated("send the token as 'Authorization: Bearer <token>'")
    ident = await identify(request.app.state.authenticator, credentials.credentials.strip())
    if ident is None:
        raise NotAuthenticated("unknown token")
    return ident


Caller = Annotated[Identity, Depends(current_identity)]


def _tokens(tokens: AnyAuthenticator | Mapping[str, Any] | str | Path | None) -> AnyAuthenticator:
    if tokens is None:
        return StaticTokens({})
    if isinstance(tokens, str | Path):
        return load_tokens(tokens)
    if isinstance(tokens, Mapping):
        return StaticTokens.from_mapping(tokens)
    return tokens


def create_app(
    database_url: str | None = None,
    settings: Settings | None = None,
    tokens: AnyAuthenticator | Mapping[str, Any] | str | Path | None = None,
    *,
    queue_settings: QueueSettings | None = None,
    frontiers: Callable[[str], FrontierModel] | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    migrate: bool = True,
    page_secret: bytes | None = None,
) -> FastAPI:
    """The queue service. ``tokens``: an authenticator (used as it is), or a
    ``{sha256: {name, roles}}`` mapping or a tokens TOML path, followed by JupyterHub's tokens
    where the settings say so (:func:`~.hubauth.with_hub_tokens`); ``database_url`` defaults to
    ``sqlite:///<home>/queue.db``; ``page_secret`` keys the review pages' CSRF tokens (default:
    the ``queue_page_secret`` setting, else random per process, so a restart asks open forms to
    be reloaded)."""
    from analoglab.queue.pages import router as pages_router

    settings = settings or get_settings()
    url = database_url or default_url(settings)
    if migrate:
        upgrade(url)
    engine = make_engine(url)
    queue = JobQueue(engine, frontiers or CatalogFrontiers(settings), queue_settings, clock)
    notary = Notary.for_settings(settings, url)  # signs the audit log's head after each commit

    def lab_public_key(lab: str) -> str | None:
        """The lab's public key in the catalog, what its results' signatures are checked by."""
        try:
            return Catalog.load(settings).lab(lab).public_key
        except ModelNotFoundError:
            return None

    notary.attach(queue.sessions)
    authenticator = _tokens(tokens)
    if tokens is None or isinstance(tokens, str | Path | Mapping):
        from analoglab.queue.hubauth import with_hub_tokens

        authenticator = with_hub_tokens(authenticator, settings)
    if page_secret is None and settings.queue_page_secret is not None:
        page_secret = settings.queue_page_secret.get_secret_value().encode()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(queue.settings.sweep_seconds)
                try:
                    await run_in_threadpool(queue.sweep)
                except Exception:  # keep sweeping; the next claim sweeps too
                    log.exception("lease sweep failed")

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await aclose(authenticator)
            notary.close()
            engine.dispose()

    app = FastAPI(
        title="Analog Lab gated queue",
        version=__version__,
        description="Experiments on private frontier models, from submission to released result.",
        lifespan=lifespan,
    )
    app.state.queue = queue
    app.add_middleware(BodyLimit, max_bytes=queue.settings.max_request_bytes)
    app.state.notary = notary
    app.state.authenticator = authenticator
    app.state.page_secret = page_secret or secrets.token_bytes(32)
    app.include_router(pages_router)

    # -- errors: always {"detail": reason}, bad input is never a 500 ---------------------------

    @app.exception_handler(QueueError)
    async def _queue_error(_request: Request, exc: QueueError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc.detail, dict):
            body.update({k: v for k, v in exc.detail.items() if k != "detail"})
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(jsonable_encoder(body), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        reasons = "; ".join(
            ".".join(str(p) for p in e["loc"]) + ": " + str(e["msg"]) for e in errors[:8]
        )
        return JSONResponse(
            {"detail": f"invalid request: {reasons}", "errors": errors}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": bytes, not JSON
            detail = f"invalid request: the body is not JSON in UTF-8 ({exc.detail})"
            return JSONResponse({"detail": detail}, status_code=422)
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(OperationalError)
    async def _db_error(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse(
            {"detail": "the queue's database is unavailable or busy; retry shortly"},
            status_code=503,
        )

    # -- who is calling ------------------------------------------------------------------------

    def visible_job(job_id: int, ident: Identity) -> Job:
        job = queue.get(job_id)
        if not can_see(ident, job):
            raise NotFound(f"no job {job_id}")  # others' jobs do not exist for you
        return job

    def full(job: Job) -> JobOut:
        return job_out(job, queue.reviews(job.id), queue.place(job))

    def need_reviewer(ident: Identity, lab: str) -> None:
        if not ident.reviews(lab):
            raise Forbidden(f"only reviewers of lab {lab!r} may do this")

    def need_agent(ident: Identity, lab: str) -> None:
        if not ident.is_agent_of(lab):
            raise Forbidden(f"only agents of lab {lab!r} may do this")

    # -- routes --------------------------------------------------------------------------------

    @app.get("/health", tags=["service"])
    def health() -> Health:
        return Health(status="ok", version=__version__)

    @app.post("/api/jobs", status_code=201, tags=["researcher"], responses=errors(404, 409, 413))
    def submit(
        body: SubmitIn,
        ident: Caller,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=200,
                pattern=r"^[\x20-\x7e]+$",
                description="a retried submit with the same key returns the first job",
            ),
        ] = None,
    ) -> JobOut:
        """Submit a spec to a frontier; it is vetted now (422 lists every reason it fails)."""
        if not ident.is_researcher:
            raise Forbidden("only researchers submit jobs")
        job = queue.submit(
            ident.name,
            body.frontier,
            body.spec,
            idempotency_key=idempotency_key,
            analog_result_ref=body.analog_result_ref,
            groups=ident.groups,
        )
        return full(job)

    @app.get("/api/jobs", tags=["researcher"], responses=errors())
    def list_jobs(
        ident: Caller,
        state: State | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Cursor = None,
    ) -> JobPage:
        """The caller's own jobs, newest first."""
        jobs, nxt = queue.list_jobs(submitter=ident.name, state=state, limit=limit, cursor=cursor)
        return JobPage(jobs=[job_out(j) for j in jobs], next_cursor=nxt)

    @app.get("/api/jobs/{job_id}", tags=["researcher"], responses=errors(404))
    def get_job(job_id: JobId, ident: Caller) -> JobOut:
        return full(visible_job(job_id, ident))

    @app.post("/api/jobs/{job_id}/cancel", tags=["researcher"], responses=errors(404, 409))
    def cancel(job_id: JobId, ident: Caller) -> JobOut:
        job = visible_job(job_id, ident)
        if job.submitter != ident.name:
            raise Forbidden("only the job's submitter may cancel it")
        return full(queue.cancel(job_id, ident.name))

    @app.post(
        "/api/jobs/{job_id}/resubmit", tags=["researcher"], responses=errors(404, 409, 413)
    )
    def resubmit(job_id: JobId, body: ResubmitIn, ident: Caller) -> JobOut:
        """A new spec after the reviewers requested changes; back to review."""
        job = visible_job(job_id, ident)
        if job.submitter != ident.name:
            raise Forbidden("only the job's submitter may resubmit it")
        return full(queue.resubmit(job_id, ident.name, body.spec))

    @app.get("/api/jobs/{job_id}/result", tags=["researcher"], responses=errors(404, 409))
    def get_result(job_id: JobId, ident: Caller) -> ResultOut:
        """The result: for the submitter once released; for the lab's reviewers once posted."""
        job = visible_job(job_id, ident)
        lab_side = ident.reviews(job.lab) or ident.is_admin
        if not lab_side and job.submitter != ident.name:
            raise Forbidden("only the submitter and the lab's reviewers read results")
        readable = {State.RELEASED} | (
            {State.AWAITING_RELEASE, State.WITHHELD} if lab_side else set()
        )
        if State(job.state) not in readable or job.result is None:
            raise QueueError(f"job {job_id} is {job.state}: no released result", status=409)
        return ResultOut(
            job_id=job.id,
            state=State(job.state),
            result=job.result,
            size=job.result_size or 0,
            signature=job.result_signature,
            key_id=job.result_key_id,
        )

    @app.get("/api/labs/{lab}/queue", tags=["reviewer"], responses=errors())
    def lab_queue(
        lab: LabName,
        ident: Caller,
        state: State | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Cursor = None,
    ) -> JobPage:
        """The lab's jobs, newest first (filter with ?state=awaiting_review)."""
        if not (ident.reviews(lab) or ident.is_admin):
            raise Forbidden(f"only reviewers of lab {lab!r} see its queue")
        jobs, nxt = queue.list_jobs(lab=lab, state=state, limit=limit, cursor=cursor)
        return JobPage(jobs=[job_out(j) for j in jobs], next_cursor=nxt)

    @app.post(
        "/api/jobs/{job_id}/review", tags=["reviewer"], responses=errors(404, 409, 413)
    )
    def review(job_id: JobId, body: ReviewIn, ident: Caller) -> JobOut:
        job = visible_job(job_id, ident)
        need_reviewer(ident, job.lab)
        return full(queue.review(job_id, ident.name, body.decision, body.comment))

    @app.post(
        "/api/jobs/{job_id}/release", tags=["reviewer"], responses=errors(404, 409, 413)
    )
    def release(job_id: JobId, body: ReleaseIn, ident: Caller) -> JobOut:
        job = visible_job(job_id, ident)
        need_reviewer(ident, job.lab)
        return full(queue.release(job_id, ident.name, body.decision, body.reason))

    @app.get("/api/frontiers/{frontier_id}/policy", tags=["reviewer"], responses=errors(404))
    def get_policy(frontier_id: FrontierName, ident: Caller) -> FrontierPolicy:
        """The effective policy (any signed-in user may read what a frontier allows)."""
        return queue.policy(frontier_id)

    @app.put(
        "/api/frontiers/{frontier_id}/policy", tags=["reviewer"], responses=errors(404, 413)
    )
    def put_policy(frontier_id: FrontierName, body: PolicyIn, ident: Caller) -> FrontierPolicy:
        """Replace the frontier's policy (fields left out take their defaults); audited."""
        frontier = queue.frontier(frontier_id)
        if not (ident.reviews(frontier.lab) or ident.is_admin):
            raise Forbidden(f"only admins of lab {frontier.lab!r} may change its policies")
        policy = FrontierPolicy.model_validate(body.model_dump())
        return queue.set_policy(frontier_id, policy, ident.name)

    @app.post(
        "/api/labs/{lab}/claim",
        tags=["agent"],
        responses={
            204: {"description": "no approved job within `wait` seconds"},
            **errors(409, 413),
        },
        response_model=ClaimOut,
    )
    async def claim(
        lab: LabName,
        ident: Caller,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0.0,
        lease_seconds: Annotated[int | None, Query(ge=1)] = None,
        frontier: Annotated[
            list[str] | None,
            Query(description="only jobs for these frontiers (the ones this site serves)"),
        ] = None,
        body: ClaimIn | None = None,
    ) -> ClaimOut | Response:
        """The next approved job of the lab under a lease; waits up to ``wait`` seconds. The
        lease id (chosen by the agent, or by the queue) travels in the body, never the URL."""
        need_agent(ident, lab)
        lease_ids = None if body is None or body.lease_id is None else [body.lease_id]
        jobs = await long_poll(lab, ident, 1, wait, lease_seconds, frontier, lease_ids)
        if not jobs:
            return Response(status_code=204)
        return (await run_in_threadpool(claims_of, jobs)).claims[0]

    async def long_poll(
        lab: str,
        ident: Identity,
        count: int,
        wait: float,
        lease_seconds: int | None,
        frontier: list[str] | None,
        lease_ids: list[str] | None,
    ) -> list[Job]:
        """Claim up to ``count`` jobs, polling until one comes or ``wait`` seconds pass."""
        deadline = time.monotonic() + wait
        while True:
            jobs = await run_in_threadpool(
                queue.claim_many, lab, ident.name, count, lease_seconds, frontier, lease_ids
            )
            if jobs or time.monotonic() >= deadline:
                return jobs
            await asyncio.sleep(min(CLAIM_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def claims_of(jobs: list[Job]) -> ClaimsOut:
        claims = []
        reviews = queue.reviews_of([job.id for job in jobs])  # one query, not one a job
        for job in jobs:
            assert job.lease_id is not None and job.lease_expires_at is not None
            expires = job.lease_expires_at
            out = job_out(job, reviews[job.id], queue.place(job))
            claims.append(ClaimOut(job=out, lease_id=job.lease_id, lease_expires_at=expires))
        return ClaimsOut(claims=claims)

    @app.post(
        "/api/labs/{lab}/claims",
        tags=["agent"],
        responses={
            204: {"description": "no approved job within `wait` seconds"},
            **errors(409, 413),
        },
        response_model=ClaimsOut,
    )
    async def claim_many(
        lab: LabName,
        ident: Caller,
        count: Annotated[int, Query(ge=1, le=MAX_CLAIM, description="jobs to take at most")] = 1,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0.0,
        lease_seconds: Annotated[int | None, Query(ge=1)] = None,
        frontier: Annotated[
            list[str] | None,
            Query(description="only jobs for these frontiers (the ones this site serves)"),
        ] = None,
        body: ClaimsIn | None = None,
    ) -> ClaimsOut | Response:
        """Up to ``count`` approved jobs of the lab in one call, each under its own lease: the
        jobs as many claims one after another would take, in that order. Waits up to
        ``wait`` seconds for the first; answers with those there are then."""
        need_agent(ident, lab)
        lease_ids = body.lease_ids if body is not None else None
        jobs = await long_poll(lab, ident, count, wait, lease_seconds, frontier, lease_ids)
        if not jobs:
            return Response(status_code=204)
        return await run_in_threadpool(claims_of, jobs)

    @app.post(
        "/api/jobs/{job_id}/heartbeat", tags=["agent"], responses=errors(404, 409, 413)
    )
    def heartbeat(job_id: JobId, body: HeartbeatIn, ident: Caller) -> JobOut:
        """Extend the lease; 409 when it was lost (stop working on the job)."""
        job = visible_job(job_id, ident)
        need_agent(ident, job.lab)
        return job_out(queue.heartbeat(job_id, body.lease_id, body.lease_seconds, ident.name))

    @app.post("/api/jobs/{job_id}/result", tags=["agent"], responses=errors(404, 409, 413))
    def post_result(job_id: JobId, body: ResultIn, ident: Caller) -> JobOut:
        """Post the ExperimentResult (or, with ``withheld``, why the lab's release checks kept
        it); the same result twice is stored once."""
        job = visible_job(job_id, ident)
        need_agent(ident, job.lab)
        if body.withheld is not None:
            return full(queue.withhold(job_id, body.lease_id, ident.name, body.withheld))
        assert body.result is not None
        return full(
            queue.post_result(
                job_id,
                body.lease_id,
                ident.name,
                body.result,
                signature=body.signature,
                key_id=body.key_id,
                public_key=lab_public_key(job.lab),
            )
        )

    @app.post("/api/labs/{lab}/results", tags=["agent"], responses=errors(413))
    def post_results(lab: LabName, body: ResultsIn, ident: Caller) -> ResultsOut:
        """Several results of the lab's jobs in one call, stored in one transaction: each is
        checked as ``POST /api/jobs/{id}/result`` checks it, and answered on its own (the
        status and reason that post would have had), so one refused result costs the others
        nothing."""
        need_agent(ident, lab)
        posts = [
            ResultPost(p.job_id, p.lease_id, p.result, p.signature, p.key_id)
            for p in body.results
        ]
        got = queue.post_results(lab, ident.name, posts, public_key=lab_public_key(lab))
        answers = []
        for post, answer in zip(posts, got, strict=True):
            if isinstance(answer, QueueError):
                answers.append(
                    ResultAnswer(job_id=post.job_id, status=answer.status, detail=str(answer))
                )
            else:
                answers.append(ResultAnswer(job_id=post.job_id, status=200, state=answer.state))
        return ResultsOut(answers=answers)

    @app.post(
        "/api/jobs/{job_id}/give-back", tags=["agent"], responses=errors(404, 409, 413)
    )
    def give_back(job_id: JobId, body: GiveBackIn, ident: Caller) -> JobOut:
        job = visible_job(job_id, ident)
        need_agent(ident, job.lab)
        return full(queue.give_back(job_id, body.lease_id, ident.name, body.reason, body.error))

    @app.get("/api/audit/verify", tags=["admin"], responses=errors())
    def verify_audit(ident: Caller) -> AuditReport:
        """Check the audit log as evidence (docs/audit.md): its chain, its replay against the
        jobs, reviews and results, and the hub's last signed head; every finding."""
        return verify_audit_against(VerifyIn(), ident)

    @app.post("/api/audit/verify", tags=["admin"], responses=errors(413))
    def verify_audit_against(body: VerifyIn, ident: Caller) -> AuditReport:
        """As ``GET``, and against a head published earlier, signed by the pinned key."""
        if not ident.is_admin:
            raise Forbidden("only admins verify the audit log")
        notary.flush()  # sign what was committed, then read the record
        with queue.sessions() as session:
            return verify_evidence(session, notary, body.head, body.public_key)

    @app.get("/api/audit/head", tags=["service"], responses=errors(409))
    def audit_head(ident: Caller) -> SignedHead:
        """The audit log's head signed by the hub (any signed-in caller): keep it elsewhere and
        pin its ``public_key``; 409 when the log does not extend the last signed head."""
        try:
            with queue.sessions() as session:
                return notary.sign(session)
        except HeadError as exc:
            raise QueueError(f"{exc}: run 'analoglab queue audit verify'", status=409) from None

    return app
