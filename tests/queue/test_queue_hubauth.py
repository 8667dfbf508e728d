"""JupyterHub tokens in the queue service, against a real JupyterHub on 127.0.0.1.

One hub per module (dummy authenticator, the ``custom:analoglab:*`` scopes granted by
``load_roles`` to users and to two lab-agent services, a managed ``analoglab queue serve``
behind the hub's proxy). Checked: the authorisation matrix with hub tokens in place of static
ones, scope → role mapping (downscoped tokens, services), 401/403 answers, the cache, the
static tokens chained in front of the hub, the hub down or hanging (503 JSON), and the managed
service reached through the proxy under ``/services/analoglab-queue``, and browsers signing in to
its review pages with the hub's OAuth (login form, authorize, callback, session, logout; the
OAuth state checked; users without queue scopes refused).

The hub needs configurable-http-proxy: ``make pytest`` installs it under ``.venv/node``
(``CONFIGURABLE_HTTP_PROXY`` names another one); without it these tests fail.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fastapi.testclient import TestClient

from analoglab.config import Settings
from analoglab.queue.auth import ChainAuthenticator, StaticTokens, hash_token
from analoglab.queue.client import QueueClient
from analoglab.queue.hubauth import HubAuthenticator, roles_from_scopes, scope_for_role
from analoglab.queue.jobs import QueueSettings
from analoglab.queue.pages import COOKIE
from analoglab.queue.service import create_app
from analoglab.queue.vetting import VettingLimits

from ..conftest import free_port
from ..hubtools import base_config, running_hub
from .conftest import probe_spec, result_for, write_catalog
from .test_queue_service import MATRIX, WHO, matrix_body

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SERVICE = "analoglab-queue"
ACCESS = f"access:services!service={SERVICE}"
LABS = ("lab-a", "lab-b")
CUSTOM_SCOPES = ["custom:analoglab:submit", "custom:analoglab:admin"] + [
    f"custom:analoglab:{kind}:{lab}" for kind in ("review", "agent") for lab in LABS
]
# matrix identity -> (hub user or service, scopes its role grants)
HUB_USERS = {
    "researcher": ("ada", ["custom:analoglab:submit"]),
    "reviewer_a": ("rita", ["custom:analoglab:review:lab-a"]),
    "reviewer_b": ("bob", ["custom:analoglab:review:lab-b"]),
    "admin": ("olga", ["custom:analoglab:admin"]),
    "plain": ("nobody", []),
    "both_a": ("rex", ["custom:analoglab:submit", "custom:analoglab:review:lab-a"]),
}
HUB_SERVICES = {
    "agent_a": ("lab-a-agent", ["custom:analoglab:agent:lab-a"]),
    "agent_b": ("lab-b-agent", ["custom:analoglab:agent:lab-b"]),
}
STATIC_AGENT = "static-agent-token"
STATIC_TOKENS = {hash_token(STATIC_AGENT): {"name": "site-agent", "roles": ["agent:lab-a"]}}


@dataclass
class Hub:
    api_url: str
    public_url: str
    admin_token: str
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)  # matrix identity -> token

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

    def user_token(self, user: str, scopes: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"note": "queue test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        token: dict[str, Any] = self.api("POST", f"/users/{user}/tokens", json=body)
        return token

    @property
    def service_url(self) -> str:
        return f"{self.public_url}/services/{SERVICE}"


def hub_config(work: Path, ports: dict[str, int], tokens: dict[str, str], queue_home: Path) -> str:
    roles: list[dict[str, Any]] = [
        {
            "name": "queue-test-admin",
            "scopes": ["admin:users", "admin:servers", "tokens"],
            "services": ["tester"],
        }
    ]
    for who, (user, scopes) in HUB_USERS.items():
        roles.append({"name": f"analoglab-{who}", "scopes": [*scopes, ACCESS], "users": [user]})
    for who, (svc, scopes) in HUB_SERVICES.items():
        roles.append({"name": f"analoglab-{who}", "scopes": [*scopes, ACCESS], "services": [svc]})
    services: list[dict[str, Any]] = [
        {"name": "tester", "api_token": tokens["tester"]},
        *({"name": svc, "api_token": tokens[who]} for who, (svc, _) in HUB_SERVICES.items()),
        {
            "name": SERVICE,
            "url": f"http://127.0.0.1:{ports['queue']}",
            "command": [
                sys.executable,
                "-m",
                "analoglab",
                "queue",
                "serve",
                "--tokens",
                str(work / "static-tokens.toml"),
            ],
            "environment": {"ANALOGLAB_HOME": str(queue_home)},
            # browsers sign in to the review pages with the hub's OAuth: the tokens it issues
            # carry the queue scopes their user holds
            "oauth_client_allowed_scopes": CUSTOM_SCOPES,
            "oauth_no_confirm": True,
        },
    ]
    custom = {s: {"description": f"queue test scope {s}"} for s in CUSTOM_SCOPES}
    # as docs/queue.md: notebook servers' tokens get the queue scopes their user holds
    server_scopes = [
        "users:activity!user",
        "access:servers!server",
        ACCESS,
        "custom:analoglab:submit",
        *(f"custom:analoglab:review:{lab}" for lab in LABS),
    ]
    return "\n".join(
        [
            *base_config(work, ports),
            f"c.JupyterHub.custom_scopes = {custom!r}",
            f"c.JupyterHub.load_roles = {roles!r}",
            # a hub group a lab can weight in its fair share (ada is in it)
            "c.JupyterHub.load_groups = {'priority': {'users': ['ada']}}",
            f"c.JupyterHub.services = {services!r}",
            f"c.Spawner.server_token_scopes = {server_scopes!r}",
        ]
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("jupyterhub")
    queue_home = write_catalog(Settings(home=work / "queue-home")).home
    (work / "static-tokens.toml").write_text(
        f'[tokens.{hash_token(STATIC_AGENT)}]\nname = "site-agent"\nroles = ["agent:lab-a"]\n'
    )
    ports = {k: free_port() for k in ("public", "hub", "proxy_api", "queue")}
    tokens = {k: secrets.token_hex(16) for k in ("tester", *HUB_SERVICES)}
    api_url = f"http://127.0.0.1:{ports['hub']}/hub/api"
    config = hub_config(work, ports, tokens, queue_home)
    with running_hub(work, config):
        public = f"http://127.0.0.1:{ports['public']}"
        hub = Hub(api_url, public, tokens["tester"], work / "hub.log")
        for who, (user, _) in HUB_USERS.items():
            hub.tokens[who] = hub.user_token(user)["token"]
        for who in HUB_SERVICES:
            hub.tokens[who] = tokens[who]
        yield hub


def hub_settings(catalog_home: Settings, hub: Hub, **extra: Any) -> Settings:
    return catalog_home.model_copy(update={"queue_hub_api_url": hub.api_url, **extra})


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture
def hub_client(
    hub: Hub, sqlite_url: str, catalog_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The service as a hub service: JUPYTERHUB_API_TOKEN set, no explicit setting."""
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.admin_token)
    app = create_app(
        sqlite_url,
        hub_settings(catalog_home, hub),
        STATIC_TOKENS,
        queue_settings=QueueSettings(limits=VettingLimits(rate_per_minute=1000)),
    )
    with TestClient(app) as c:
        yield c


