"""The hash-chained audit log: intact after work; an edited, removed or reordered row is found.
Through the service: the signed head, and ``verify`` finding tampering behind its back (the
full tamper matrix is in test_queue_audit_evidence)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, text, update
from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.errors import QueueError
from analoglab.queue.head import check_signature, parse_head
from analoglab.queue.jobs import JobQueue
from analoglab.queue.models import AuditEntry
from analoglab.queue.service import create_app
from analoglab.signing import public_key_text

from ..conftest import serve_app
from .conftest import probe_spec, result_for
from .test_queue_audit_evidence import rechain


def _work(queue: JobQueue) -> None:
    for _ in range(3):
        job = queue.submit("alice", "frontier-a", probe_spec())
        queue.review(job.id, "rita", "approve", "ok")


def test_every_transition_is_audited_and_chained(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions() as session:
        entries = audit.entries(session)
    assert [e.seq for e in entries] == list(range(1, 7))
    assert [e.action for e in entries[:2]] == ["submit", "review"]
    assert entries[1].from_state == "awaiting_review" and entries[1].to_state == "approved"
    assert entries[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert queue.verify_audit() is None


def test_an_edited_entry_is_found(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions.begin() as session:
        session.execute(
            update(AuditEntry).where(AuditEntry.seq == 4).values(detail={"comment": "forged"})
        )
    assert queue.verify_audit() == 4


def test_a_deleted_entry_is_found(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions.begin() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 3))
    assert queue.verify_audit() == 3


def test_reordered_entries_are_found(queue: JobQueue) -> None:
    _work(queue)
    with queue.sessions.begin() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(seq=100))
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(seq=2))
        session.execute(update(AuditEntry).where(AuditEntry.seq == 100).values(seq=3))
    assert queue.verify_audit() == 2


# -- the service: GET /api/audit/head, GET and POST /api/audit/verify --------------------------

ROLES = {
    "alice": ["researcher"],
    "rita": ["reviewer:lab-a"],
    "agent": ["agent:lab-a"],
    "root": ["admin"],
}
TOKENS = {hash_token(f"tok-{n}"): {"name": n, "roles": r} for n, r in ROLES.items()}


def _client(url: str, who: str) -> QueueClient:
    return QueueClient(url, f"tok-{who}")


def test_the_service_signs_its_head_and_verify_finds_tampering(
    db_url: str, catalog_home: Settings
) -> None:
    app = create_app(db_url, catalog_home, TOKENS)
    raw = create_engine(db_url)
    with serve_app(app) as url:
        alice, rita, agent, root = (_client(url, w) for w in ROLES)
        job = alice.submit(probe_spec(), "frontier-a")
        rita.review(job["id"], "approve", "fine")
        claim = agent.claim("lab-a")
        assert claim is not None
        agent.post_result(job["id"], result_for(claim["job"]), claim["lease_id"])
        rita.release(job["id"], "release", "ok")
        other = alice.submit(probe_spec(4), "frontier-a")

        # Any signed-in caller reads the signed head; it vouches for the newest entry.
        head = alice.audit_head()
        check_signature(parse_head(head))
        assert head["seq"] == 6 and head["public_key"].startswith("ed25519:")
        key_file = catalog_home.home / "queue" / "audit-signing-key.pem"
        assert key_file.stat().st_mode & 0o777 == 0o600
        with pytest.raises(QueueError) as denied:
            QueueClient(url, "no-such-token").audit_head()
        assert denied.value.status == 401

        check = root.verify_audit()
        assert check["ok"] and check["findings"] == [] and check["head"] == head
        pinned = root.verify_audit(head=head, public_key=head["public_key"])
        assert pinned["ok"], pinned["findings"]
        with pytest.raises(QueueError) as denied:
            alice.verify_audit()
        assert denied.value.status == 403

        # Behind the service's back: a state, then the log re-chained without the key.
        with raw.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET state = 'approved' WHERE id = :i"), {"i": other["id"]}
            )
        check = root.verify_audit()
        assert not check["ok"]
        assert [(f["check"], f["job_id"]) for f in check["findings"]] == [("state", other["id"])]
        with raw.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET state = 'awaiting_review' WHERE id = :i"), {"i": other["id"]}
            )
            conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE action = 'claim'"))
        rechain(raw)
        check = root.verify_audit()
        assert not check["ok"] and check["first_broken_seq"] is None
        assert {f["check"] for f in check["findings"]} == {"signed_head"}
        # the hub refuses to sign the forged log; the published head catches it too
        with pytest.raises(QueueError) as refused:
            alice.audit_head()
        assert refused.value.status == 409 and "does not extend" in str(refused.value)
        pinned = root.verify_audit(head=head, public_key=head["public_key"])
        assert "published_head" in {f["check"] for f in pinned["findings"]}

        # Emptied: refused even without a published head.
        with raw.begin() as conn:
            conn.execute(text("DELETE FROM audit_log"))
        check = root.verify_audit()
        assert not check["ok"] and check["entries"] == 0
        assert check["findings"][0]["check"] == "log"
    raw.dispose()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/audit/head", set(ROLES)),
        ("GET", "/api/audit/verify", {"root"}),
        ("POST", "/api/audit/verify", {"root"}),
    ],
)
def test_who_reads_the_head_and_verifies(
    sqlite_url: str, catalog_home: Settings, method: str, path: str, allowed: set[str]
) -> None:
    with TestClient(create_app(sqlite_url, catalog_home, TOKENS)) as client:
        for who in [*ROLES, "anonymous"]:
            headers = {} if who == "anonymous" else {"Authorization": f"Bearer tok-{who}"}
            resp = client.request(
                method, path, headers=headers, json={} if method == "POST" else None
            )
            want = 200 if who in allowed else 401 if who == "anonymous" else 403
            assert resp.status_code == want, (who, resp.text)
        # A POST body is checked: unknown fields and a malformed head are refused.
        root = {"Authorization": "Bearer tok-root"}
        bad = client.post("/api/audit/verify", headers=root, json={"head": {"seq": 1}})
        assert bad.status_code == 422
        assert client.post("/api/audit/verify", headers=root, json={"x": 1}).status_code == 422


def test_hubs_on_one_home_keep_one_record_per_database(
    tmp_path: Path, catalog_home: Settings
) -> None:
    heads = []
    for name in ("one.db", "two.db"):
        with TestClient(create_app(f"sqlite:///{tmp_path / name}", catalog_home, TOKENS)) as c:
            root = {"Authorization": "Bearer tok-root"}
            if name == "one.db":
                c.post(
                    "/api/jobs",
                    json={"frontier": "frontier-a", "spec": probe_spec()},
                    headers={"Authorization": "Bearer tok-alice"},
                )
            heads.append(c.get("/api/audit/head", headers=root).json())
            assert c.get("/api/audit/verify", headers=root).json()["ok"]
    assert [h["seq"] for h in heads] == [1, 0]
    assert heads[0]["public_key"] == heads[1]["public_key"]  # one key per hub's home


# -- the CLI: analoglab queue audit head | verify [--head FILE --public-key KEY] ----------------

runner = CliRunner()


def _cli(url: str, who: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["queue", "audit", *args, "--url", url, "--token", f"tok-{who}"])
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_publishes_heads_and_reports_every_finding(
    sqlite_url: str, catalog_home: Settings, tmp_path: Path
) -> None:
    raw = create_engine(sqlite_url)
    with serve_app(create_app(sqlite_url, catalog_home, TOKENS)) as url:
        alice, rita, agent = (_client(url, w) for w in ("alice", "rita", "agent"))
        released = alice.submit(probe_spec(), "frontier-a")
        rita.review(released["id"], "approve", "fine")
        claim = agent.claim("lab-a")
        assert claim is not None
        agent.post_result(released["id"], result_for(claim["job"]), claim["lease_id"])
        rita.release(released["id"], "release", "ok")
        rejected = alice.submit(probe_spec(4), "frontier-a")
        rita.review(rejected["id"], "reject", "no")

        code, text_out, _ = _cli(url, "alice", "head")
        assert code == 0 and "entry 7" in text_out and "ed25519:" in text_out
        code, published, _ = _cli(url, "alice", "head", "--json")
        assert code == 0
        head_file = tmp_path / "published" / "head.json"
        head_file.parent.mkdir()
        head_file.write_text(published)
        key = json.loads(published)["public_key"]

        code, text_out, _ = _cli(url, "root", "verify")
        assert code == 0 and "audit log ok: 7 entries, 2 jobs" in text_out
        code, text_out, errors = _cli(
            url, "root", "verify", "--head", str(head_file), "--public-key", key
        )
        assert code == 0, errors

        # A pinned key that is not the hub's; a malformed key; a head file that is not one.
        stranger = public_key_text(Ed25519PrivateKey.generate())
        code, _, errors = _cli(
            url, "root", "verify", "--head", str(head_file), "--public-key", stranger
        )
        assert code == 1 and "not the pinned key" in errors
        code, _, errors = _cli(url, "root", "verify", "--public-key", "ed25519:nope")
        assert code == 1 and len(errors.strip().splitlines()) == 1 and "Traceback" not in errors
        code, _, errors = _cli(url, "root", "verify", "--head", str(tmp_path / "none.json"))
        assert code == 1 and "no signed head" in errors and len(errors.strip().splitlines()) == 1

        # Behind the service's back: a state, a review, a result's numbers; then truncation.
        stored = QueueClient(url, "tok-rita").result(released["id"])
        forged = {**stored, "metrics": {"accuracy": 1.0, "effect": 1.0}}
        with raw.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET state = 'cancelled' WHERE id = :i"), {"i": rejected["id"]}
            )
            conn.execute(
                text("UPDATE reviews SET decision = 'approve' WHERE job_id = :i"),
                {"i": rejected["id"]},
            )
            conn.execute(
                text("UPDATE jobs SET result = :r WHERE id = :i"),
                {"r": json.dumps(forged), "i": released["id"]},
            )
        code, _, errors = _cli(url, "root", "verify")
        lines = errors.strip().splitlines()
        assert code == 1
        assert lines[0].startswith(f"result: job {released['id']}: the stored result hashes")
        assert lines[1].startswith(f"state: job {rejected['id']}: state is cancelled")
        assert lines[2].startswith(f"review: job {rejected['id']}: review")
        assert lines[3] == "audit log: 3 finding(s)"
        with raw.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE seq > 5"))
        code, report_out, _ = _cli(
            url, "root", "verify", "--head", str(head_file), "--public-key", key, "--json"
        )
        report = json.loads(report_out)
        assert code == 1 and not report["ok"]
        assert {"signed_head", "published_head"} <= {f["check"] for f in report["findings"]}
    raw.dispose()
