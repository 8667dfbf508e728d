"""``analoglab queue``: serve the gated queue, hash tokens, and talk to a running queue
(submit, list, show, review, release, ``audit head|verify``) with its client.

The queue never imports torch; neither does this module.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from analoglab.cli.common import (
    JsonFlag,
    err,
    handles_errors,
    out,
    print_json,
)
from analoglab.config import get_settings

queue_app = typer.Typer(help="The gated queue service.", no_args_is_help=True)


@queue_app.command("serve")
@handles_errors
def queue_serve(
    tokens: Annotated[
        Path | None, typer.Option("--tokens", help="Tokens TOML (hashed tokens and roles).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="SQLAlchemy URL; default: the queue_database_url setting "
            "(ANALOGLAB_QUEUE_DATABASE_URL: use it for a URL with a password, which ps would "
            "show here), else sqlite:///<home>/queue.db.",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Interface; default: JUPYTERHUB_SERVICE_URL's, else 127.0.0.1."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port; default: JUPYTERHUB_SERVICE_URL's, else 8765.")
    ] = None,
    root_path: Annotated[
        str | None,
        typer.Option(
            "--root-path",
            help="URL prefix a proxy forwards unchanged; default: JUPYTERHUB_SERVICE_PREFIX.",
        ),
    ] = None,
    hub_auth: Annotated[
        bool | None,
        typer.Option(
            "--hub-auth/--no-hub-auth",
            help="Accept JupyterHub tokens too; default: the queue_hub_auth setting, else on "
            "when JUPYTERHUB_API_TOKEN is set.",
        ),
    ] = None,
) -> None:
    """Run the queue service (migrates its database first).

    Static tokens from --tokens, and JupyterHub tokens when run as a hub service; the review
    pages' CSRF key is the queue_page_secret setting (ANALOGLAB_QUEUE_PAGE_SECRET)."""
    import uvicorn

    from analoglab.queue.hubauth import hub_auth_enabled, service_binding
    from analoglab.queue.service import create_app

    settings = get_settings() if hub_auth is None else get_settings(queue_hub_auth=hub_auth)
    if tokens is not None and not tokens.is_file():
        raise typer.BadParameter(f"no tokens file at {tokens}", param_hint="--tokens")
    if tokens is None and not hub_auth_enabled(settings):
        raise typer.BadParameter(
            "give a tokens file, or run as a JupyterHub service (JUPYTERHUB_API_TOKEN, "
            "or --hub-auth)",
            param_hint="--tokens",
        )
    application = create_app(database_url, settings, tokens)
    host, port, application.root_path = service_binding(host, port, root_path)
    uvicorn.run(application, host=host, port=port, log_level="info")


@queue_app.command("hash-token")
@handles_errors
def queue_hash_token(
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from-file",
            help="Read the token from this file; default: standard input (a prompt without "
            "echo on a terminal).",
        ),
    ] = None,
) -> None:
    """Print the sha256 of a token, as the tokens file stores it.

    Reads the token from stdin or --from-file, never from argv (ps shows argv to everyone)."""
    from analoglab.config import read_secret
    from analoglab.queue.auth import hash_token

    out.print(hash_token(read_secret(from_file or "-", what="the token")))


# The queue's client commands talk to a running service with QueueClient.

audit_app = typer.Typer(
    help="The queue's audit log: its signed head, and verifying it as evidence.",
    no_args_is_help=True,
)
queue_app.add_typer(audit_app, name="audit")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The queue service's URL; default: the queue_url setting."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Queue token (the process list shows it: prefer --token-file or the "
        "environment); default: --token-file, $JUPYTERHUB_API_TOKEN, $ANALOGLAB_QUEUE_TOKEN, "
        "then the file named by $ANALOGLAB_QUEUE_TOKEN_FILE.",
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file", help="Read the queue token from this file ('-': standard input)."
    ),
]
JobIdArg = Annotated[int, typer.Argument(help="The job's id.")]


def queue_client(url: str | None, token: str | None, token_file: Path | None = None) -> Any:
    import os

    from analoglab.config import read_secret
    from analoglab.errors import ConfigError
    from analoglab.queue.client import TOKEN_ENVS, QueueClient

    if token is None and token_file is not None:
        token = read_secret(token_file, what="the queue token")
    named = os.environ.get("ANALOGLAB_QUEUE_TOKEN_FILE")
    if token is None and named and not any(os.environ.get(e) for e in TOKEN_ENVS):
        token = read_secret(named, what="the queue token")

    url = url or get_settings().queue_url
    if not url:
        raise ConfigError(
            "no queue URL: pass --url or set queue_url (ANALOGLAB_QUEUE_URL or the config file)"
        )
    return QueueClient(url, token)