def test_scopes_map_to_roles() -> None:
    assert roles_from_scopes(
        [
            "custom:analoglab:submit",
            "custom:analoglab:review:lab-a",
            "custom:analoglab:agent:lab-b",
            "custom:analoglab:admin",
            "custom:analoglab:review:Bad Lab",  # not a lab id
            "custom:analoglab:review:lab-c!user=x",  # filtered: not ours
            "custom:analoglab:frobnicate:lab-a",
            "custom:other:submit",
            "read:users!user=ada",
        ]
    ) == {"researcher", "reviewer:lab-a", "agent:lab-b", "admin"}
    for role in ("researcher", "reviewer:lab-a", "agent:lab-b", "admin"):
        assert roles_from_scopes([scope_for_role(role)]) == {role}


def test_authorisation_matrix_with_hub_tokens(hub: Hub, hub_client: TestClient) -> None:
    c = hub_client

    def h(who: str) -> dict[str, str]:
        return bearer(None if who == "anonymous" else hub.tokens[who])

    def lift_quota() -> None:
        """The admin's scope lifts the daily quota the matrix would hit (its PUT row resets)."""
        policy = c.get("/api/frontiers/frontier-a/policy", headers=h("admin")).json()
        resp = c.put(
            "/api/frontiers/frontier-a/policy",
            json={**policy, "daily_quota_per_user": 1000},
            headers=h("admin"),
        )
        assert resp.status_code == 200, resp.text

    def job_in(state: str) -> dict[str, Any]:
        spec = {"frontier": "frontier-a", "spec": probe_spec()}
        job: dict[str, Any] = c.post("/api/jobs", json=spec, headers=h("researcher")).json()
        assert job.get("submitter") == "ada", job
        if state == "awaiting_review":
            return job
        decision = "request_changes" if state == "changes_requested" else "approve"
        resp = c.post(
            f"/api/jobs/{job['id']}/review", json={"decision": decision}, headers=h("reviewer_a")
        )
        assert resp.status_code == 200, resp.text
        if state == "changes_requested":
            return job
        claim = c.post("/api/labs/lab-a/claim", headers=h("agent_a")).json()
        job = claim["job"]  # the oldest approved job of the lab: one left by an earlier row
        assert job["lease_holder"] == "service:lab-a-agent" and job["submitter"] == "ada"
        job["lease_id"] = claim["lease_id"]
        if state == "awaiting_release":
            resp = c.post(
                f"/api/jobs/{job['id']}/result",
                json={"lease_id": claim["lease_id"], "result": result_for(claim["job"])},
                headers=h("agent_a"),
            )
            assert resp.status_code == 200, resp.text
        return job

    failures = []
    for method, path, state, body, expected in MATRIX:
        lift_quota()
        if path.endswith("/claim"):  # the matrix expects an empty queue: drain earlier rows'
            while c.post(path, headers=h("agent_a")).status_code == 200:
                pass
        got = {}
        for who in WHO:
            url, data = path, body
            if state is not None:
                job = job_in(state)
                url = path.replace("{id}", str(job["id"]))
                data = matrix_body(body, job)
            resp = c.request(method, url, json=data, headers=h(who))
            got[who] = resp.status_code
            assert resp.status_code < 500, resp.text
        if got != expected:
            failures.append((method, path, got, expected))
    assert not failures


