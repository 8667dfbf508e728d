"""The gated queue: researchers' experiment requests on a lab's private frontier model, from
submission through automatic vetting, human review, a leased run on the lab's site and a
release check, to the released result; every step in a hash-chained audit log.

Modules: :mod:`.models` and :mod:`.db` (tables, engines), :mod:`.migrate` (Alembic),
:mod:`.states` (the state machine), :mod:`.vetting`, :mod:`.policy`, :mod:`.audit`,
:mod:`.jobs` (the operations), :mod:`.auth`, :mod:`.service` (REST), :mod:`.pages` (the
reviewers' HTML pages), :mod:`.client`.
Importing this package loads only the client (httpx): the service needs the ``hub`` extra.
"""

from __future__ import annotations

from analoglab.queue.client import QueueClient
from analoglab.queue.errors import QueueError

__all__ = ["QueueClient", "QueueError"]
