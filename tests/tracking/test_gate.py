"""The MLflow gate: MLflow behind the hub's sign-in, against a real JupyterHub and MLflow.

One hub per module (dummy authenticator, configurable-http-proxy) with the gate as a hub
service: ``mlflow-gate`` is the gate running in this process (uvicorn in a thread, an external
service of the hub) in front of the session's MLflow server (``tests/tracking/conftest.py``).
Checked: page requests without a session go to the hub's OAuth; API calls without a token
are 401, with a token lacking the service's access scope 403; MLflow's own client logs a run
(metrics, an artifact of megabytes) and reads it back through the hub's proxy with a hub
token; a browser signs in with the hub's login form and gets the MLflow UI, its scripts and
its ajax API; signing out (here, or of the hub) and an expired or forged cookie send the
browser to sign in again; cross-site writes, paths escaping the prefix and huge headers are
refused. What the gate forwards (headers, streamed bodies both ways, redirects) is checked
against an echo server standing in for MLflow. The pure path and header functions of
``analoglab.tracking.proxy`` are tested as data first (not slow).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from analoglab.tracking.gate import SESSION_COOKIE, GateConfig, MlflowGate, create_gate
from analoglab.tracking.proxy import (
    PathRefused,
    is_same_origin,
    request_headers,
    response_headers,
    rewrite_location,
    safe_next,
    upstream_path,
)

from ..conftest import free_port, serve_app
from ..hubtools import base_config, running_hub
from .conftest import ServerProcess

GATE = "mlflow-gate"
PREFIX = f"/services/{GATE}"
ACCESS = f"access:services!service={GATE}"
USER, OUTSIDER = "ada", "nobody"
MANAGED = "mlflow"  # `analoglab tracking gate` as the hub runs it
MANAGED_ACCESS = f"access:services!service={MANAGED}"


# -- the pure parts ---------------------------------------------------------------------------


def test_paths_are_stripped_of_the_prefix_and_never_escape_it() -> None:
    p = "/services/mlflow"
    assert upstream_path(p + "/", p) == "/"
    assert upstream_path(p, p) == "/"
    assert upstream_path(p + "/ajax-api/2.0/mlflow/runs/get", p) == "/ajax-api/2.0/mlflow/runs/get"
    assert upstream_path(p + "/get-artifact%2Fx", p) == "/get-artifact%2Fx"  # kept encoded
    for bad in (
        p + "/../../hub/api",
        p + "/%2e%2e/%2E%2E/hub/api",
        p + "/a/./b",
        p + "/a/..",
        p + "/..%5c..%5chub",
        p + "/a%00b",
    ):
        with pytest.raises(PathRefused):
            upstream_path(bad, p)
    for outside in ("/services/mlflowx/", "/hub/api", "/services/"):
        with pytest.raises(PathRefused, match="not under"):
            upstream_path(outside, p)


def test_forwarded_headers_drop_credentials_and_hop_by_hop_ones() -> None:
    incoming = [
        ("Host", "hub.example.org"),
        ("Authorization", "Bearer secret-hub-token"),
        ("Cookie", "analoglab-mlflow-session=abc; jupyterhub-session-id=x"),
        ("Origin", "https://hub.example.org"),
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("X-Secret-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("X-Analoglab-User", "admin"),  # forged
        ("X-Forwarded-For", "10.0.0.1"),
        ("Content-Type", "application/json"),
        ("Accept", "*/*"),
    ]
    out = request_headers(
        incoming,
        user=USER,
        client="127.0.0.1",
        proto="https",
        host="hub.example.org",
        prefix="/services/mlflow",
    )
    names = [name.lower() for name, _ in out]
    for gone in ("host", "authorization", "cookie", "origin", "connection", "x-secret-hop"):
        assert gone not in names
    assert "keep-alive" not in names and "transfer-encoding" not in names
    assert dict(out)["X-Analoglab-User"] == USER and names.count("x-analoglab-user") == 1
    assert dict(out)["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert dict(out)["X-Forwarded-Proto"] == "https"
    assert dict(out)["X-Forwarded-Prefix"] == "/services/mlflow"
    assert ("Content-Type", "application/json") in out and ("Accept", "*/*") in out


def test_responses_lose_cookies_and_keep_redirects_under_the_prefix() -> None:
    up, p = "http://127.0.0.1:5999", "/services/mlflow"
    out = response_headers(
        [
            ("Set-Cookie", "x=1; Path=/"),
            ("Server", "uvicorn"),
            ("Connection", "close"),
            ("Location", f"{up}/static-files/x.js"),
            ("Content-Type", "text/html"),
            ("Vary", "Accept"),
            ("Vary", "Origin"),
        ],
        upstream=up,
        prefix=p,
    )
    assert out == [
        ("Location", f"{p}/static-files/x.js"),
        ("Content-Type", "text/html"),
        ("Vary", "Accept"),
        ("Vary", "Origin"),
    ]
    assert rewrite_location("/#/experiments", upstream=up, prefix=p) == f"{p}/#/experiments"
    assert rewrite_location("runs/1", upstream=up, prefix=p) == "runs/1"
    assert rewrite_location("//evil.example/x", upstream=up, prefix=p) == "//evil.example/x"
    assert rewrite_location("https://elsewhere/x", upstream=up, prefix=p) == "https://elsewhere/x"


def test_sign_in_returns_only_under_the_prefix_and_writes_need_the_same_origin() -> None:
    p = "/services/mlflow"
    assert safe_next(f"{p}/?x=1", p) == f"{p}/?x=1"
    for bad in (None, "", "https://evil.example/", "//evil.example/", f"{p}/../../hub", "/hub/"):
        assert safe_next(bad, p) == f"{p}/"
    host = "hub.example.org"
    assert is_same_origin("https://hub.example.org", None, host)
    assert is_same_origin(None, "https://hub.example.org/services/mlflow/", host)
    assert not is_same_origin("https://evil.example", "https://hub.example.org/", host)
    assert not is_same_origin("null", None, host)
    assert not is_same_origin(None, None, host)


# -- a real hub -------------------------------------------------------------------------------


@dataclass
class Hub:
    public_url: str
    api_url: str
    admin_token: str
    gate: MlflowGate
    gate_url: str
    log: Path

    def api(self, method: str, path: str, timeout: float = 10, **kwargs: Any) -> Any:
        resp = httpx.request(
            method,
            self.api_url + path,
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=timeout,
            **kwargs,
        )
        assert resp.status_code < 300, resp.text
        return resp.json() if resp.content else None

    def token(self, user: str, scopes: list[str] | None = None) -> str:
        body: dict[str, Any] = {"note": "gate test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        return str(self.api("POST", f"/users/{user}/tokens", json=body)["token"])

    @property
    def gate_public(self) -> str:
        return self.public_url + PREFIX

    @contextlib.contextmanager
    def sign_in(self, user: str = USER) -> Iterator[httpx.Client]:
        """A browser session: the gate's page → the hub's login form → back, signed in."""
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            page = browser.get(self.gate_public + "/")
            assert page.url.path == "/hub/login", page.url
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
            assert xsrf is not None, page.text[:2000]
            landed = browser.post(
                str(page.url),
                data={"username": user, "password": "any", "_xsrf": xsrf.group(1)},
            )
            assert landed.status_code == 200, landed.text[:2000]
            assert landed.url.path == PREFIX + "/", landed.url
            assert '<div id="root"' in landed.text and "<title>MLflow</title>" in landed.text
            yield browser


def hub_config(work: Path, ports: dict[str, int], tokens: dict[str, str], gate_url: str) -> str:
    roles = [
        {
            "name": "gate-test-admin",
            "scopes": ["admin:users", "admin:servers", "tokens"],
            "services": ["tester"],
        },
        {"name": "mlflow-users", "scopes": [ACCESS, MANAGED_ACCESS], "users": [USER]},
        {"name": "others", "scopes": ["self"], "users": [OUTSIDER]},
    ]
    services = [
        {"name": "tester", "api_token": tokens["tester"]},
        {"name": GATE, "url": gate_url, "api_token": tokens["gate"], "oauth_no_confirm": True},
    ]
    services.append(
        {  # as `analoglab up` runs it: the gate and its own MLflow, one managed service
            "name": MANAGED,
            "url": f"http://127.0.0.1:{ports['managed']}",
            "command": [
                sys.executable,
                "-m",
                "analoglab",
                "tracking",
                "gate",
                "--mlflow-port",
                str(ports["mlflow"]),
            ],
            "environment": {"ANALOGLAB_HOME": str(work / "mlflow-home")},
            "oauth_no_confirm": True,
        }
    )
    # a notebook server's token may reach the MLflow services (the default `server` role
    # may not reach any service)
    server_scopes = ["users:activity!user", "access:servers!server", ACCESS, MANAGED_ACCESS]
    return "\n".join(
        [
            *base_config(work, ports),
            f"c.JupyterHub.load_roles = {roles!r}",
            f"c.JupyterHub.services = {services!r}",
            f"c.Spawner.server_token_scopes = {server_scopes!r}",
            'c.Spawner.environment = {"OMP_NUM_THREADS": "1"}',
        ]
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, server_process: ServerProcess) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("gate-hub")
    ports = {k: free_port() for k in ("public", "hub", "proxy_api", "managed", "mlflow")}
    tokens = {k: secrets.token_hex(16) for k in ("tester", "gate")}
    api_url = f"http://127.0.0.1:{ports['hub']}/hub/api"
    gate = create_gate(
        GateConfig(
            upstream=server_process.wait(),
            prefix=PREFIX,
            api_url=api_url,
            api_token=tokens["gate"],
            client_id=f"service-{GATE}",
            callback_url=f"{PREFIX}/oauth_callback",
            authorize_url="/hub/api/oauth2/authorize",
            access_scopes=frozenset({ACCESS}),
            cache_seconds=1,  # so that a revoked token is seen at once
        )
    )
    with serve_app(gate) as gate_url, running_hub(work, hub_config(work, ports, tokens, gate_url)):
        yield Hub(
            f"http://127.0.0.1:{ports['public']}",
            api_url,
            tokens["tester"],
            gate,
            gate_url,
            work / "hub.log",
        )
    # the hub stopped its services: the managed gate stopped its MLflow
    deadline = time.monotonic() + 15
    while port_open(ports["mlflow"]):
        if time.monotonic() > deadline:
            pytest.fail(f"the managed service's MLflow still listens on {ports['mlflow']}")
        time.sleep(0.2)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_pages_without_a_session_go_to_the_hubs_sign_in(hub: Hub) -> None:
    for path in ("/", "/#/experiments/0", "/static-files/static/js/x.js", "/?next=x"):
        resp = httpx.get(hub.gate_public + path, timeout=10)
        assert resp.status_code == 302, (path, resp.text)
        target = httpx.URL(resp.headers["location"])
        assert target.path == "/hub/api/oauth2/authorize"
        assert target.params["client_id"] == f"service-{GATE}"
        assert target.params["redirect_uri"] == f"{PREFIX}/oauth_callback"
        assert target.params["state"] and target.params["code_challenge_method"] == "S256"
        assert "MLflow" not in resp.text and "root" not in resp.text
        state = resp.headers["set-cookie"]
        assert "HttpOnly" in state and "SameSite=lax" in state and f"Path={PREFIX}/" in state
    bare = httpx.get(hub.gate_public, timeout=10)
    assert bare.status_code == 302 and bare.headers["location"] == PREFIX + "/"
    # the health check is open (it tells nothing)
    health = httpx.get(hub.gate_public + "/health", timeout=10)
    assert health.status_code == 200 and health.text.strip() == "OK"


@pytest.mark.slow
def test_api_calls_need_a_hub_token_with_access(hub: Hub) -> None:
    search = hub.gate_public + "/api/2.0/mlflow/experiments/search?max_results=5"
    for headers in ({}, bearer("x" * 300), bearer("not a token"), bearer(secrets.token_hex(16))):
        resp = httpx.get(search, headers=headers, timeout=10)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error_code"] == "UNAUTHENTICATED"
        assert "experiments" not in resp.json()
    posted = httpx.post(
        hub.gate_public + "/api/2.0/mlflow/experiments/create", json={"name": "x"}, timeout=10
    )
    assert posted.status_code == 401
    ajax = httpx.get(hub.gate_public + "/ajax-api/2.0/mlflow/experiments/search", timeout=10)
    assert ajax.status_code == 401  # a program's path: no redirect to a login page

    for token in (hub.token(OUTSIDER), hub.token(USER, scopes=["read:users!user=ada"])):
        resp = httpx.get(search, headers=bearer(token), timeout=10)
        assert resp.status_code == 403, resp.text
        assert ACCESS in resp.json()["message"]
    for scheme in ("Bearer", "token"):
        ok = httpx.get(search, headers={"Authorization": f"{scheme} {hub.token(USER)}"}, timeout=10)
        assert ok.status_code == 200, ok.text
        assert "experiments" in ok.json()


@pytest.mark.slow
def test_the_mlflow_client_logs_and_reads_a_run_through_the_proxy(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", hub.token(USER))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri=hub.gate_public + "/")
    experiment = client.create_experiment(f"gate-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.25, step=3)
    client.log_param(run.info.run_id, "via", "gate")
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(6 * 1024 * 1024))  # artifacts stream through, both ways
    client.log_artifact(run.info.run_id, str(blob))
    client.set_terminated(run.info.run_id)

    back = client.get_run(run.info.run_id)
    assert back.data.metrics["loss"] == 0.25 and back.data.params["via"] == "gate"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [3]
    fetched = Path(client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "d")))
    assert (
        hashlib.sha256(fetched.read_bytes()).digest() == hashlib.sha256(blob.read_bytes()).digest()
    )

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", hub.token(OUTSIDER))
    with pytest.raises(Exception, match="403|PERMISSION_DENIED|may not use MLflow"):
        MlflowClient(tracking_uri=hub.gate_public + "/").get_run(run.info.run_id)


@pytest.mark.slow
def test_a_browser_signs_in_with_the_hub_and_gets_the_ui(hub: Hub) -> None:
    with hub.sign_in() as browser:
        cookie = next(c for c in browser.cookies.jar if c.name == SESSION_COOKIE)
        assert cookie.path == PREFIX + "/" and cookie.has_nonstandard_attr("HttpOnly")
        assert not cookie.secure  # plain http here; Secure when the hub is reached over https
        page = browser.get(hub.gate_public + "/")
        script = re.search(r'src="(static-files/static/js/main\.[^"]+\.js)"', page.text)
        assert script is not None
        js = browser.get(f"{hub.gate_public}/{script.group(1)}")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert len(js.content) > 100_000
        # the UI's ajax API, with the cookie only
        listed = browser.get(
            hub.gate_public + "/ajax-api/2.0/mlflow/experiments/search?max_results=5"
        )
        assert listed.status_code == 200 and "experiments" in listed.json()
        search = hub.gate_public + "/ajax-api/2.0/mlflow/experiments/search"
        same = browser.post(search, json={"max_results": 5}, headers={"Origin": hub.public_url})
        assert same.status_code == 200, same.text
        for origin in ({}, {"Origin": "http://evil.example"}):
            forged = browser.post(search, json={"max_results": 5}, headers=origin)
            assert forged.status_code == 403 and "cross-site" in forged.json()["message"]


@pytest.mark.slow
def test_signing_out_or_an_old_cookie_sends_the_browser_to_sign_in_again(hub: Hub) -> None:
    def signed_in(browser: httpx.Client) -> bool:
        resp = browser.get(hub.gate_public + "/", follow_redirects=False)
        assert resp.status_code in (200, 302), resp.text
        return resp.status_code == 200 and '<div id="root"' in resp.text

    with hub.sign_in() as browser:  # the gate's sign-out, which signs out of the hub too
        out = browser.get(hub.gate_public + "/logout", follow_redirects=False)
        assert out.status_code == 302 and out.headers["location"] == "/hub/logout"
        browser.get(hub.public_url + "/hub/logout")
        assert not signed_in(browser)
        again = browser.get(hub.gate_public + "/")
        assert again.url.path == "/hub/login"  # the hub asks for the password again

    with hub.sign_in() as browser:  # signing out of the hub revokes the gate's token
        cookie = browser.cookies.get(SESSION_COOKIE, path=PREFIX + "/")
        browser.get(hub.public_url + "/hub/logout")
        time.sleep(1.5)  # the gate caches the hub's answers for a second here
        assert not signed_in(browser)
        # the old cookie, replayed, opens nothing either
        replay = httpx.get(
            hub.gate_public + "/", cookies={SESSION_COOKIE: cookie or ""}, timeout=10
        )
        assert replay.status_code == 302

    with hub.sign_in() as browser:
        assert signed_in(browser)
        hub.gate.sessions.max_age = 0  # every session is now older than the gate allows
        try:
            time.sleep(1.1)
            assert not signed_in(browser)
        finally:
            hub.gate.sessions.max_age = 12 * 3600

    for forged in ("x", "abc.def.ghi", secrets.token_urlsafe(40)):
        resp = httpx.get(hub.gate_public + "/", cookies={SESSION_COOKIE: forged}, timeout=10)
        assert resp.status_code == 302


@pytest.mark.slow
def test_a_callback_without_its_state_is_refused(hub: Hub) -> None:
    resp = httpx.get(hub.gate_public + "/oauth_callback?code=abc&state=def", timeout=10)
    assert resp.status_code == 400 and "Sign in again" in resp.text
    with hub.sign_in() as browser:
        browser.cookies.delete(SESSION_COOKIE)  # signed in to the hub, not (yet) here
        start = browser.get(hub.gate_public + "/?x=1", follow_redirects=False)
        state = httpx.URL(start.headers["location"]).params["state"]
        wrong = browser.get(
            f"{hub.gate_public}/oauth_callback?code=abc&state={state}x", follow_redirects=False
        )
        assert wrong.status_code == 400
        bad_code = browser.get(
            f"{hub.gate_public}/oauth_callback?code=abc&state={state}", follow_redirects=False
        )
        assert bad_code.status_code == 400 and "did not accept" in bad_code.text


@pytest.mark.slow
def test_the_mlflow_ui_renders_in_a_real_browser(hub: Hub, tmp_path: Path) -> None:
    """Headless Chromium signs in with the hub's login form and sees MLflow's app render
    through the gate (its scripts, styles and ajax API); screenshots under tmp_path."""
    from ..browser import Browser

    with Browser(tmp_path / "browser") as browser:
        browser.open(hub.gate_public + "/")
        assert "/hub/login" in browser.url()
        browser.screenshot(tmp_path / "1-hub-login.png")
        browser.fill_and_submit({"#username_input": USER, "#password_input": "any"})
        browser.wait_for(f"location.pathname === {PREFIX + '/'!r}")
        # the React app rendered its home page, which lists experiments from the ajax API
        browser.wait_for(
            "document.querySelector('#root') && "
            "document.querySelector('#root').innerText.includes('Experiments')",
            timeout=60,
        )
        browser.wait_for("document.querySelector('#root').innerText.includes('Default')", 60)
        shot = browser.screenshot(tmp_path / "2-mlflow-ui.png")
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
        assert not browser.errors, browser.errors


def raw_request(port: int, head: str) -> tuple[int, bytes]:
    """Send ``head`` as it is (no client-side path normalisation); the status and body
    (status 0: the server closed the connection without an answer)."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head.encode("latin-1"))
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            if not data:
                return 0, b""
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.slow
def test_paths_escaping_the_prefix_and_huge_headers_are_refused(hub: Hub) -> None:
    token = hub.token(USER)
    public_port = httpx.URL(hub.public_url).port
    gate_port = httpx.URL(hub.gate_url).port
    assert public_port and gate_port
    for path in (
        f"{PREFIX}/../../hub/api/user",
        f"{PREFIX}/%2e%2e/%2e%2e/hub/api/user",
        f"{PREFIX}/ajax-api/../../../hub/api/user",
        f"{PREFIX}/api/2.0/mlflow/../../../../../etc/passwd",
    ):  # at the gate itself, even with a token that may use MLflow
        status, body = raw_request(
            gate_port,
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {token}\r\n"
            "Connection: close\r\n\r\n",
        )
        assert status == 400 and b"dot segments" in body, (path, status, body[:300])
    for path in (  # through the proxy, dot tricks still meet the gate's checks
        f"{PREFIX}/../{GATE}/api/2.0/mlflow/experiments/search",
        f"/services/other/../{GATE}/api/2.0/mlflow/experiments/search",
        f"{PREFIX}/%2e%2e/{GATE}/api/2.0/mlflow/experiments/search",
        f"/hub/../services/{GATE}/api/2.0/mlflow/experiments/search",
    ):
        status, body = raw_request(
            public_port,
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        assert status in (400, 401, 404), (path, status, body[:300])
        assert b"experiments" not in body
    for port in (public_port, gate_port):
        for size in (40_000, 200_000):  # refused with a 4xx, or the connection dropped
            status, _ = raw_request(
                port,
                f"GET {PREFIX}/api/2.0/mlflow/experiments/search HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nX-Big: {'a' * size}\r\nConnection: close\r\n\r\n",
            )
            assert status == 0 or 400 <= status < 500, (port, size, status)
    # and the gate still serves
    ok = httpx.get(
        hub.gate_public + "/api/2.0/mlflow/experiments/search?max_results=1",
        headers=bearer(token),
        timeout=10,
    )
    assert ok.status_code == 200


def wait_for(what: str, check: Any, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {seconds:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


def run_in_kernel(hub: Hub, user: str, token: str, code: str, seconds: float = 180) -> str:
    """Run ``code`` in a new python3 kernel of ``user``'s single-user server (its REST API
    and kernel websocket, through the hub's proxy); what it printed. A raised error fails."""
    import json

    import websocket

    base = f"{hub.public_url}/user/{user}"
    auth = {"Authorization": f"token {token}"}
    kernel = httpx.post(f"{base}/api/kernels", json={"name": "python3"}, headers=auth, timeout=30)
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    ws_url = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=30)
    msg_id, output = uuid.uuid4().hex, []
    try:
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": user,
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                output.append(content["text"])
            elif kind == "error":
                pytest.fail("the kernel raised:\n" + "\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(output)
        pytest.fail(f"the kernel did not finish in {seconds:.0f} s: {''.join(output)}")
    finally:
        ws.close()
        httpx.delete(f"{base}/api/kernels/{kernel_id}", headers=auth, timeout=30)


@pytest.mark.slow
def test_a_notebook_logs_to_mlflow_with_its_server_token(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform's way: a single-user server's JUPYTERHUB_API_TOKEN as MLflow's token,
    the managed gate (`analoglab tracking gate`, with its own MLflow) at /services/mlflow/."""
    managed = f"{hub.public_url}/services/{MANAGED}"
    wait_for(
        "the managed gate's MLflow",
        lambda: httpx.get(managed + "/health", timeout=5).status_code == 200,
        120,
        hub.log,
    )
    hub.api("POST", f"/users/{USER}/server", timeout=60)  # 202 once the spawn takes long
    wait_for(
        f"{USER}'s server",
        lambda: hub.api("GET", f"/users/{USER}")["servers"].get("", {}).get("ready"),
        90,
        hub.log,
    )
    token = hub.token(USER)
    try:
        experiment = f"notebook-{uuid.uuid4().hex[:8]}"
        printed = run_in_kernel(
            hub,
            USER,
            token,
            "import os\n"
            f"os.environ['MLFLOW_TRACKING_URI'] = {managed + '/'!r}\n"
            "os.environ['MLFLOW_TRACKING_TOKEN'] = os.environ['JUPYTERHUB_API_TOKEN']\n"
            "import mlflow\n"
            f"mlflow.set_experiment({experiment!r})\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('loss', 0.125)\n"
            "print('RUN', run.info.run_id)\n",
        )
        run_id = printed.split("RUN ", 1)[1].split()[0]
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        back = MlflowClient(tracking_uri=managed + "/").get_run(run_id)
        assert back.data.metrics["loss"] == 0.125
        # and without a token, the same MLflow is closed
        resp = httpx.get(f"{managed}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10)
        assert resp.status_code == 401
    finally:
        httpx.delete(
            f"{hub.api_url}/users/{USER}/server",
            headers={"Authorization": f"token {hub.admin_token}"},
            timeout=60,
        )


@pytest.mark.slow
def test_the_command_fronts_a_running_mlflow_and_stops_on_sigterm(mlflow_server: str) -> None:
    """``analoglab tracking gate --upstream`` (how `analoglab up` may run it, beside its own
    MLflow service): the service environment is all it needs; SIGTERM stops it at once."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "MLFLOW_"))}
    env.update(
        JUPYTERHUB_SERVICE_NAME="mlflow",
        JUPYTERHUB_API_TOKEN=secrets.token_hex(16),
        JUPYTERHUB_CLIENT_ID="service-mlflow",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
        JUPYTERHUB_SERVICE_PREFIX="/services/mlflow/",
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{free_port()}/hub/api",
    )
    command = [sys.executable, "-m", "analoglab", "tracking", "gate", "--upstream", mlflow_server]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}/services/mlflow"
    try:
        deadline = time.monotonic() + 60
        while not port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        assert httpx.get(base + "/health", timeout=10).text.strip() == "OK"
        closed = httpx.get(base + "/api/2.0/mlflow/experiments/search", timeout=10)
        assert closed.status_code == 401
        page = httpx.get(base + "/", timeout=10)
        assert page.status_code == 302 and "client_id=service-mlflow" in page.headers["location"]
        assert page.headers["location"].startswith("/hub/api/oauth2/authorize?")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert httpx.get(mlflow_server + "/health", timeout=10).status_code == 200  # left alone


# -- what is forwarded, seen by an echo server standing in for MLflow -------------------------


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers what it was sent: headers, body length and digest; ``/big`` streams 8 MiB;
    ``/redirect`` redirects from its root; ``/cookie`` sets a cookie."""
    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    response: Response
    if request.url.path == "/big":

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(128):
                yield bytes([i]) * 65536

        response = StreamingResponse(chunks(), media_type="application/octet-stream")
    elif request.url.path == "/redirect":
        response = Response(status_code=302, headers={"Location": "/#/experiments"})
    else:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        response = JSONResponse(
            {
                "path": request.url.path,
                "query": request.url.query,
                "method": request.method,
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "size": size,
                "sha256": digest.hexdigest(),
            },
            headers={"Set-Cookie": "mlflow=1; Path=/"},
        )
    await response(scope, receive, send)


@pytest.mark.slow
async def test_requests_and_answers_are_forwarded_streamed_and_cleaned(hub: Hub) -> None:
    with serve_app(echo) as upstream:
        gate = create_gate(
            GateConfig(
                upstream=upstream,
                prefix=PREFIX,
                api_url=hub.api_url,
                api_token="unused-here",
                client_id=f"service-{GATE}",
                access_scopes=frozenset({ACCESS}),
            )
        )
        token = hub.token(USER)
        transport = httpx.ASGITransport(app=gate, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hub.example.org", timeout=30
        ) as c:
            body = os.urandom(3 * 1024 * 1024)

            async def upload() -> AsyncIterator[bytes]:
                for i in range(0, len(body), 100_000):
                    yield body[i : i + 100_000]

            resp = await c.put(
                f"{PREFIX}/api/2.0/mlflow-artifacts/artifacts/x%2Fy?a=1&b=2",
                content=upload(),
                headers={
                    **bearer(token),
                    "X-Analoglab-User": "admin",
                    "Cookie": "jupyterhub-session-id=secret",
                    "X-Forwarded-Proto": "https",
                    "Connection": "X-Hop",
                    "X-Hop": "1",
                },
            )
            assert resp.status_code == 200, resp.text
            seen = resp.json()
            headers = {k: v for k, v in seen["headers"]}
            assert seen["path"] == "/api/2.0/mlflow-artifacts/artifacts/x/y"
            assert seen["query"] == "a=1&b=2" and seen["method"] == "PUT"
            assert seen["size"] == len(body)
            assert seen["sha256"] == hashlib.sha256(body).hexdigest()
            assert headers["x-analoglab-user"] == USER
            assert [k for k, _ in seen["headers"]].count("x-analoglab-user") == 1
            assert "authorization" not in headers and "cookie" not in headers
            assert "x-hop" not in headers
            assert headers["x-forwarded-for"] == "10.1.2.3"
            assert headers["x-forwarded-proto"] == "https"
            assert headers["x-forwarded-host"] == "hub.example.org"
            assert headers["x-forwarded-prefix"] == PREFIX
            assert headers["host"] == httpx.URL(upstream).netloc.decode()
            assert "set-cookie" not in resp.headers  # MLflow's cookies stay home

            got = hashlib.sha256()
            async with c.stream("GET", f"{PREFIX}/big", headers=bearer(token)) as stream:
                assert stream.status_code == 200
                async for chunk in stream.aiter_bytes():
                    got.update(chunk)
            want = hashlib.sha256(b"".join(bytes([i]) * 65536 for i in range(128)))
            assert got.hexdigest() == want.hexdigest()

            moved = await c.get(f"{PREFIX}/redirect", headers=bearer(token))
            assert moved.status_code == 302
            assert moved.headers["location"] == f"{PREFIX}/#/experiments"
        await gate.aclose()

    # MLflow down (or still starting): a 503 saying so
    gate = create_gate(
        GateConfig(
            upstream=f"http://127.0.0.1:{free_port()}",
            prefix=PREFIX,
            api_url=hub.api_url,
            api_token="unused-here",
            client_id=f"service-{GATE}",
            access_scopes=frozenset({ACCESS}),
        )
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gate), base_url="http://hub.example.org"
    ) as c:
        resp = await c.get(f"{PREFIX}/api/2.0/mlflow/experiments/search", headers=bearer(token))
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        assert "not reachable" in resp.json()["message"]
    await gate.aclose()


# -- the supervisor of the MLflow child --------------------------------------------------------


def test_only_mlflows_own_answer_counts_as_healthy(mlflow_server: str) -> None:
    """Another service on MLflow's port (a hub: ``/health`` redirects to a page that answers
    200) is not taken for MLflow, so nobody says MLflow is ready while the hub answers."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    from analoglab.tracking.server import is_healthy

    def page(text: str) -> Any:
        return lambda _request: PlainTextResponse(text)

    hub_like = Starlette(
        routes=[
            Route("/health", lambda _request: RedirectResponse("/hub/health", 302)),
            Route("/hub/health", page("OK")),
        ]
    )
    with serve_app(hub_like) as url:
        assert httpx.get(f"{url}/health", follow_redirects=True).text == "OK"
        assert not is_healthy(url)
    with serve_app(Starlette(routes=[Route("/health", page("<html>a page</html>"))])) as url:
        assert not is_healthy(url)
    assert is_healthy(mlflow_server)


def test_the_supervisor_restarts_mlflow_then_gives_up_clearly() -> None:
    import asyncio

    from analoglab.tracking.server import MlflowSupervisor

    exits = [sys.executable, "-c", "import sys; sys.exit(3)"]
    supervisor = MlflowSupervisor(exits, "http://127.0.0.1:9", max_restarts=2, window=60)
    stopped: list[bool] = []

    async def run() -> None:
        supervisor.start()
        await asyncio.wait_for(supervisor.watch(lambda: stopped.append(True), 0.05), 30)

    asyncio.run(run())
    assert stopped == [True]
    assert supervisor.failure == (
        "MLflow exited 3 times within 60 s (last with status 3); its output is above"
    )
    assert supervisor.proc is None


def test_the_supervisors_child_dies_with_its_parent(tmp_path: Path) -> None:
    """Killed outright (no chance to stop MLflow), the service still leaves nothing behind."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from analoglab.tracking.server import MlflowSupervisor\n"
            "s = MlflowSupervisor([sys.executable, '-c', 'import time; time.sleep(120)'], 'x')\n"
            "s.start()\n"
            f"open({str(pid_file)!r}, 'w').write(str(s.proc.pid))\n"
            "time.sleep(120)\n",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            # reaped by init once it exits; a zombie still answers kill(0)
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                    break
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        if pid_file.is_file() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
