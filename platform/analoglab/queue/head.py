"""Signed heads of the audit log: evidence of the log that lives outside the queue's database.

A *head* is the seq and hash of the log's newest entry (seq 0 and :data:`~.audit.GENESIS` for
an empty log). The hub signs it with an Ed25519 key kept in a PEM file outside the database
(default ``<home>/queue/audit-signing-key.pem``, mode 0600, created on first use), as::

    {"seq": N, "hash": "<hex>", "at": "<ISO time>", "key_id": "<16 hex>",
     "public_key": "ed25519:<base64>", "signature": "<base64>"}

The signature is over :func:`head_bytes`: a fixed context line and the canonical JSON of
``{"at", "hash", "seq"}``. Since each entry's hash covers every entry before it, a signed head
vouches for the whole log up to its seq: whoever holds one can show that the log still holds
that prefix, unchanged (:func:`log_problems`).

The :class:`Notary` is the hub's signer. Attached to the queue's sessions, it signs the head
(in a background thread) after every commit that appended audit entries, and keeps the last
signed head in a file next to the key, one per database (:func:`head_file`, written with
:func:`~analoglab.files.atomic_write`). It signs a new head only when the log *extends* the
last one (the same hash at the last signed seq, an intact chain after it), so a log rewritten
and re-chained in the database without the key is never signed (:func:`~.evidence.verify`
reports it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from analoglab import signing
from analoglab.config import Settings
from analoglab.files import atomic_write
from analoglab.queue import audit
from analoglab.queue.models import AuditEntry, utcnow

log = logging.getLogger(__name__)

#: The first line of every signed head's bytes: a signature over a head is never valid as a
#: signature over anything else a key of Analog Lab signs.
CONTEXT = b"analoglab audit head v1\n"
KEY_FILE = "audit-signing-key.pem"


class HeadError(signing.SignatureError):
    """A signed head cannot be read, or its signature does not hold."""


class SignedHead(BaseModel):
    """The newest entry of the audit log, signed by the hub."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0, lt=2**63, description="seq of the log's newest entry (0: empty)")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="that entry's hash")
    at: str = Field(max_length=64, description="when the hub signed it (ISO 8601, UTC)")
    key_id: str = Field(max_length=64, description="16 hex digits of sha256(public key)")
    public_key: str = Field(max_length=200, description="the hub's key, ed25519:<base64>")
    signature: str = Field(max_length=200, description="base64 Ed25519 signature of the head")


def key_path(settings: Settings) -> Path:
    """The hub's audit signing key: the ``queue_audit_key`` setting, else under home."""
    if settings.queue_audit_key is not None:
        return settings.queue_audit_key.expanduser()
    return settings.home.expanduser() / "queue" / KEY_FILE


def head_file(key: Path, database: str | None = None) -> Path:
    """Where the last signed head of ``database`` (its URL) is kept: next to the key,
    ``<key stem>.<12 hex digits of the URL's sha256>.head.json`` (the password left out)."""
    if database is None:
        return key.with_name(f"{key.stem}.head.json")
    shown = make_url(database).render_as_string(hide_password=True)
    return key.with_name(f"{key.stem}.{hashlib.sha256(shown.encode()).hexdigest()[:12]}.head.json")


def head_bytes(seq: int, hash_: str, at: str) -> bytes:
    """What a head's signature is over."""
    return CONTEXT + audit.canonical({"at": at, "hash": hash_, "seq": seq}).encode()


def sign_head(key: Ed25519PrivateKey, seq: int, hash_: str, at: dt.datetime) -> SignedHead:
    when = at.astimezone(dt.UTC).isoformat(timespec="microseconds")
    public = signing.public_key_text(key)
    return SignedHead(
        seq=seq,
        hash=hash_,
        at=when,
        key_id=signing.key_id(public),
        public_key=public,
        signature=signing.sign(key, head_bytes(seq, hash_, when)),
    )


def parse_head(data: Any) -> SignedHead:
    """A signed head from its JSON object; :class:`HeadError` saying what is wrong."""
    try:
        return SignedHead.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "head"
        raise HeadError(f"not a signed audit head: {where}: {first['msg']}") from None


