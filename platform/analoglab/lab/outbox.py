"""The lab site's outbox: finished frontier results on disk until the hub has them.

A frontier run is expensive and its result exists nowhere else, so the agent writes every
result that passed the release checks to ``<site>/outbox/job-<id>.json`` (durably, through
:func:`analoglab.files.atomic_write`, mode 0600) *before* it posts it, and removes the file
only once the hub has acknowledged it. An entry keeps what a later post needs: the job id, the
spec (and its hash) it answers, the lease it was run under and the result itself. The entry
is written as soon as the run ends, before the release checks (which need the hub's policy):
whatever happens next, a replay runs the same checks before anything leaves. A batch's
entries are written together (:meth:`Outbox.put_many`: one sync of the folder for all of
them) by the batch's delivery, first thing, while the executor runs the next batch.

After a crash, a stop with the hub unreachable or a second SIGTERM, the next agent finds the
entry and *replays* it instead of running the frontier again (see ``docs/lab.md``):

- posted under the stored lease while that lease is still the job's current one;
- if the lease has gone (it expired and the job went back to ``approved``), the entry waits
  for the agent to claim the same job again: a claim whose job id **and** spec hash match a
  pending entry posts the stored result under the new lease, no run;
- if the job can never take it any more (it finished otherwise, was cancelled, failed), the
  entry is moved to ``outbox/undeliverable/`` with the reason, logged, and kept for the lab's
  own eyes — never silently deleted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from analoglab.files import atomic_write, atomic_write_many, fsync_dir

log = logging.getLogger("analoglab.lab.outbox")

UNDELIVERABLE = "undeliverable"


@dataclass
class Entry:
    """One finished result waiting for the hub."""

    job_id: int
    spec_hash: str
    frontier: str
    lease_id: str
    spec: dict[str, Any]
    result: dict[str, Any]
    finished_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    reason: str | None = None  # why it is undeliverable, once it is

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(
            job_id=int(data["job_id"]),
            spec_hash=str(data["spec_hash"]),
            frontier=str(data["frontier"]),
            lease_id=str(data["lease_id"]),
            spec=dict(data["spec"]),
            result=dict(data["result"]),
            finished_at=str(data.get("finished_at", "")),
            reason=data.get("reason"),
        )


class Outbox:
    """The folder of results not yet acknowledged by the hub."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, job_id: int) -> Path:
        return self.folder / f"job-{int(job_id)}.json"

    def put(self, entry: Entry) -> Path:
        """Write ``entry`` durably (it survives a crash or a power loss once this returns)."""
        return self.put_many([entry])[0]

    def put_many(self, entries: Sequence[Entry]) -> list[Path]:
        """Write several entries (a batch's results) durably, the folder synced once for all
        of them; durable together once this returns."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = [(self.path(e.job_id), _text(e)) for e in entries]
        atomic_write_many(files, perms=0o600)
        return [path for path, _ in files]

    def job(self, entry: Entry) -> dict[str, Any]:
        """The job as a claim showed it, as far as the entry knows it."""
        return {
            "id": entry.job_id,
            "frontier": entry.frontier,
            "spec": entry.spec,
            "spec_hash": entry.spec_hash,
        }

    def get(self, job_id: int) -> Entry | None:
        path = self.path(job_id)
        try:
            return Entry.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("outbox entry %s is unreadable (%s); leaving it alone", path, exc)
            return None

    def pending(self) -> list[Entry]:
        """Every entry still to be posted, oldest job first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("job-*.json")):
            try:
                found.append(Entry.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("outbox entry %s is unreadable (%s); leaving it alone", path, exc)
        return sorted(found, key=lambda e: e.job_id)

    def done(self, job_id: int) -> None:
        """The hub has the result: forget the entry."""
        self.done_many([job_id])

    def done_many(self, job_ids: Iterable[int]) -> None:
        """Forget several entries (those never put are skipped), the folder synced once."""
        gone = False
        for job_id in job_ids:
            with contextlib.suppress(FileNotFoundError):
                self.path(job_id).unlink()
                gone = True
        if gone:
            fsync_dir(self.folder)

    def undeliverable(self, entry: Entry, reason: str) -> Path:
        """Keep an entry the hub can no longer take, with why, out of the replay's way."""
        entry.reason = reason
        folder = self.folder / UNDELIVERABLE
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        kept = folder / f"job-{entry.job_id}.json"
        atomic_write(kept, _text(entry), perms=0o600)
        self.done(entry.job_id)
        log.warning(
            "job %s: the finished result cannot be posted (%s); kept at %s",
            entry.job_id, reason, kept,
        )
        return kept


def _text(entry: Entry) -> str:
    """An entry as its file holds it."""
    return json.dumps(asdict(entry), indent=2) + "\n"
