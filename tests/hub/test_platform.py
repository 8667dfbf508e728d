"""``analoglab up`` for real: the whole platform as a subprocess on free loopback ports.

One platform per module, in a fresh data folder with a catalog of two labs (the queue tests'
``lab-a``, reviewed by humans, and ``lab-b``) and a lab site for ``lab-a`` without weights, so
no model is built. Checked, in order: a second ``up`` exits 1; ``status --json``;
the admin signs in through nativeauthenticator's login form; ``users add`` makes a researcher
and a reviewer (as root: OS accounts, deleted afterwards); the researcher's server starts as
its own OS user with the shared notebooks and the platform's environment; the queue answers
through the proxy with the right roles; MLflow is never reachable unauthenticated through the
proxy; a job goes from a researcher through the lab's reviewer to the lab's agent (a hub
service signed in with its hub token); SIGINT stops every process of the platform within
10 s; a restart keeps the users.

The platform and its helpers are in this folder's ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from pathlib import Path

import httpx
import psutil
import pytest

from analoglab.queue.client import QueueClient

from ..conftest import free_port
from ..hubtools import run_cell
from ..platformtools import (
    AS_ROOT,
    REPO,
    Running,
    login,
    per_user,
    platform_processes,
    start,
    start_server,
    stop,
)
from ..queue.conftest import probe_spec

pytestmark = pytest.mark.slow


def test_a_second_up_says_it_runs_and_exits_1(platform: Running) -> None:
    second = platform.run("up", "--port", str(free_port()), "--no-build")
    assert second.returncode == 1
    assert "already runs" in second.stderr and platform.url in second.stderr


def test_status_shows_what_runs_and_where(platform: Running) -> None:
    done = platform.run("status", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["running"] and info["url"] == platform.url
    assert info["mode"] == ("per-user" if per_user() else "single-user")
    commands = " ".join(p["command"] for p in info["processes"])
    for part in ("jupyterhub", "configurable-http-proxy", "queue serve", "lab agent", "mlflow"):
        assert part in commands, commands
    assert info["labs"] == ["lab-a", "lab-b"]
    creds = Path(info["credentials"])
    assert creds.stat().st_mode & 0o777 == 0o600


def test_the_admin_signs_in(platform: Running) -> None:
    creds = dict(
        line.split(": ", 1)
        for line in (platform.data / "hub/admin-credentials.txt").read_text().splitlines()
        if ": " in line
    )
    with contextlib.closing(login(platform.url, "admin", creds["password"])) as browser:
        home = browser.get("/hub/home")
        assert home.status_code == 200 and "admin" in home.text
        assert browser.get("/hub/admin").status_code == 200
    # a wrong password does not sign in
    with httpx.Client(base_url=platform.url, timeout=30) as other:
        form = other.get("/hub/login")
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
        assert xsrf
        bad = other.post(
            "/hub/login", data={"username": "admin", "password": "wrong", "_xsrf": xsrf.group(1)}
        )
        assert "Invalid username or password" in bad.text
        assert other.get("/hub/home").status_code == 302  # to the login page


def test_users_add_a_researcher_and_a_reviewer(platform: Running) -> None:
    tag = secrets.token_hex(3)
    for name, extra in ((f"r{tag}", []), (f"v{tag}", ["--reviewer", "lab-a"])):
        done = platform.run("users", "add", name, *extra, "--json")
        assert done.returncode == 0, done.stderr
        added = json.loads(done.stdout)
        platform.users[name] = added["password"]
        assert added["os_user_created"] is per_user()
    researcher, reviewer = platform.users
    assert platform.run("users", "add", "Not A Name").returncode == 1
    bad_lab = platform.run("users", "add", f"x{tag}", "--reviewer", "no-such-lab")
    assert bad_lab.returncode == 1 and "no lab 'no-such-lab'" in bad_lab.stderr
    listed = json.loads(platform.run("users", "list", "--json").stdout)
    groups = {u["name"]: u["groups"] for u in listed["users"]}
    assert groups[researcher] == ["researchers"]
    assert groups[reviewer] == ["reviewers-lab-a"]
    with contextlib.closing(login(platform.url, researcher, platform.users[researcher])) as browser:
        assert browser.get("/hub/home").status_code == 200


def test_the_queue_answers_through_the_proxy_with_hub_roles(platform: Running) -> None:
    researcher, reviewer = list(platform.users)[:2]
    queue = platform.url + "/services/queue"
    r_token, v_token = platform.user_token(researcher), platform.user_token(reviewer)

    def get(path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(queue + path, headers=headers, timeout=30).status_code

    assert get("/health", None) == 200
    assert get("/api/jobs", None) == 401
    assert get("/api/jobs", r_token) == 200
    assert get("/api/labs/lab-a/queue", v_token) == 200
    assert get("/api/labs/lab-a/queue", r_token) == 403
    assert get("/api/labs/lab-b/queue", v_token) == 403


def test_a_job_goes_through_review_to_the_labs_agent(platform: Running) -> None:
    """A researcher submits to lab-a's frontier, the lab's reviewer approves, and the lab's
    agent (the hub service agent-lab-a, signed in with its hub token) claims it; with no
    weights on this site, the job fails there."""
    researcher, reviewer = list(platform.users)[:2]
    queue = platform.url + "/services/queue"
    with QueueClient(queue, platform.user_token(researcher)) as ada:
        job = ada.submit(probe_spec(), "frontier-a")
        assert job["submitter"] == researcher and job["state"] == "awaiting_review"
        with QueueClient(queue, platform.user_token(reviewer)) as rita:
            job = rita.review(job["id"], "approve", "fine")
            assert job["state"] == "approved"
        # the lab's agent claims it with its hub token: the job leaves `approved`, or comes back
        # to it with an attempt counted (attempts count failed runs and lost leases, not claims)
        deadline = time.monotonic() + 180
        while job["state"] == "approved" and not job.get("attempts"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
            job = ada.get(job["id"])
        assert job["state"] not in ("awaiting_review", "released"), job
    log = (platform.data / "hub/logs/jupyterhub.log").read_text(errors="replace")
    assert "lab agent of lab-a" in log


def test_mlflow_is_never_open_through_the_proxy(platform: Running) -> None:
    resp = httpx.get(
        platform.url + "/services/mlflow/api/2.0/mlflow/experiments/search", timeout=30
    )
    assert resp.status_code in (401, 403, 404), resp.text[:500]
    state = platform.state()
    if state["services"]["mlflow"]["gated"]:
        researcher = next(iter(platform.users))
        token = platform.user_token(researcher)
        ok = httpx.get(
            platform.url + "/services/mlflow/api/2.0/mlflow/experiments/search?max_results=1",
            headers={"Authorization": f"token {token}"},
            timeout=60,
        )
        assert ok.status_code in (200, 503), ok.text[:500]  # 503: MLflow still starting


def test_a_researchers_server_starts_with_the_platform_around_it(platform: Running) -> None:
    researcher = next(iter(platform.users))
    token = platform.user_token(researcher)
    headers = {"Authorization": f"token {token}"}
    start_server(platform, researcher, token)
    lab = httpx.get(f"{platform.url}/user/{researcher}/api/status", headers=headers, timeout=30)
    assert lab.status_code == 200, lab.text
    server = next(
        p
        for p in psutil.process_iter(["cmdline", "username"])
        if any("jupyterhub-singleuser" in part for part in p.info["cmdline"] or [])
        and p.environ().get("JUPYTERHUB_USER") == researcher
    )
    env = server.environ()
    assert env["ANALOGLAB_QUEUE_URL"] == platform.url + "/services/queue"
    assert env["ANALOGLAB_MODEL_STORE"] == str(platform.data / "models")
    assert env["MLFLOW_TRACKING_TOKEN"] == env["JUPYTERHUB_API_TOKEN"]
    home = Path(env["HOME"])
    if per_user():
        assert server.info["username"] == researcher  # its own OS user
        assert home.stat().st_uid == server.uids().real
        assert home.stat().st_mode & 0o077 == 0  # other users cannot read it
    notebooks = sorted(p.name for p in (REPO / "shared-notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in (home / "shared-notebooks").glob("*.ipynb")) == notebooks


def test_users_cannot_read_each_others_files(platform: Running) -> None:
    """Two users' servers, each its own OS user: what one writes in its home, the other's
    kernel can neither read nor list; a kernel runs as its user and writes as its user."""
    if not per_user():
        if AS_ROOT and os.environ.get("CI"):
            pytest.fail("as root there must be a Python every OS user may run (shared_python)")
        pytest.skip("one OS user per hub user needs root")
    researcher, reviewer = list(platform.users)[:2]
    r_token, v_token = platform.user_token(researcher), platform.user_token(reviewer)
    start_server(platform, reviewer, v_token)
    theirs = f"{platform.url}/user/{reviewer}"
    secret = secrets.token_hex(8)
    put = httpx.put(
        f"{theirs}/api/contents/secret.txt",
        headers={"Authorization": f"token {v_token}"},
        json={"type": "file", "format": "text", "content": secret},
        timeout=30,
    )
    assert put.status_code == 201, put.text
    their_home = platform.data / "homes" / reviewer
    assert (their_home / "secret.txt").read_text() == secret  # root can: it is there
    code = f"""