def read_head(path: Path) -> SignedHead:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"no signed head at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadError(f"{path} is not a signed head's JSON: {exc}") from None
    return parse_head(data)


def check_signature(head: SignedHead, public_key: str | None = None) -> None:
    """Raise :class:`HeadError` unless ``head`` is signed by ``public_key`` (when given, the
    pinned key) or else by the key it names."""
    try:
        named = signing.public_key_text(signing.parse_public_key(head.public_key))
        if public_key is not None:
            pinned = signing.public_key_text(signing.parse_public_key(public_key))
            if pinned != named:
                raise HeadError(
                    f"the head is signed by key {signing.key_id(named)}, "
                    f"not the pinned key {signing.key_id(pinned)}"
                )
        if head.key_id != signing.key_id(named):
            raise HeadError(f"the head's key_id {head.key_id} is not its public key's")
        signing.verify(named, head_bytes(head.seq, head.hash, head.at), head.signature)
    except HeadError:
        raise
    except signing.SignatureError as exc:
        raise HeadError(f"the head's signature does not hold: {exc}") from None


def log_problems(session: Session, head: SignedHead) -> list[str]:
    """Why the log in ``session`` does not hold the prefix ``head`` vouches for (empty: it
    does). The chain's own integrity is :func:`~.audit.verify`'s."""
    newest = audit.head(session)
    last_seq = newest.seq if newest else 0
    if head.seq == 0:
        return [] if head.hash == audit.GENESIS else ["a head of seq 0 must have the genesis hash"]
    if last_seq < head.seq:
        what = "is empty" if newest is None else f"ends at entry {last_seq}"
        return [
            f"the log {what}, but a signed head vouches for entry {head.seq}: "
            "entries were removed (truncated)"
        ]
    entry = session.get(AuditEntry, head.seq)
    if entry is None:
        return [f"entry {head.seq}, which a signed head vouches for, is missing"]
    if entry.hash != head.hash:
        return [
            f"entry {head.seq} has hash {entry.hash[:16]}…, the signed head says "
            f"{head.hash[:16]}…: the log was rewritten"
        ]
    return []


def _extension_problems(session: Session, last: SignedHead) -> list[str]:
    """Why the log does not extend ``last`` (the prefix differs, or the chain after it breaks)."""
    problems = log_problems(session, last)
    if problems:
        return problems
    prev = last.hash
    stmt = select(AuditEntry).where(AuditEntry.seq > last.seq).order_by(AuditEntry.seq)
    for n, entry in enumerate(session.execute(stmt).scalars(), start=last.seq + 1):
        if entry.seq != n or entry.prev_hash != prev:
            return [f"the chain breaks at entry {n}, after the last signed head"]
        if entry.hash != audit.entry_hash(prev, audit.payload_of(entry)):
            return [f"entry {entry.seq} does not hash to its hash"]
        prev = entry.hash
    return []


