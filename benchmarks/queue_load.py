"""The gated queue under load and under chaos, on loopback, against a real uvicorn server.

    python benchmarks/queue_load.py [--db sqlite postgresql] [--clients 50] [--seconds 10]
        [--chaos-jobs 1000] [--agents 4] [--rogues 2] [--lease 2] [--kill-min 0.5] [--kill-max 2.5]
        [--chaos-timeout 300] [--seed 0] [--skip-load] [--skip-chaos] [--json OUT]

**Load.** For each database (SQLite in a temporary folder; PostgreSQL in a fresh database on
127.0.0.1:5432, dropped after), the service runs as its own process (``create_app`` under
uvicorn, one worker, no access log) and ``--clients`` concurrent clients (asyncio + httpx, each
its own identity) drive it for ``--seconds`` per phase: ``submit`` (POST /api/jobs, vetted;
the frontier needs no human review, so each job is approved at once), ``list`` (GET /api/jobs,
a page of 50 of the caller's own jobs) and ``claim`` (POST /api/labs/<lab>/claim, wait=0, until
the approved jobs are all claimed; a 204, meaning no approved job was left, is counted apart,
not as a claim). Per phase: requests, throughput, latency p50 and p99 as the clients saw them
(the load generator shares the machine).

**Chaos.** ``--chaos-jobs`` approved jobs; ``--agents`` agent processes (QueueClient: claim
with a ``--lease``-second lease, "run" 5–50 ms, post a result) are SIGKILLed at random moments
(one of them every 0.5–2.5 s: ``--kill-min``, ``--kill-max``) and restarted at once, until
every job is released or ``--chaos-timeout`` passes; the service sweeps expired leases every
0.5 s, so a killed agent's job goes back to ``approved`` and another agent takes it. Counted
from the database and its audit log: lost jobs (not released at the end), duplicated jobs
(more than one completion: more than one ``result`` or ``released`` entry), lease reclaims,
kills; and the audit chain is verified. Goal: 0 lost, 0 duplicated.

**Racing on purpose.** ``--rogues`` more agents of the same lab (never killed) each claim a job
and then try every write the queue must refuse: a result under another lease id (409), a
result without a lease id (422), a result, a withheld result, a heartbeat and a give-back under
their own lease after it expired and before or after the sweep (409); and, with no job held,
a lease-less result to a random job. Each attempt and its status are counted; any 2xx among
them is a ``rogue write accepted`` (goal: 0). Their abandoned jobs go back through the sweep
and are released by the honest agents.

Figures: docs/performance.md ("The gated queue"). (The issue asked for
``benchmarks/queue.py``; a script of that name in this folder hides the standard library's
``queue`` module from every other benchmark run as ``python benchmarks/<name>.py``, so it is
``queue_load.py``.)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

LAB = "bench-lab"
FRONTIER = "bench-frontier"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ROGUE_TOKENS = 16  # agent tokens beyond the honest agents', for --rogues


# -- the parts that run as their own processes ------------------------------------------------


def tokens_for(clients: int, agents: int) -> dict[str, dict[str, Any]]:
    """Plain token -> identity (``r<i>`` researchers, ``a<i>`` agents of the lab, ``admin``)."""
    out: dict[str, dict[str, Any]] = {"admin": {"name": "admin", "roles": ["admin"]}}
    for i in range(clients):
        out[f"r{i}"] = {"name": f"researcher-{i}", "roles": ["researcher"]}
    for i in range(max(clients, agents) + ROGUE_TOKENS):
        out[f"a{i}"] = {"name": f"agent-{i}", "roles": [f"agent:{LAB}"]}
    return out


def write_catalog(home: Path) -> None:
    from analoglab.config import Settings
    from analoglab.models.card import Architecture
    from analoglab.models.catalog import FrontierModel, FrontierPolicy, Lab, save_lab

    policy = FrontierPolicy(
        human_review=False, human_release=False, daily_quota_per_user=10**9, max_prompts=64
    )
    model = FrontierModel(
        id=FRONTIER,
        lab=LAB,
        architecture=Architecture(
            model_type="llama", layers=8, hidden_size=64, heads=4, vocab_size=1024
        ),
        parameters=10_000,
        trained=dt.date(2026, 1, 1),
        policy=policy,
    )
    save_lab(Lab(id=LAB, name="Bench lab", frontiers=[model]), Settings(home=home))


def serve(args: argparse.Namespace) -> None:
    """``_serve``: the queue service under uvicorn (run by the benchmark as a subprocess)."""
    import uvicorn

    from analoglab.config import Settings
    from analoglab.queue.auth import hash_token
    from analoglab.queue.jobs import QueueSettings
    from analoglab.queue.service import create_app
    from analoglab.queue.vetting import VettingLimits

    plain = json.loads(Path(args.tokens).read_text())
    tokens = {hash_token(t): ident for t, ident in plain.items()}
    settings = QueueSettings(
        limits=VettingLimits(rate_per_minute=10**9),
        lease_seconds=args.lease,
        max_attempts=10**6,  # chaos: a job killed many times must still be released
        sweep_seconds=args.sweep,
    )
    app = create_app(args.db_url, Settings(home=Path(args.home)), tokens, queue_settings=settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def result_for(job: dict[str, Any]) -> dict[str, Any]:
    from analoglab.experiments.result import ExperimentResult, ModelIdentity

    res = ExperimentResult(
        method=job["spec"]["method"],
        spec_hash=job["spec_hash"],
        spec=job["spec"],
        model=ModelIdentity(
            name="bench-frontier",
            weights_sha256="0" * 64,
            model_type="llama",
            layers=8,
            hidden_size=64,
            parameters=10_000,
        ),
        device="cpu",
        versions={"analoglab": "bench"},
        metrics={"accuracy": 0.5 + (job["id"] % 50) / 100, "effect": 0.5},
    )
    return res.with_size().model_dump(mode="json")


def agent(args: argparse.Namespace) -> None:
    """``_agent``: claim, "run", post, forever (the chaos run kills it)."""
    from analoglab.queue.client import QueueClient
    from analoglab.queue.errors import QueueError

    rng = random.Random()
    with QueueClient(args.url, args.token, timeout=30) as client:
        while True:
            try:
                claim = client.claim(LAB, wait=2, lease_seconds=args.lease)
                if claim is None:
                    continue
                time.sleep(rng.uniform(0.005, 0.05))
                client.post_result(claim["job"]["id"], result_for(claim["job"]), claim["lease_id"])
            except QueueError:  # lease lost (409), or the service busy: the next claim
                time.sleep(0.05)


def rogue(args: argparse.Namespace) -> None:
    """``_rogue``: an agent of the lab that tries the writes the queue must refuse; one line
    of JSON per attempt on stdout: ``{"write": ..., "status": ...}``."""
    from analoglab.queue.client import QueueClient
    from analoglab.queue.errors import QueueError

    rng = random.Random()

    def attempt(write: str, call: Any, *call_args: Any, **kwargs: Any) -> None:
        try:
            call(*call_args, **kwargs)
            status = 200
        except QueueError as exc:
            status = exc.status
        print(json.dumps({"write": write, "status": status}), flush=True)

    with QueueClient(args.url, args.token, timeout=30) as client:
        raw = client._call  # for bodies the client would not send
        while True:
            claim = client.claim(LAB, wait=1, lease_seconds=args.lease)
            if claim is None:
                url = f"/api/jobs/{rng.randint(1, 10_000)}/result"
                attempt("no_lease_no_job", raw, "POST", url, json={"result": {}})
                continue
            job_id, lease = claim["job"]["id"], claim["lease_id"]
            result = result_for(claim["job"])
            attempt("other_lease", client.post_result, job_id, result, "x" * 40)
            attempt("no_lease", raw, "POST", f"/api/jobs/{job_id}/result", json={"result": result})
            attempt("null_lease", raw, "POST", f"/api/jobs/{job_id}/give-back",
                    json={"lease_id": None, "error": True})
            time.sleep(args.lease + rng.uniform(0.05, 0.6))  # let it expire; the sweep may lag
            attempt("expired_result", client.post_result, job_id, result, lease)
            attempt("expired_withhold", client.withhold, job_id, "no", lease)
            attempt("expired_heartbeat", client.heartbeat, job_id, lease)
            attempt("expired_give_back", client.give_back, job_id, lease, error=True)


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh, empty database URL; a PostgreSQL database is dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'queue-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg

    name = f"analoglab_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def server(db_url: str, home: Path, tokens_file: Path, lease: int, sweep: float) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-P",
        __file__,
        "_serve",
        "--db-url",
        db_url,
        "--home",
        str(home),
        "--tokens",
        str(tokens_file),
        "--port",
        str(port),
        "--lease",
        str(lease),
        "--sweep",
        str(sweep),
    ]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the queue service did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def probe_spec(n: int = 8) -> dict[str, Any]:
    items = [{"text": f"a short text number {i}", "label": i % 2} for i in range(n)]
    return {
        "method": "probe",
        "data": {"kind": "labelled", "items": items},
        "layers": {"depths": [0.5]},
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- load -------------------------------------------------------------------------------------


async def phase(
    url: str, op: str, clients: int, seconds: float, approved: int = 0
) -> dict[str, Any]:
    """One load phase; ``claim`` stops once the ``approved`` jobs are all claimed."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    left = [approved]
    body = {"frontier": FRONTIER, "spec": probe_spec()}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        deadline = time.perf_counter() + seconds

        async def client(i: int) -> None:
            who = {"Authorization": f"Bearer {'a' if op == 'claim' else 'r'}{i}"}
            while time.perf_counter() < deadline and (op != "claim" or left[0] > 0):
                started = time.perf_counter()
                if op == "submit":
                    resp = await http.post("/api/jobs", json=body, headers=who)
                elif op == "list":
                    resp = await http.get("/api/jobs", params={"limit": 50}, headers=who)
                else:
                    resp = await http.post(f"/api/labs/{LAB}/claim", headers=who)
                elapsed = time.perf_counter() - started
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if op == "claim":
                    if resp.status_code == 204:
                        continue  # lost every candidate to other claimers: not a claim
                    left[0] -= 1
                latencies.append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - started
    ok = {200, 201}
    return {
        "op": op,
        "requests": len(latencies),
        "errors": sum(n for s, n in statuses.items() if s not in ok | {204}),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "empty_answers": statuses.get(204, 0),
        "seconds": round(wall, 2),
        "per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }


def load(kind: str, args: argparse.Namespace, folder: Path, tokens_file: Path) -> list[Any]:
    rows = []
    with database(kind, folder) as db_url, server(db_url, folder, tokens_file, 300, 30) as url:
        approved = 0
        for op in ("submit", "list", "claim"):
            row = asyncio.run(phase(url, op, args.clients, args.seconds, approved))
            approved += row["statuses"].get("201", 0)
            row["db"] = kind
            rows.append(row)
            print(
                f"  {kind:10} {op:7} {row['requests']:6d} requests {row['per_second']:7.1f}/s "
                f"p50 {row['p50_ms']:6.1f} ms p99 {row['p99_ms']:7.1f} ms "
                f"errors {row['errors']} empty answers {row['empty_answers']}",
                flush=True,
            )
    return rows


# -- chaos ------------------------------------------------------------------------------------


def chaos(kind: str, args: argparse.Namespace, folder: Path, tokens_file: Path) -> dict[str, Any]:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from analoglab.queue.audit import verify
    from analoglab.queue.db import make_engine
    from analoglab.queue.models import AuditEntry, Job

    with (
        database(kind, folder) as db_url,
        server(db_url, folder, tokens_file, args.lease, 0.5) as url,
    ):
        engine = make_engine(db_url)

        async def submit_all() -> None:
            sem = asyncio.Semaphore(20)
            body = {"frontier": FRONTIER, "spec": probe_spec()}
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:

                async def one(i: int) -> None:
                    async with sem:
                        resp = await http.post(
                            "/api/jobs",
                            json=body,
                            headers={
                                "Authorization": f"Bearer r{i % args.clients}",
                                "Idempotency-Key": f"chaos-{i}",
                            },
                        )
                        resp.raise_for_status()

                await asyncio.gather(*(one(i) for i in range(args.chaos_jobs)))

        asyncio.run(submit_all())

        def start_agent(i: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_agent",
                    "--url",
                    url,
                    "--token",
                    f"a{i}",
                    "--lease",
                    str(args.lease),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def released() -> int:
            with engine.connect() as conn:
                stmt = select(func.count()).select_from(Job).where(Job.state == "released")
                return int(conn.execute(stmt).scalar_one())

        rng = random.Random(args.seed)
        rogue_logs = [folder / f"rogue-{i}.jsonl" for i in range(args.rogues)]
        rogues = [
            subprocess.Popen(
                [sys.executable, "-P", __file__, "_rogue", "--url", url, "--token",
                 f"a{max(args.clients, args.agents) + i}", "--lease", str(args.lease)],
                stdout=log.open("w"),
                stderr=subprocess.DEVNULL,
            )
            for i, log in enumerate(rogue_logs)
        ]
        agents = [start_agent(i) for i in range(args.agents)]
        kills = 0
        started = time.monotonic()
        next_kill = started + rng.uniform(args.kill_min, args.kill_max)
        done = 0
        try:
            while time.monotonic() - started < args.chaos_timeout:
                done = released()
                if done >= args.chaos_jobs:
                    break
                if time.monotonic() >= next_kill:
                    victim = rng.randrange(len(agents))
                    agents[victim].send_signal(signal.SIGKILL)
                    agents[victim].wait()
                    kills += 1
                    agents[victim] = start_agent(victim)
                    next_kill = time.monotonic() + rng.uniform(args.kill_min, args.kill_max)
                time.sleep(0.05)
        finally:
            for proc in agents + rogues:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        elapsed = time.monotonic() - started
        rogue_writes: dict[str, dict[str, int]] = {}
        for log in rogue_logs:
            for line in log.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    by = rogue_writes.setdefault(rec["write"], {})
                    by[str(rec["status"])] = by.get(str(rec["status"]), 0) + 1
        accepted = sum(
            n for by in rogue_writes.values() for code, n in by.items() if 200 <= int(code) < 300
        )

        with engine.connect() as conn:
            by_state = select(Job.state, func.count()).group_by(Job.state)
            states = {str(state): int(n) for state, n in conn.execute(by_state)}
            completions: dict[int, int] = {}
            releases: dict[int, int] = {}
            reclaims = 0
            for job_id, action, to_state in conn.execute(
                select(AuditEntry.job_id, AuditEntry.action, AuditEntry.to_state)
            ):
                if action == "result":
                    completions[job_id] = completions.get(job_id, 0) + 1
                if to_state == "released":
                    releases[job_id] = releases.get(job_id, 0) + 1
                if action == "lease_expired":
                    reclaims += 1
        with Session(engine) as session:
            broken = verify(session)
        engine.dispose()

    duplicated = {j for j, n in completions.items() if n > 1} | {
        j for j, n in releases.items() if n > 1
    }
    total = sum(states.values())
    row = {
        "db": kind,
        "jobs": total,
        "agents": args.agents,
        "lease_seconds": args.lease,
        "kills": kills,
        "lease_reclaims": reclaims,
        "released": states.get("released", 0),
        "lost": total - states.get("released", 0),
        "duplicated": len(duplicated),
        "states": states,
        "audit_chain_ok": broken is None,
        "rogues": args.rogues,
        "rogue_writes": rogue_writes,
        "rogue_writes_accepted": accepted,
        "seconds": round(elapsed, 1),
        "jobs_per_second": round(states.get("released", 0) / elapsed, 1),
    }
    print(
        f"  {kind:10} chaos: {row['released']}/{total} released in {row['seconds']} s, "
        f"{kills} kills, {reclaims} lease reclaims, lost {row['lost']}, "
        f"duplicated {row['duplicated']}, audit chain ok: {row['audit_chain_ok']}, "
        f"rogue writes {sum(sum(b.values()) for b in rogue_writes.values())} "
        f"(accepted {accepted}): {rogue_writes}",
        flush=True,
    )
    return row


# -- main -------------------------------------------------------------------------------------


def table(load_rows: list[dict[str, Any]], chaos_rows: list[dict[str, Any]]) -> str:
    lines = []
    if load_rows:
        lines += [
            "| database | operation | requests | per second | p50 (ms) | p99 (ms) | errors |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['db']} | {r['op']} | {r['requests']:,} | {r['per_second']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['errors']} |"
            for r in load_rows
        ]
    if chaos_rows:
        lines += [
            "",
            "| database | jobs | kills | lease reclaims | released | lost | duplicated "
            "| rogue writes (accepted) | audit chain | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        lines += [
            f"| {r['db']} | {r['jobs']:,} | {r['kills']} | {r['lease_reclaims']} "
            f"| {r['released']:,} | {r['lost']} | {r['duplicated']} "
            f"| {sum(sum(b.values()) for b in r['rogue_writes'].values())} "
            f"({r['rogue_writes_accepted']}) "
            f"| {'ok' if r['audit_chain_ok'] else 'BROKEN'} | {r['seconds']} |"
            for r in chaos_rows
        ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_serve", "_agent", "_rogue"):
        sub = argparse.ArgumentParser()
        sub.add_argument("mode")
        sub.add_argument("--db-url")
        sub.add_argument("--home")
        sub.add_argument("--tokens")
        sub.add_argument("--port", type=int)
        sub.add_argument("--url")
        sub.add_argument("--token")
        sub.add_argument("--lease", type=int, default=2)
        sub.add_argument("--sweep", type=float, default=30.0)
        inner = sub.parse_args()
        if inner.mode == "_serve":
            serve(inner)
        elif inner.mode == "_rogue":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            rogue(inner)
        else:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            agent(inner)
        return

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--db", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="per load phase")
    parser.add_argument("--chaos-jobs", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument(
        "--rogues", type=int, default=2, help="agents of the lab trying refused writes"
    )
    parser.add_argument("--lease", type=int, default=2, help="lease seconds in the chaos run")
    parser.add_argument("--chaos-timeout", type=float, default=300.0)
    parser.add_argument(
        "--kill-min", type=float, default=0.5, help="seconds between kills: at least"
    )
    parser.add_argument("--kill-max", type=float, default=2.5, help="and at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-chaos", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    load_rows: list[dict[str, Any]] = []
    chaos_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="analoglab-queue-bench-") as tmp:
        folder = Path(tmp)
        write_catalog(folder)
        tokens_file = folder / "tokens.json"
        tokens_file.write_text(json.dumps(tokens_for(args.clients, args.agents)))
        for kind in args.db:
            if not args.skip_load:
                load_rows += load(kind, args, folder, tokens_file)
            if not args.skip_chaos:
                chaos_rows.append(chaos(kind, args, folder, tokens_file))

    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "clients": args.clients,
        "seconds_per_phase": args.seconds,
        "load": load_rows,
        "chaos": chaos_rows,
    }
    print()
    print(table(load_rows, chaos_rows))
    print()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if any(
        r["lost"] or r["duplicated"] or r["rogue_writes_accepted"] or not r["audit_chain_ok"]
        for r in chaos_rows
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
