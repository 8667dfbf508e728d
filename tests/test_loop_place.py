"""transfer_check's progress: while the frontier's job waits approved, its place in line and
estimated start are shown, and each move of its place is shown again."""

from __future__ import annotations

import datetime as dt
from typing import Any

from analoglab.loop import _follow, progress_line


class FakeClient:
    """Answers ``get`` with the next of a list of job states (the last one repeats)."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.calls = 0

    def get(self, job_id: int) -> dict[str, Any]:
        job = self.jobs[min(self.calls, len(self.jobs) - 1)]
        self.calls += 1
        return job


def place(position: int, waiting: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "position": position,
        "waiting": waiting,
        "seconds_per_job": 10.0,
        "agents": 1,
        "estimated_start": (now + dt.timedelta(seconds=10 * (position - 1))).isoformat(),
        "estimated_finish": (now + dt.timedelta(seconds=10 * position)).isoformat(),
    }


def test_the_wait_shows_the_place_in_line_while_approved() -> None:
    jobs = [
        {"id": 7, "state": "pending_review"},
        {"id": 7, "state": "approved", "place": place(3, 5)},
        {"id": 7, "state": "approved", "place": place(3, 5)},  # unchanged: not shown again
        {"id": 7, "state": "approved", "place": place(1, 4)},
        {"id": 7, "state": "running"},
        {"id": 7, "state": "released"},
    ]
    seen: list[str] = []

    def changed(job: dict[str, Any]) -> None:
        seen.append(progress_line(7, job, 0.0))

    job = _follow(FakeClient(jobs), 7, poll=0.0, timeout=5.0, changed=changed)  # type: ignore[arg-type]
    assert job["state"] == "released"
    assert [line.split(";")[0] for line in seen] == [
        "job 7: pending_review (0 s)",
        "job 7: approved (0 s)",
        "job 7: approved (0 s)",
        "job 7: running (0 s)",
        "job 7: released (0 s)",
    ]
    assert "3 of 5 approved for this frontier" in seen[1]
    assert "starts in about" in seen[1]
    assert "1 of 4 approved for this frontier" in seen[2]