class Notary:
    """The hub's signer of audit heads; the last one it signed is kept beside its key."""

    def __init__(self, key: Path, database: str | None = None, clock: Any = utcnow) -> None:
        self.key_path = Path(key)
        self.head_path = head_file(self.key_path, database)
        created = not self.key_path.exists()
        self._key = signing.load_or_create_private_key(self.key_path)
        self.public_key = signing.public_key_text(self._key)
        self.key_id = signing.key_id(self.public_key)
        self._clock = clock
        self._lock = threading.Lock()  # held while signing
        self._wake = threading.Event()
        self._closed = False
        self._sessions: sessionmaker[Session] | None = None
        self._signed: SignedHead | None = None  # the last head signed or read, under _lock
        # (prev_hash, hash) by seq of entries committed in this process, not yet signed.
        self._seen: dict[int, tuple[str, str]] = {}
        self._seen_lock = threading.Lock()
        # A new key starts its record now; an old key without its record lost it (see last()).
        self._fresh = created and not self.head_path.exists()

    @classmethod
    def for_settings(cls, settings: Settings, database: str | None = None) -> Notary:
        return cls(key_path(settings), database)

    def last(self, session: Session | None = None) -> SignedHead | None:
        """The last head this hub signed; None before the first. :class:`HeadError` when the
        record is unreadable or not signed by this key, or (given the ``session``) when it is
        gone although the key is not new and the log is not empty: it was removed."""
        if not self.head_path.exists():
            if self._fresh or session is None or audit.head(session) is None:
                return None
            raise HeadError(
                f"the record of signed heads {self.head_path} is missing, though the key "
                f"{self.key_path} is not new and the log is not empty: it was removed"
            )
        head = read_head(self.head_path)
        check_signature(head, self.public_key)
        return head

    def _write(self, seq: int, hash_: str) -> SignedHead:
        head = sign_head(self._key, seq, hash_, self._clock())
        atomic_write(self.head_path, head.model_dump_json(indent=1).encode() + b"\n", perms=0o644)
        self._fresh = False
        self._signed = head
        with self._seen_lock:
            for done in [k for k in self._seen if k <= seq]:
                del self._seen[done]
        return head

    def sign(self, session: Session) -> SignedHead:
        """Sign the log's head in ``session`` and keep it; :class:`HeadError` (nothing signed)
        when the log does not extend the last signed head."""
        with self._lock:
            return self._sign(session)

    def _sign(self, session: Session) -> SignedHead:
        last = self.last(session)
        newest = audit.head(session)
        seq, hash_ = (newest.seq, newest.hash) if newest else (0, audit.GENESIS)
        if last is not None:
            problems = _extension_problems(session, last)
            if problems:
                raise HeadError(
                    "the audit log does not extend the last signed head "
                    f"(entry {last.seq}): {problems[0]}; not signing it"
                )
            if last.seq == seq:
                self._signed = last
                return last
        return self._write(seq, hash_)

    def _sign_seen(self) -> None:
        """Sign the entries this process committed when they extend the last head (no read of
        the database); otherwise (the first time, or entries committed elsewhere or in another
        order) read the log and sign its head."""
        last = self._signed
        if last is not None:
            with self._seen_lock:
                seq, hash_ = last.seq, last.hash
                while (nxt := self._seen.get(seq + 1)) is not None and nxt[0] == hash_:
                    seq, hash_ = seq + 1, nxt[1]
                rest = any(k > seq for k in self._seen)
            if seq > last.seq:
                self._write(seq, hash_)
            if not rest:
                return
        assert self._sessions is not None
        with self._sessions() as session:
            self._sign(session)

    # -- signing after every commit, in the background --------------------------------------

    def attach(self, sessions: sessionmaker[Session]) -> None:
        """Sign the log's head now, and after each commit of ``sessions`` that appended audit
        entries (in a background thread: a commit never waits for a signature)."""
        self._sessions = sessions
        event.listen(sessions, "after_commit", self._after_commit)
        event.listen(sessions, "after_rollback", self._after_rollback)
        self.flush()
        thread = threading.Thread(
            target=_signer, args=(weakref.ref(self), self._wake), name="audit-notary", daemon=True
        )
        thread.start()

    def flush(self) -> None:
        """Sign what was committed and not signed yet, now (before reading the record)."""
        with self._lock:
            try:
                self._sign_seen()
            except Exception as exc:  # the commit is done: report, never fail the caller
                log.error("audit head not signed: %s", exc)

    def close(self) -> None:
        """Stop the background signer (it also stops once the notary is gone)."""
        self._closed = True
        self._wake.set()

    def _after_commit(self, session: Session) -> None:
        appended = session.info.pop(audit.APPENDED, None)
        if appended:
            with self._seen_lock:
                for seq, prev_hash, hash_ in appended:
                    self._seen[seq] = (prev_hash, hash_)
            self._wake.set()

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(audit.APPENDED, None)


def _signer(ref: weakref.ref[Notary], wake: threading.Event) -> None:
    """The background signer: woken by commits, it signs what they appended (one signature
    for however many commits came while it was busy)."""
    while True:
        woken = wake.wait(timeout=2.0)
        notary = ref()
        if notary is None or notary._closed:
            return
        if woken:
            wake.clear()
            notary.flush()
        del notary
