"""Separation of duties: the submitter of a job never reviews or releases it (403), unless the
frontier's policy says ``allow_self_review`` (and changing that is audited); on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.models.catalog import FrontierPolicy
from analoglab.queue import audit
from analoglab.queue.auth import hash_token
from analoglab.queue.errors import Forbidden
from analoglab.queue.jobs import JobQueue
from analoglab.queue.service import create_app

from .conftest import probe_spec, result_for


def test_a_submitter_never_reviews_or_releases_their_own_job(queue: JobQueue) -> None:
    job = queue.submit("rita", "frontier-a", probe_spec())
    for decision in ("approve", "reject", "request_changes"):
        with pytest.raises(Forbidden, match="submitted job"):
            queue.review(job.id, "rita", decision)
    assert queue.get(job.id).state == "awaiting_review"
    queue.review(job.id, "victor", "approve")
    c = queue.claim("lab-a", "agent-a")
    assert c is not None
    queue.post_result(job.id, c.lease_id, "agent-a", result_for(c))
    for decision in ("release", "withhold"):
        with pytest.raises(Forbidden, match="submitted job"):
            queue.release(job.id, "rita", decision)
    assert queue.get(job.id).state == "awaiting_release"
    assert queue.release(job.id, "victor", "release").state == "released"


def test_a_lab_may_allow_self_review_and_that_is_audited(queue: JobQueue) -> None:
    pol = queue.policy("frontier-a").model_copy(update={"allow_self_review": True})
    queue.set_policy("frontier-a", pol, "lab-admin")
    with queue.sessions() as session:
        last = audit.entries(session)[-1]
    assert last.action == "policy_update"
    assert last.detail["changed"]["allow_self_review"] == {"from": False, "to": True}
    job = queue.submit("rita", "frontier-a", probe_spec())
    assert queue.review(job.id, "rita", "approve").state == "approved"
    assert FrontierPolicy().allow_self_review is False


TOKENS = {
    hash_token("both"): {"name": "bo", "roles": ["researcher", "reviewer:lab-a"]},
    hash_token("admin"): {"name": "root", "roles": ["admin"]},
}
BOTH = {"Authorization": "Bearer both"}


@pytest.fixture
def api(db_url: str, catalog_home: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(db_url, catalog_home, TOKENS)) as c:
        yield c


def test_the_api_refuses_self_review_with_a_reason(api: TestClient) -> None:
    job = api.post(
        "/api/jobs", json={"frontier": "frontier-a", "spec": probe_spec()}, headers=BOTH
    ).json()
    res = api.post(f"/api/jobs/{job['id']}/review", json={"decision": "approve"}, headers=BOTH)
    assert res.status_code == 403 and "allow_self_review" in res.json()["detail"]
    assert api.get(f"/api/jobs/{job['id']}", headers=BOTH).json()["state"] == "awaiting_review"