def test_token_scopes_not_the_owners_decide(hub: Hub, hub_client: TestClient) -> None:
    c = hub_client
    # rex submits and reviews lab-a, but a token that asked for fewer scopes gets fewer roles
    lab_queue = "/api/labs/lab-a/queue"
    assert c.get(lab_queue, headers=bearer(hub.tokens["both_a"])).status_code == 200
    narrow = hub.user_token("rex", ["custom:analoglab:submit"])["token"]
    assert c.get("/api/jobs", headers=bearer(narrow)).status_code == 200
    assert c.get(lab_queue, headers=bearer(narrow)).status_code == 403

    none = c.get("/api/jobs", headers=bearer(hub.user_token("rita", [])["token"]))
    assert none.status_code == 403 and "custom:analoglab:submit" in none.json()["detail"]
    plain = c.get("/api/jobs", headers=bearer(hub.tokens["plain"]))
    assert plain.status_code == 403 and "no queue scope" in plain.json()["detail"]
    unknown = c.get("/api/jobs", headers=bearer("not-a-hub-token"))
    assert unknown.status_code == 401 and unknown.json()["detail"] == "unknown token"
    # the static tokens keep working alongside the hub's
    assert c.post("/api/labs/lab-a/claim", headers=bearer(STATIC_AGENT)).status_code == 204
    assert c.post("/api/labs/lab-b/claim", headers=bearer(STATIC_AGENT)).status_code == 403


def test_review_pages_take_hub_tokens(hub: Hub, hub_client: TestClient) -> None:
    page = hub_client.get("/review", headers=bearer(hub.tokens["reviewer_a"]))
    assert page.status_code == 200 and "lab-a" in page.text
    plain = hub_client.get("/review", headers=bearer(hub.tokens["plain"]))
    assert plain.status_code == 403 and "text/html" in plain.headers["content-type"]