import os, pwd, pathlib
print("user", pwd.getpwuid(os.getuid()).pw_name)
for what, act in (("read", lambda: open({str(their_home / "secret.txt")!r}).read()),
                  ("list", lambda: os.listdir({str(their_home)!r}))):
    try:
        act()
        print(what, "ALLOWED")
    except PermissionError:
        print(what, "denied")
mine = pathlib.Path.home() / "mine.txt"
mine.write_text("x")
mode = pathlib.Path.home().stat().st_mode & 0o777
print("owner", pwd.getpwuid(mine.stat().st_uid).pw_name, oct(mode))
"""
    out = run_cell(f"{platform.url}/user/{researcher}", r_token, code)
    assert f"user {researcher}" in out
    assert "read denied" in out and "list denied" in out, out
    assert f"owner {researcher} 0o700" in out, out
    assert secret not in out


def test_sigint_stops_everything_and_a_restart_keeps_the_users(platform: Running) -> None:
    state = platform.state()
    pids = [p.pid for p in psutil.Process(state["pid"]).children(recursive=True)]
    assert len(pids) >= 5
    seconds = stop(platform)
    assert platform.proc.returncode == 0, platform.output.read_text()[-2000:]
    assert seconds < 10, platform.output.read_text()[-2000:]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert platform_processes(state["platform_id"]) == []
    assert platform.run("status").returncode == 1

    again = start(platform.data, platform.env, free_port())
    try:
        listed = json.loads(again.run("users", "list", "--json").stdout)
        assert set(platform.users) <= {u["name"] for u in listed["users"]}
        researcher = next(iter(platform.users))
        with contextlib.closing(
            login(again.url, researcher, platform.users[researcher])
        ) as browser:
            assert browser.get("/hub/home").status_code == 200
    finally:
        assert stop(again) < 10