def _queue_call(call: Callable[[], Any]) -> Any:
    """Run a client call; a refusal becomes a one-line QueueError (handles_errors prints it)."""
    from analoglab.queue.errors import QueueError

    try:
        return call()
    except QueueError as exc:
        message = " ".join(str(exc).split())
        findings = exc.detail.get("findings") if isinstance(exc.detail, dict) else None
        if findings and all(isinstance(f, dict) for f in findings):
            codes = ", ".join(str(f.get("code")) for f in findings)
            message += f" [{codes}]"
        raise QueueError(message, status=exc.status, detail=exc.detail) from None


def _print_job_line(job: dict[str, Any]) -> None:
    out.print(
        f"job {job['id']}: {job['state']} ({escape(str(job['spec'].get('method', '?')))} "
        f"on {escape(job['frontier'])}, lab {escape(job['lab'])})"
    )


def place_text(place: dict[str, Any]) -> str:
    """An approved job's place in line, as one line: '2 of 5; starts in about 40 s (…)'."""
    text = f"{place['position']} of {place['waiting']} approved for this frontier"
    per_job = place.get("seconds_per_job")
    if per_job is None or not place.get("estimated_start"):
        return text + "; no estimate yet (no job has finished on this frontier recently)"
    start = dt.datetime.fromisoformat(str(place["estimated_start"]))
    finish = dt.datetime.fromisoformat(str(place["estimated_finish"]))
    now = dt.datetime.now(dt.UTC)
    wait = max(0.0, (start - now).total_seconds())
    return (
        text
        + f"; starts in about {_duration(wait)}, done by {finish:%H:%M:%S} UTC "
        + f"(the site's pace: {per_job:.1f} s a job, {place.get('agents', 1)} agent(s))"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_job(job: dict[str, Any]) -> None:
    spec = job["spec"]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", job["id"]),
        ("state", job["state"]),
        ("frontier", job["frontier"]),
        ("lab", job["lab"]),
        ("submitter", job["submitter"]),
        ("method", spec.get("method", "?")),
        ("description", spec.get("description") or ""),
        ("spec hash", job["spec_hash"]),
        ("analog result", job.get("analog_result_ref") or ""),
        ("submitted", job["created_at"]),
        ("updated", job["updated_at"]),
        ("attempts", job["attempts"]),
    ]
    if job.get("place"):
        rows.append(("in line", place_text(job["place"])))
    if job.get("release_decision"):
        rows.append(("release", f"{job['release_decision']}: {job.get('release_reason') or ''}"))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    out.print(table)
    for r in job.get("reviews", []):
        out.print(
            f"review by {escape(r['reviewer'])}: {escape(r['decision'])}"
            + (f" ({escape(r['comment'])})" if r.get("comment") else "")
        )