def test_a_submitters_hub_groups_go_with_their_job(hub: Hub, hub_client: TestClient) -> None:
    # ada is in the hub group "priority" (load_groups): the queue reads it from the hub's user
    # model and keeps it with her job, for the lab's fair-share weights.
    resp = hub_client.post(
        "/api/jobs",
        json={"frontier": "frontier-b", "spec": probe_spec()},
        headers=bearer(hub.tokens["researcher"]),
    )
    assert resp.status_code == 201, resp.text
    job = hub_client.app.state.queue.get(resp.json()["id"])  # type: ignore[attr-defined]
    assert job.submitter == "ada" and job.submitter_groups == ["priority"]
    place = resp.json()["place"]  # approved at once (lab-b has no human review): in line
    assert place is not None and place["position"] >= 1 and place["seconds_per_job"] is None


def test_answers_are_cached_briefly(
    hub: Hub, sqlite_url: str, catalog_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for seconds, after_revoke in ((60, 200), (0, 401)):
        token = hub.user_token("ada")
        settings = hub_settings(catalog_home, hub, queue_hub_cache_seconds=seconds)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.admin_token)
        with TestClient(create_app(sqlite_url, settings, STATIC_TOKENS)) as c:
            assert c.get("/api/jobs", headers=bearer(token["token"])).status_code == 200
            hub.api("DELETE", f"/users/ada/tokens/{token['id']}")
            assert c.get("/api/jobs", headers=bearer(token["token"])).status_code == after_revoke


