"""Fair share of a frontier: a flood from one submitter does not delay another's single job by
more than one claim, a lab's group weights give their members that many times the share, and a
waiting job knows its place in line and, once the site has a pace, when it should start.

On the real queue (SQLite and PostgreSQL) through claims, and on the pure order."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.models.catalog import FrontierModel, FrontierPolicy, Lab, save_lab
from analoglab.queue.auth import hash_token
from analoglab.queue.db import make_engine
from analoglab.queue.fairshare import Waiting, claim_order, estimate, weight_of
from analoglab.queue.jobs import CatalogFrontiers, JobQueue, QueueSettings
from analoglab.queue.migrate import upgrade
from analoglab.queue.service import create_app
from analoglab.queue.vetting import VettingLimits

from ..conftest import serve_app
from .conftest import ARCH, Clock, probe_spec, result_for


@pytest.fixture
def open_queue(db_url: str, home: Settings, clock: Clock) -> Iterator[JobQueue]:
    """A lab whose frontier takes many jobs a day, approved at once, and weights group
    ``priority`` 3 to 1."""
    policy = FrontierPolicy(
        human_review=False,
        human_release=False,
        daily_quota_per_user=1000,
        share_weights={"priority": 3.0},
    )
    frontier = FrontierModel(
        id="frontier-f",
        lab="lab-f",
        architecture=ARCH,
        parameters=1,
        trained=dt.date(2026, 1, 1),
        policy=policy,
    )
    save_lab(Lab(id="lab-f", name="F", frontiers=[frontier]), home)
    upgrade(db_url)
    engine = make_engine(db_url)
    settings = QueueSettings(limits=VettingLimits(rate_per_minute=10_000), lease_seconds=600)
    yield JobQueue(engine, CatalogFrontiers(home), settings, clock)
    engine.dispose()


def test_the_order_is_fair_by_submitter() -> None:
    flood = [Waiting(i, "heavy") for i in range(1, 201)] + [Waiting(201, "light")]
    order = [w.id for w in claim_order(flood, {})]
    assert order[:3] == [1, 201, 2]  # the single job goes second, not 201st
    # served recently: the heavy user's next job waits behind the light one's
    assert [w.id for w in claim_order(flood, {"heavy": 1})][:2] == [201, 1]
    weighted = [Waiting(i, "a", 2.0) for i in range(1, 31)] + [
        Waiting(i, "b") for i in range(31, 61)
    ]
    first = Counter(w.submitter for w in claim_order(weighted, {})[:30])
    assert first == {"a": 20, "b": 10}  # weight 2: twice the share while both wait
    assert weight_of(["x", "priority", "vip"], {"priority": 3.0, "vip": 5.0}) == 5.0
    assert weight_of(["x"], {"priority": 3.0}) == 1.0


def test_a_flood_does_not_delay_a_single_job_by_more_than_one_claim(
    open_queue: JobQueue, clock: Clock
) -> None:
    heavy = [open_queue.submit("heavy", "frontier-f", probe_spec()).id for _ in range(200)]
    clock.advance(1)
    light = open_queue.submit("light", "frontier-f", probe_spec()).id
    place = open_queue.place(open_queue.get(light))
    assert place is not None and (place.position, place.waiting) == (2, 201)
    claimed = [open_queue.claim("lab-f", "agent") for _ in range(3)]
    assert [j.id for j in claimed if j] == [heavy[0], light, heavy[1]]
    assert open_queue.place(open_queue.get(light)) is None  # running: no longer in line


def test_a_groups_weight_gives_its_members_that_share(open_queue: JobQueue) -> None:
    vip = [open_queue.submit("vera", "frontier-f", probe_spec(), groups=["priority"]).id]
    vip += [open_queue.submit("vera", "frontier-f", probe_spec()).id for _ in range(9)]
    # the groups of her first submission are her jobs' weight only where she sent them
    plain = [open_queue.submit("paul", "frontier-f", probe_spec()).id for _ in range(10)]
    assert open_queue.get(vip[0]).submitter_groups == ["priority"]
    got = [open_queue.claim("lab-f", "agent") for _ in range(6)]
    by = Counter(j.submitter for j in got if j)
    assert by == {"vera": 3, "paul": 3}  # only one of vera's jobs carries the weight
    weighted = [
        open_queue.submit("wes", "frontier-f", probe_spec(), groups=["priority", "x"]).id
        for _ in range(12)
    ]
    plain2 = [open_queue.submit("pia", "frontier-f", probe_spec()).id for _ in range(12)]
    order = open_queue.place(open_queue.get(weighted[5]))
    later = open_queue.place(open_queue.get(plain2[5]))
    assert order is not None and later is not None and order.position < later.position
    del plain


def test_a_waiting_job_knows_its_place_and_when_it_should_start(
    open_queue: JobQueue, clock: Clock
) -> None:
    ids = [open_queue.submit(f"user{i}", "frontier-f", probe_spec()).id for i in range(4)]
    place = open_queue.place(open_queue.get(ids[3]))
    assert place is not None and place.position == 4 and place.seconds_per_job is None
    assert place.estimated_start is None  # no pace measured yet
    for _ in range(2):  # the site runs two jobs, 30 s each
        job = open_queue.claim("lab-f", "agent-1", lease_id=None)
        assert job is not None
        clock.advance(30)
        open_queue.post_result(job.id, job.lease_id, "agent-1", result_for(job))
    place = open_queue.place(open_queue.get(ids[3]))
    assert place is not None and (place.position, place.waiting) == (2, 2)
    assert place.seconds_per_job == pytest.approx(30.0) and place.agents == 1
    assert place.estimated_start == clock.now + dt.timedelta(seconds=30)
    assert place.estimated_finish == clock.now + dt.timedelta(seconds=60)


def test_estimates_spread_over_agents() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    p = estimate(position=5, waiting=9, now=now, durations=[10.0, 30.0], agents=2)
    assert p.seconds_per_job == 20.0 and p.estimated_start == now + dt.timedelta(seconds=40)
    assert estimate(1, 1, now, [], 0).estimated_start is None


def test_the_api_the_cli_and_the_review_page_show_the_place(
    home: Settings, sqlite_url: str, clock: Clock
) -> None:
    from typer.testing import CliRunner

    from analoglab.cli import app as cli

    save_lab(
        Lab(
            id="lab-f",
            name="F",
            frontiers=[
                FrontierModel(
                    id="frontier-f",
                    lab="lab-f",
                    architecture=ARCH,
                    parameters=1,
                    trained=dt.date(2026, 1, 1),
                    policy=FrontierPolicy(human_review=False, share_weights={"priority": 2}),
                )
            ],
        ),
        home,
    )
    token = "researcher-token-with-groups"
    tokens = {
        hash_token(token): {"name": "gus", "roles": ["researcher"], "groups": ["priority"]},
        hash_token("rev"): {"name": "rita", "roles": ["reviewer:lab-f"]},
    }
    app = create_app(sqlite_url, home, tokens, queue_settings=QueueSettings(limits=VettingLimits()))
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        sent = [
            c.post(
                "/api/jobs", json={"frontier": "frontier-f", "spec": probe_spec()}, headers=headers
            )
            for _ in range(2)
        ]
        assert all(r.status_code == 201 for r in sent), sent[0].text
        second = c.get(f"/api/jobs/{sent[1].json()['id']}", headers=headers).json()
        assert second["place"]["position"] == 2 and second["place"]["waiting"] == 2
        assert second["place"]["estimated_start"] is None
        assert app.state.queue.get(second["id"]).submitter_groups == ["priority"]
        listed = c.get("/api/jobs", headers=headers).json()["jobs"]
        assert all(j["place"] is None for j in listed)  # only a job read by itself
        page = c.get(f"/review/jobs/{second['id']}", headers={"Authorization": "Bearer rev"})
        assert page.status_code == 200 and "2 of 2 approved for frontier-f" in page.text
    with serve_app(app) as url:
        res = CliRunner().invoke(
            cli, ["queue", "show", str(second["id"]), "--url", url, "--token", token]
        )
    assert res.exit_code == 0, res.output
    assert "2 of 2 approved for this frontier" in " ".join(res.output.split())
    assert "no estimate yet" in " ".join(res.output.split())