@queue_app.command("submit")
@handles_errors
def queue_submit(
    spec_file: Annotated[Path, typer.Argument(help="A YAML or JSON spec.")],
    frontier: Annotated[str, typer.Option("--frontier", help="The target frontier's id.")],
    analog_result: Annotated[
        str | None,
        typer.Option("--analog-result", help="The analog run this checks (an MLflow run ref)."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="A retry with the same key returns the same job."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a spec to a frontier's gated queue; it is vetted at once."""
    from analoglab.experiments.spec import load_spec, spec_to_dict

    spec = spec_to_dict(load_spec(spec_file))
    with queue_client(url, token, token_file) as client:
        job = _queue_call(
            lambda: client.submit(
                spec,
                frontier,
                idempotency_key=idempotency_key,
                analog_result_ref=analog_result,
            )
        )
    if as_json:
        print_json(job)
    else:
        _print_job_line(job)


@queue_app.command("list")
@handles_errors
def queue_list(
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    lab: Annotated[
        str | None,
        typer.Option("--lab", help="A lab's queue (reviewers, admins) instead of your own jobs."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="At most this many.")] = 50,
    cursor: Annotated[
        int | None,
        typer.Option("--cursor", help="Start after this job (the next page, as printed)."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Your jobs (or a lab's queue with --lab), newest first, a page at a time."""
    with queue_client(url, token, token_file) as client:
        if lab is not None:
            page = _queue_call(
                lambda: client.lab_queue(lab, state=state, limit=limit, cursor=cursor)
            )
        else:
            page = _queue_call(lambda: client.list(state=state, limit=limit, cursor=cursor))
    if as_json:
        print_json(page)
        return
    if not page["jobs"]:
        out.print("no jobs")
        return
    table = Table("id", "state", "method", "frontier", "submitter", "submitted")
    for job in page["jobs"]:
        table.add_row(
            str(job["id"]),
            job["state"],
            escape(str(job["spec"].get("method", "?"))),
            escape(job["frontier"]),
            escape(job["submitter"]),
            str(job["created_at"])[:19],
        )
    out.print(table)
    if page.get("next_cursor") is not None:
        parts = ["analoglab", "queue", "list"]
        for flag, value in (("--state", state), ("--lab", lab), ("--url", url)):
            if value is not None:
                parts += [flag, value]
        if limit != 50:
            parts += ["--limit", str(limit)]
        parts += ["--cursor", str(page["next_cursor"])]
        out.print(f"more: {escape(shlex.join(parts))}", soft_wrap=True)


@queue_app.command("show")
@handles_errors
def queue_show(
    job_id: JobIdArg,
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """One job: its state, spec and reviews."""
    with queue_client(url, token, token_file) as client:
        job = _queue_call(lambda: client.get(job_id))
    if as_json:
        print_json(job)
    else:
        _print_job(job)


@queue_app.command("review")
@handles_errors
def queue_review(
    job_id: JobIdArg,
    comment: Annotated[str, typer.Option("--comment", help="Why (the submitter reads it).")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve the job.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the job.")] = False,
    request_changes: Annotated[
        bool, typer.Option("--request-changes", help="Ask the submitter for another spec.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Decide on a job awaiting review (reviewers of its lab)."""
    chosen = [
        d
        for d, on in (
            ("approve", approve),
            ("reject", reject),
            ("request_changes", request_changes),
        )
        if on
    ]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --approve, --reject, --request-changes")
    with queue_client(url, token, token_file) as client:
        job = _queue_call(lambda: client.review(job_id, chosen[0], comment))
    if as_json:
        print_json(job)
    else:
        _print_job_line(job)


@queue_app.command("release")
@handles_errors
def queue_release(
    job_id: JobIdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")],
    release: Annotated[bool, typer.Option("--release", help="Release the result.")] = False,
    withhold: Annotated[bool, typer.Option("--withhold", help="Withhold the result.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Release or withhold a posted result (reviewers of the job's lab)."""
    if release == withhold:
        raise typer.BadParameter("give exactly one of --release, --withhold")
    decision = "release" if release else "withhold"
    with queue_client(url, token, token_file) as client:
        job = _queue_call(lambda: client.release(job_id, decision, reason))
    if as_json:
        print_json(job)
    else:
        _print_job_line(job)


@audit_app.command("head")
@handles_errors
def queue_audit_head(
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The audit log's head, signed by the hub (any signed-in user): publish it elsewhere, e.g.
    hourly 'analoglab queue audit head --json > published/head-$(date -u +%Y%m%dT%H%M).json'."""
    with queue_client(url, token, token_file) as client:
        head = _queue_call(client.audit_head)
    if as_json:
        print_json(head)
        return
    out.print(f"entry {head['seq']}  hash {head['hash']}")
    out.print(f"signed {escape(head['at'])} by key {escape(head['key_id'])}")
    out.print(f"public key {escape(head['public_key'])}")


HeadFileOption = Annotated[
    Path | None,
    typer.Option(
        "--head",
        help="A signed head published earlier (from 'audit head --json'): the log must still "
        "hold it, and its signature must verify.",
    ),
]
PublicKeyOption = Annotated[
    str | None,
    typer.Option(
        "--public-key",
        help="The hub's pinned public key (ed25519:<base64>): the head, and the hub, must sign "
        "with it.",
    ),
]


@audit_app.command("verify")
@handles_errors
def queue_audit_verify(
    url: UrlOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    head_file: HeadFileOption = None,
    public_key: PublicKeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Check the audit log as evidence (admin): its hash chain, its replay against the jobs,
    reviews and results, and the signed heads; one line per finding, exit 1 on any."""
    from analoglab.queue.head import HeadError, check_signature, read_head
    from analoglab.signing import parse_public_key

    if public_key is not None:
        parse_public_key(public_key.strip())  # a malformed key: one line, exit 1
        public_key = public_key.strip()
    published = read_head(head_file) if head_file is not None else None
    local: list[dict[str, Any]] = []
    if published is not None:
        try:  # checked here too: a hub is not trusted to vouch for its own head
            check_signature(published, public_key)
        except HeadError as exc:
            message = f"the published head: {exc}"
            local.append({"check": "published_head", "message": message, "seq": published.seq})
    head_data = published.model_dump() if published is not None else None
    with queue_client(url, token, token_file) as client:
        check = _queue_call(lambda: client.verify_audit(head_data, public_key))
    seen = {(f["check"], f["message"]) for f in check["findings"]}
    extra = [f for f in local if (f["check"], f["message"]) not in seen]
    check = {**check, "ok": check["ok"] and not extra, "findings": extra + check["findings"]}
    if as_json:
        print_json(check)
    elif check["ok"]:
        signed = check.get("head") or {}
        out.print(
            f"audit log ok: {check['entries']} entries, {check['jobs']} jobs; the chain, the "
            f"tables and the signed head (entry {signed.get('seq', 0)}) agree"
        )
    else:
        for finding in check["findings"]:
            err.print(escape(f"{finding['check']}: {finding['message']}"), soft_wrap=True)
        err.print(f"[red]audit log: {len(check['findings'])} finding(s)[/red]")
    if not check["ok"]:
        raise typer.Exit(1)
