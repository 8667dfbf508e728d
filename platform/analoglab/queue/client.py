"""QueueClient: the gated queue's REST API from Python (notebooks, the lab agent, the CLI).

Every method returns the server's JSON (a job is a dict with ``id``, ``state``, ...); a
refusal raises :class:`~analoglab.queue.errors.QueueError` carrying the server's reason and
status (and, for a failed vetting, ``findings``). The token comes from the argument, else
``JUPYTERHUB_API_TOKEN``, else ``ANALOGLAB_QUEUE_TOKEN``::

    q = QueueClient("http://127.0.0.1:8765")
    job = q.submit(spec, "demo-frontier")
    final = q.wait(job["id"], on_change=lambda j: print(j["state"]))
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from analoglab.queue.errors import QueueError

TOKEN_ENVS = ("JUPYTERHUB_API_TOKEN", "ANALOGLAB_QUEUE_TOKEN")
#: States in which a job waits on its submitter or is done: :meth:`QueueClient.wait` stops.
SETTLED = frozenset(
    {"released", "withheld", "rejected", "failed", "cancelled", "changes_requested"}
)

Job = dict[str, Any]
#: A list of answers, as the claims and results endpoints give (each a JSON object).
Answers = list[dict[str, Any]]


class QueueClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = token or next((os.environ[e] for e in TOKEN_ENVS if os.environ.get(e)), None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> QueueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise QueueError(f"cannot reach the queue at {self.url}: {exc}", status=0) from exc
        if resp.status_code == 204:
            return None
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text or resp.reason_phrase}
        if resp.is_error:
            reason = body.get("detail") if isinstance(body, dict) else str(body)
            raise QueueError(
                f"{method} {path}: {resp.status_code} {reason}",
                status=resp.status_code,
                detail=body,
            )
        return body

    # -- researcher ---------------------------------------------------------------------------

    def submit(
        self,
        spec: Any,
        frontier: str,
        idempotency_key: str | None = None,
        analog_result_ref: str | None = None,
    ) -> Job:
        """Submit a spec (a dict or a spec model) to a frontier."""
        data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else spec
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"frontier": frontier, "spec": data, "analog_result_ref": analog_result_ref}
        job: Job = self._call("POST", "/api/jobs", json=body, headers=headers)
        return job

    def get(self, job_id: int) -> Job:
        job: Job = self._call("GET", f"/api/jobs/{job_id}")
        return job

    def list(
        self, state: str | None = None, limit: int = 50, cursor: int | None = None
    ) -> dict[str, Any]:
        """One page of the caller's jobs: ``{"jobs": [...], "next_cursor": ...}``."""
        page: dict[str, Any] = self._call(
            "GET", "/api/jobs", params={"state": state, "limit": limit, "cursor": cursor}
        )
        return page

    def cancel(self, job_id: int) -> Job:
        job: Job = self._call("POST", f"/api/jobs/{job_id}/cancel")
        return job

    def resubmit(self, job_id: int, spec: Any) -> Job:
        data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else spec
        job: Job = self._call("POST", f"/api/jobs/{job_id}/resubmit", json={"spec": data})
        return job

    def result(self, job_id: int) -> dict[str, Any]:
        """The released ExperimentResult as a dict."""
        out: dict[str, Any] = self._call("GET", f"/api/jobs/{job_id}/result")["result"]
        return out

    def wait(
        self,
        job_id: int,
        poll: float = 2.0,
        timeout: float | None = None,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is settled (released, withheld, rejected, failed, cancelled or
        changes_requested); ``on_change`` sees each new state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        while True:
            job = self.get(job_id)
            if job["state"] != last:
                last = job["state"]
                if on_change is not None:
                    on_change(job)
            if job["state"] in SETTLED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueError(
                    f"job {job_id} is still {job['state']} after {timeout} s", status=408
                )
            time.sleep(poll)

    # -- reviewer -----------------------------------------------------------------------------

    def lab_queue(
        self, lab: str, state: str | None = None, limit: int = 50, cursor: int | None = None
    ) -> dict[str, Any]:
        page: dict[str, Any] = self._call(
            "GET",
            f"/api/labs/{lab}/queue",
            params={"state": state, "limit": limit, "cursor": cursor},
        )
        return page

    def review(self, job_id: int, decision: str, comment: str = "") -> Job:
        """decision: approve, reject or request_changes."""
        body = {"decision": decision, "comment": comment}
        job: Job = self._call("POST", f"/api/jobs/{job_id}/review", json=body)
        return job

    def release(self, job_id: int, decision: str, reason: str = "") -> Job:
        """decision: release or withhold."""
        body = {"decision": decision, "reason": reason}
        job: Job = self._call("POST", f"/api/jobs/{job_id}/release", json=body)
        return job

    def policy(self, frontier: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/api/frontiers/{frontier}/policy")
        return out

    def set_policy(self, frontier: str, policy: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("PUT", f"/api/frontiers/{frontier}/policy", json=policy)
        return out

    # -- agent --------------------------------------------------------------------------------

    def claim(
        self,
        lab: str,
        wait: float = 0.0,
        lease_seconds: int | None = None,
        frontiers: Sequence[str] | None = None,
        lease_id: str | None = None,
    ) -> dict[str, Any] | None:
        """``{"job", "lease_id", "lease_expires_at"}`` for the next approved job (of one of
        ``frontiers``, when given; an empty list claims nothing), or None."""
        if frontiers is not None and not frontiers:
            time.sleep(wait)  # nothing can match: wait as a long poll would
            return None
        out: dict[str, Any] | None = self._call(
            "POST",
            f"/api/labs/{lab}/claim",
            params={
                "wait": wait,
                "lease_seconds": lease_seconds,
                "frontier": None if frontiers is None else [*frontiers],
            },
            json={"lease_id": lease_id} if lease_id is not None else None,
            timeout=wait + 30.0,
        )
        return out

    def claim_many(
        self,
        lab: str,
        count: int,
        wait: float = 0.0,
        lease_seconds: int | None = None,
        frontiers: Sequence[str] | None = None,
        lease_ids: Sequence[str] | None = None,
    ) -> Answers:
        """Up to ``count`` claims in one call (``POST /api/labs/{lab}/claims``), each
        ``{"job", "lease_id", "lease_expires_at"}``, in fair-share order; ``[]`` if none came
        within ``wait`` seconds. ``lease_ids`` (``count`` of them) make a retry idempotent."""
        if frontiers is not None and not frontiers:
            time.sleep(wait)  # nothing can match: wait as a long poll would
            return []
        out: dict[str, Any] | None = self._call(
            "POST",
            f"/api/labs/{lab}/claims",
            params={
                "count": count,
                "wait": wait,
                "lease_seconds": lease_seconds,
                "frontier": None if frontiers is None else [*frontiers],
            },
            json={"lease_ids": [*lease_ids]} if lease_ids is not None else None,
            timeout=wait + 30.0,
        )
        return [] if out is None else [dict(claim) for claim in out["claims"]]

    def heartbeat(self, job_id: int, lease_id: str, lease_seconds: int | None = None) -> Job:
        """Extend the lease: by ``lease_seconds`` from now, or by its current length."""
        body: dict[str, Any] = {"lease_id": lease_id}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        job: Job = self._call("POST", f"/api/jobs/{job_id}/heartbeat", json=body)
        return job

    def post_result(
        self,
        job_id: int,
        result: Any,
        lease_id: str | None = None,
        signature: str | None = None,
        key_id: str | None = None,
    ) -> Job:
        """Hand in the result; ``signature``/``key_id``: the lab's signature over it."""
        data = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
        body: dict[str, Any] = {"lease_id": lease_id, "result": data}
        if signature is not None:
            body |= {"signature": signature, "key_id": key_id}
        job: Job = self._call("POST", f"/api/jobs/{job_id}/result", json=body)
        return job

    def post_results(self, lab: str, posts: Sequence[dict[str, Any]]) -> Answers:
        """Several results in one call (``POST /api/labs/{lab}/results``), each post
        ``{"job_id", "lease_id", "result", "signature"?, "key_id"?}``; per post, in order,
        ``{"job_id", "status", "state" | "detail"}``: 200 and the job's new state, or the status
        and reason posting it alone would have had."""
        out: dict[str, Any] = self._call(
            "POST", f"/api/labs/{lab}/results", json={"results": [*posts]}
        )
        return [dict(answer) for answer in out["answers"]]

    def withhold(self, job_id: int, reason: str, lease_id: str) -> Job:
        """Report that the lab's release checks withheld the job's result (it stays in the lab)."""
        body = {"lease_id": lease_id, "withheld": reason}
        job: Job = self._call("POST", f"/api/jobs/{job_id}/result", json=body)
        return job

    def give_back(
        self, job_id: int, lease_id: str | None = None, reason: str = "", error: bool = False
    ) -> Job:
        body = {"lease_id": lease_id, "reason": reason, "error": error}
        job: Job = self._call("POST", f"/api/jobs/{job_id}/give-back", json=body)
        return job

    # -- operator -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", "/health")
        return out

    def verify_audit(
        self, head: dict[str, Any] | None = None, public_key: str | None = None
    ) -> dict[str, Any]:
        """The audit log checked as evidence; against a published ``head`` when given."""
        if head is None and public_key is None:
            out: dict[str, Any] = self._call("GET", "/api/audit/verify")
        else:
            body = {"head": head, "public_key": public_key}
            out = self._call("POST", "/api/audit/verify", json=body)
        return out

    def audit_head(self) -> dict[str, Any]:
        """The audit log's head, signed by the hub."""
        out: dict[str, Any] = self._call("GET", "/api/audit/head")
        return out
