"""A frontier's effective policy: the catalog's, unless a lab admin has edited it here.

Edits are stored in the ``policy_overrides`` table (the catalog on disk stays as the lab
published it) and each edit is audited.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from analoglab.models.catalog import FrontierModel, FrontierPolicy
from analoglab.queue import audit
from analoglab.queue.models import PolicyOverride, utcnow


def effective_policy(session: Session, frontier: FrontierModel) -> FrontierPolicy:
    override = session.get(PolicyOverride, frontier.id)
    if override is None:
        return frontier.policy
    return FrontierPolicy.model_validate(override.policy)


def set_policy(
    session: Session,
    frontier: FrontierModel,
    policy: FrontierPolicy,
    actor: str,
    now: dt.datetime | None = None,
) -> FrontierPolicy:
    """Store ``policy`` as the frontier's policy from now on (in the caller's transaction)."""
    now = now or utcnow()
    audit.lock(session)
    before = effective_policy(session, frontier)
    data = policy.model_dump(mode="json")
    override = session.get(PolicyOverride, frontier.id)
    if override is None:
        session.add(
            PolicyOverride(frontier=frontier.id, policy=data, updated_by=actor, updated_at=now)
        )
    else:
        override.policy = data
        override.updated_by = actor
        override.updated_at = now
    changed = {
        k: {"from": v, "to": data[k]}
        for k, v in before.model_dump(mode="json").items()
        if data.get(k) != v
    }
    audit.append(
        session,
        actor=actor,
        action="policy_update",
        detail={"frontier": frontier.id, "changed": changed, "policy": data},
        at=now,
    )
    session.flush()
    return policy