def test_hub_auth_is_chosen_by_configuration(
    hub: Hub, sqlite_url: str, catalog_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = bearer(hub.tokens["researcher"])
    cases = [
        ({}, None, 401),  # one machine without a hub: static tokens only
        ({}, hub.admin_token, 200),  # a hub service: JUPYTERHUB_API_TOKEN is set
        ({"queue_hub_auth": False}, hub.admin_token, 401),  # the setting wins
        ({"queue_hub_auth": True}, None, 200),
    ]
    for extra, env_token, status in cases:
        if env_token is None:
            monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
        else:
            monkeypatch.setenv("JUPYTERHUB_API_TOKEN", env_token)
        with TestClient(create_app(sqlite_url, hub_settings(catalog_home, hub, **extra))) as c:
            assert c.get("/api/jobs", headers=token).status_code == status, (extra, env_token)


def test_hub_down_or_hanging_is_a_503(sqlite_url: str, catalog_home: Settings) -> None:
    dead = free_port()
    settings = catalog_home.model_copy(
        update={"queue_hub_auth": True, "queue_hub_api_url": f"http://127.0.0.1:{dead}/hub/api"}
    )
    with TestClient(create_app(sqlite_url, settings, STATIC_TOKENS)) as c:
        resp = c.get("/api/jobs", headers=bearer("some-hub-token"))
        assert resp.status_code == 503, resp.text
        detail = resp.json()["detail"]
        assert detail.startswith(f"JupyterHub at http://127.0.0.1:{dead}/hub/api does not answer")
        # lab agents' static tokens do not need the hub
        assert c.post("/api/labs/lab-a/claim", headers=bearer(STATIC_AGENT)).status_code == 204
        page = c.get("/review", headers=bearer("some-hub-token"))
        assert page.status_code == 503 and "JupyterHub" in page.text
        # what JupyterHub never issues is refused at once, without asking it
        for junk in ("x" * 300, "not a token", "../../etc"):
            assert c.get("/api/jobs", headers=bearer(junk)).status_code == 401

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hub/api"
        chain = ChainAuthenticator(
            [StaticTokens({}), HubAuthenticator(url, timeout=0.5, access_scopes=())]
        )
        with TestClient(create_app(sqlite_url, catalog_home, chain)) as c:
            started = time.monotonic()
            resp = c.get("/api/jobs", headers=bearer("some-hub-token"))
            assert resp.status_code == 503 and "within 0.5 s" in resp.json()["detail"]
            assert time.monotonic() - started < 5


def test_managed_service_behind_the_proxy(hub: Hub) -> None:
    """``analoglab queue serve`` started by the hub: its env turns hub tokens on, requires the
    access scope, and serves under /services/analoglab-queue."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(hub.service_url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, hub.log.read_text()[-4000:]
        time.sleep(0.3)

    with QueueClient(hub.service_url, hub.tokens["reviewer_a"]) as rita:
        assert rita.lab_queue("lab-a")["jobs"] == []
    with QueueClient(hub.service_url, hub.tokens["researcher"]) as ada:
        job = ada.submit(probe_spec(), "frontier-b")
        assert job["submitter"] == "ada" and job["state"] == "approved"
    # a token without the access scope may not use the managed service
    narrow = hub.user_token("ada", ["custom:analoglab:submit"])["token"]
    resp = httpx.get(hub.service_url + "/api/jobs", headers=bearer(narrow), timeout=10)
    assert resp.status_code == 403 and ACCESS in resp.json()["detail"]
    # the static tokens of the service's --tokens file work alongside
    resp = httpx.post(
        hub.service_url + "/api/labs/lab-a/claim", headers=bearer(STATIC_AGENT), timeout=10
    )
    assert resp.status_code == 204, resp.text
    with QueueClient(hub.service_url, hub.tokens["agent_b"]) as agent:
        claim = agent.claim("lab-b")
        assert claim is not None and claim["job"]["id"] == job["id"]
        assert claim["job"]["lease_holder"] == "service:lab-b-agent"
    # the review pages sign browsers in through the hub (the token form is for no-hub mode)
    login = httpx.get(hub.service_url + "/review/login", timeout=10)
    assert login.status_code == 302
    assert login.headers["location"].startswith("/hub/api/oauth2/authorize?")
    assert f"redirect_uri=%2Fservices%2F{SERVICE}%2Foauth_callback" in login.headers["location"]
    form = httpx.post(hub.service_url + "/review/login", data={"token": "x"}, timeout=10)
    assert form.status_code == 403 and "JupyterHub" in form.text
    spec = json.dumps(httpx.get(hub.service_url + "/openapi.json", timeout=10).json())
    assert "/api/jobs" in spec


def test_notebook_server_tokens_carry_the_queue_scopes(hub: Hub) -> None:
    """``c.Spawner.server_token_scopes`` as docs/queue.md has it: a notebook's
    JUPYTERHUB_API_TOKEN gets the queue scopes its user holds, and only those."""
    scopes = {}
    for who in ("both_a", "researcher"):
        user = HUB_USERS[who][0]
        # the hub answers once the server is up or after its slow_spawn_timeout (10 s)
        hub.api("POST", f"/users/{user}/server", timeout=60)
        tokens = hub.api("GET", f"/users/{user}/tokens")["api_tokens"]
        server = [t for t in tokens if str(t.get("note", "")).startswith("Server at")]
        assert len(server) == 1, tokens
        scopes[who] = roles_from_scopes(server[0]["scopes"]), ACCESS in server[0]["scopes"]
    assert scopes["both_a"] == ({"researcher", "reviewer:lab-a"}, True)
    assert scopes["researcher"] == ({"researcher"}, True)
    for who in ("both_a", "researcher"):  # stop the servers once up (the hub would, too)
        user = HUB_USERS[who][0]
        deadline = time.monotonic() + 60
        while hub.api("GET", f"/users/{user}")["pending"] is not None:
            assert time.monotonic() < deadline, hub.log.read_text()[-4000:]
            time.sleep(0.3)
        resp = httpx.delete(
            f"{hub.api_url}/users/{user}/server",
            headers={"Authorization": f"token {hub.admin_token}"},
            timeout=30,
        )
        assert resp.status_code in (202, 204), resp.text


def wait_for_service(hub: Hub) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(hub.service_url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, hub.log.read_text()[-4000:]
        time.sleep(0.3)


def hub_sign_in(browser: httpx.Client, hub: Hub, user: str, start: str) -> httpx.Response:
    """What a browser does: open ``start``, land on the hub's login form, sign in there (the
    dummy authenticator takes any password) and follow the redirects back."""
    page = browser.get(start)
    assert page.status_code == 200 and "/hub/login" in str(page.url), page.url
    form = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    xsrf = re.search(r'name="_xsrf"[^>]*value="([^"]+)"', page.text)
    assert form is not None and xsrf is not None, page.text[:2000]
    action = html.unescape(form.group(1))
    return browser.post(
        urljoin(str(page.url), action),
        data={"username": user, "password": "any", "_xsrf": xsrf.group(1)},
    )


def test_browsers_sign_in_to_the_review_pages_with_the_hubs_oauth(hub: Hub) -> None:
    """hub login form → OAuth authorize → the queue's callback → /review, as a browser
    following redirects; the session cookie is the queue's own; logout ends it."""
    wait_for_service(hub)
    review = hub.service_url + "/review"
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        first = browser.get(review, follow_redirects=False)
        assert first.status_code == 302
        authorize = first.headers["location"]
        assert authorize.startswith("/hub/api/oauth2/authorize?")
        assert "code_challenge_method=S256" in authorize and "state=" in authorize
        page = hub_sign_in(browser, hub, "rita", review)
        assert page.status_code == 200, page.text[-2000:]
        assert str(page.url) == review
        assert "signed in as <b>rita</b>" in page.text and "Lab lab-a" in page.text
        callback = [r for r in page.history if r.url.path.endswith("/oauth_callback")]
        assert len(callback) == 1
        set_cookie = [h for h in callback[0].headers.get_list("set-cookie") if COOKIE in h]
        assert len(set_cookie) == 1 and "HttpOnly" in set_cookie[0]
        assert "SameSite=lax" in set_cookie[0] and f"Path=/services/{SERVICE}/;" in (set_cookie[0])
        cookie = browser.cookies.get(COOKIE)
        assert cookie and "." in cookie
        # a stale sign-in (another tab's) finishing now: already signed in, back to the pages
        stale = browser.get(
            hub.service_url + "/oauth_callback",
            params={"code": "x", "state": "stale"},
            follow_redirects=False,
        )
        assert stale.status_code == 303 and stale.headers["location"] == (
            f"/services/{SERVICE}/review"
        )
        # the session cookie is no hub token: the API refuses it
        api = httpx.get(hub.service_url + "/api/jobs", headers=bearer(cookie), timeout=10)
        assert api.status_code == 401
        # reviewing through the page works with the session
        with QueueClient(hub.service_url, hub.tokens["researcher"]) as ada:
            job = ada.submit(probe_spec(), "frontier-a")
        path = f"{review}/jobs/{job['id']}"
        job_page = browser.get(path)
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', job_page.text)
        assert job_page.status_code == 200 and csrf is not None
        done = browser.post(
            f"{path}/review", data={"csrf_token": csrf.group(1), "decision": "approve"}
        )
        assert done.status_code == 200 and str(done.url) == path
        with QueueClient(hub.service_url, hub.tokens["reviewer_a"]) as rita:
            assert rita.get(job["id"])["reviews"][0]["reviewer"] == "rita"
        # signing out ends the session: the old cookie no longer signs anyone in
        out = browser.post(f"{review}/logout", data={"csrf_token": csrf.group(1)})
        assert out.status_code == 200 and "signed out" in out.text
        assert COOKIE not in browser.cookies
        old = httpx.get(review, cookies={COOKIE: cookie}, timeout=10)
        assert old.status_code == 302 and old.headers["location"].startswith("/hub/api/oauth2/")
        # still signed in to the hub: opening a page signs in again and lands on that page
        again = browser.get(path)
        assert again.status_code == 200 and str(again.url) == path
        assert "signed in as <b>rita</b>" in again.text
        assert browser.cookies.get(COOKIE) not in (None, cookie)


