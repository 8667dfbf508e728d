"""Fair share of a lab's frontiers: the order approved jobs are claimed in, and a job's place.

Pure: waiting jobs and recent service in, an order out (:func:`claim_order`); the queue
(:mod:`.jobs`) reads the rows and the audit log and applies it under its writers' lock.

The rule is start-time fair queuing by submitter. A submitter ``u`` with weight ``w(u)`` who was
served ``s(u)`` jobs of this lab in the recent window (claims in the audit log) has their
``k``-th waiting job (oldest first, ``k = 0, 1, ...``) start at virtual time
``(s(u) + k) / w(u)``; jobs are claimed in order of virtual time, the older job first on a tie.
So a user with one job waits behind at most one job of each other user who is not further
behind, however many jobs those users queued: with 200 jobs from one user and 1 from another,
the single job is claimed first or second. A weight ``w`` gives a submitter ``w`` times the
share of a weight-1 submitter while both have jobs waiting.

Weights come from the frontier policy's ``share_weights`` (a hub group → a weight; a submitter's
weight is the largest of their groups', 1 when none is listed), read at claim time so a lab's
change applies to jobs already waiting.

A job's **place** is its index in that order among the approved jobs of its frontier; its
estimated start adds, for the jobs ahead, the site's measured seconds per job divided by the
agents serving it (:func:`estimate`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class Waiting:
    """An approved job waiting for a claim, with its submitter's weight under its frontier's
    policy (:func:`weight_of`)."""

    id: int
    submitter: str
    weight: float = DEFAULT_WEIGHT


def weight_of(groups: Iterable[str], share_weights: Mapping[str, float]) -> float:
    """A submitter's weight: the largest weight of their groups, else 1."""
    found = [share_weights[g] for g in groups if g in share_weights]
    return max(found) if found else DEFAULT_WEIGHT


def claim_order(waiting: Iterable[Waiting], served: Mapping[str, int]) -> list[Waiting]:
    """The waiting jobs in the order they will be claimed (see the module docstring); a
    submitter's jobs keep their own order."""
    rank: dict[str, int] = {}
    keyed: list[tuple[float, int, Waiting]] = []
    for job in sorted(waiting, key=lambda j: j.id):
        k = rank.get(job.submitter, 0)
        rank[job.submitter] = k + 1
        keyed.append(((served.get(job.submitter, 0) + k) / job.weight, job.id, job))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [job for _, _, job in keyed]


@dataclass(frozen=True)
class Place:
    """Where an approved job stands: ``position`` 1 is next; the estimates are ``None`` until
    a job has finished on the frontier recently (nothing to measure the site's pace by)."""

    position: int
    waiting: int
    seconds_per_job: float | None
    agents: int
    estimated_start: dt.datetime | None
    estimated_finish: dt.datetime | None


def estimate(
    position: int,
    waiting: int,
    now: dt.datetime,
    durations: list[float],
    agents: int,
) -> Place:
    """The place of the job at ``position`` (1-based) of ``waiting``, with its estimated start
    and finish from the recent jobs' ``durations`` (claim to result, seconds) on its frontier
    and the ``agents`` that served them (at least 1)."""
    agents = max(1, agents)
    if not durations:
        return Place(position, waiting, None, agents, None, None)
    per_job = sum(durations) / len(durations)
    start = now + dt.timedelta(seconds=per_job * ((position - 1) // agents))
    return Place(
        position, waiting, round(per_job, 3), agents, start, start + dt.timedelta(seconds=per_job)
    )