def test_the_oauth_state_is_checked(hub: Hub) -> None:
    """A callback whose state is not the one this browser started with is refused (403), as
    is one without the state cookie: a stranger cannot sign a victim in with their code."""
    wait_for_service(hub)
    callback = hub.service_url + "/oauth_callback"
    with httpx.Client(follow_redirects=False, timeout=20) as browser:
        start = browser.get(hub.service_url + "/review")
        assert start.status_code == 302
        wrong = browser.get(callback, params={"code": "x", "state": "not-the-state"})
        assert wrong.status_code == 403 and "state" in wrong.text
        assert f'href="/services/{SERVICE}/review/login"' in wrong.text  # a way back
    bare = httpx.get(callback, params={"code": "x", "state": "y"}, timeout=10)
    assert bare.status_code == 403 and COOKIE not in bare.headers.get("set-cookie", "")
    missing = httpx.get(callback, timeout=10)
    assert missing.status_code == 422


def test_users_without_queue_scopes_are_refused_after_sign_in(hub: Hub) -> None:
    wait_for_service(hub)
    review = hub.service_url + "/review"
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = hub_sign_in(browser, hub, "nobody", review)
        assert page.status_code == 403 and "no queue scope" in page.text
        assert COOKIE not in browser.cookies
        # a researcher signs in, but the review pages are for reviewers
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = hub_sign_in(browser, hub, "ada", review)
        assert page.status_code == 403 and "only reviewers" in page.text
