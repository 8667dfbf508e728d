"""The reviewers' HTML pages under /review: rendering (Jinja2 templates, autoescape, visible
control characters), who may see them, CSRF on every form keyed to the session, the session
cookie (signed, not the token, expiring, revoked on logout, Secure over https).

Sign-in through JupyterHub's OAuth is tested against a real hub in test_queue_hubauth.py."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from analoglab.config import Settings, get_settings
from analoglab.errors import ConfigError
from analoglab.queue.auth import hash_token
from analoglab.queue.pages import COOKIE, csrf_token, templates
from analoglab.queue.service import create_app

from ..conftest import serve_app
from .conftest import Clock, probe_spec, result_for

PAGE_ROLES = {
    "ada": ["researcher"],
    "rita": ["reviewer:lab-a"],
    "bob": ["reviewer:lab-b"],
    "agent": ["agent:lab-a"],
    "root": ["admin"],
}
PAGE_TOKENS = {hash_token(f"page-{n}"): {"name": n, "roles": r} for n, r in PAGE_ROLES.items()}
SECRET = b"test-page-secret"
EVIL = "<script>alert('x')</script> & more"


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer page-{who}"}


@pytest.fixture
def pages(sqlite_url: str, catalog_home: Settings) -> Iterator[TestClient]:
    app = create_app(sqlite_url, catalog_home, PAGE_TOKENS, page_secret=SECRET)
    with TestClient(app, follow_redirects=False) as c:
        yield c


def submit(c: TestClient, **extra: Any) -> dict[str, Any]:
    resp = c.post(
        "/api/jobs",
        json={
            "frontier": "frontier-a",
            "spec": probe_spec(description=EVIL),
            "analog_result_ref": "https://mlflow.example/runs/1?a=1&b=<2>",
            **extra,
        },
        headers=bearer("ada"),
    )
    assert resp.status_code == 201, resp.text
    job: dict[str, Any] = resp.json()
    return job


def csrf_from(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def test_job_page_renders_the_spec_and_escapes_user_content(pages: TestClient) -> None:
    job = submit(pages)
    resp = pages.get(f"/review/jobs/{job['id']}", headers=bearer("rita"))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert "probe" in html and "frontier-a" in html and "awaiting_review" in html
    assert "8 (labelled)" in html  # data sizes
    assert "depths [0.5]" in html  # layers
    assert "passes the frontier" in html  # vetting
    assert "submit" in html and "ada" in html  # history from the audit log
    assert 'href="https://mlflow.example/runs/1?a=1&amp;b=&lt;2&gt;"' in html
    assert 'value="approve"' in html and "Content-Security-Policy" in resp.headers
    # the queue lists it
    home = pages.get("/review", headers=bearer("rita"))
    assert home.status_code == 200 and f"/review/jobs/{job['id']}" in home.text
    assert "<script>" not in home.text


def test_other_labs_and_roles_cannot_see_the_page(pages: TestClient) -> None:
    job = submit(pages)
    path = f"/review/jobs/{job['id']}"
    assert pages.get(path, headers=bearer("bob")).status_code == 404
    assert pages.get(path, headers=bearer("ada")).status_code == 403  # own job: use the API
    assert pages.get(path).status_code == 401
    assert pages.get("/review/jobs/9999", headers=bearer("rita")).status_code == 404
    assert pages.get("/review", headers=bearer("ada")).status_code == 403
    bob_home = pages.get("/review", headers=bearer("bob"))
    assert bob_home.status_code == 200 and path not in bob_home.text
    # admins read, but have no forms and cannot decide
    admin = pages.get(path, headers=bearer("root"))
    assert admin.status_code == 200 and 'value="approve"' not in admin.text
    token = csrf_token(SECRET, "page-root")
    refused = pages.post(
        f"{path}/review",
        data={"csrf_token": token, "decision": "approve", "comment": ""},
        headers=bearer("root"),
    )
    assert refused.status_code == 403
    bob_post = pages.post(
        f"{path}/review",
        data={"csrf_token": csrf_token(SECRET, "page-bob"), "decision": "approve"},
        headers=bearer("bob"),
    )
    assert bob_post.status_code == 404
    assert pages.get(f"/api/jobs/{job['id']}", headers=bearer("ada")).json()["state"] == (
        "awaiting_review"
    )


def test_posts_need_the_csrf_token(pages: TestClient) -> None:
    job = submit(pages)
    path = f"/review/jobs/{job['id']}"
    for data in (
        {"decision": "approve", "comment": "no token"},
        {"decision": "approve", "csrf_token": "0" * 64},
        {"decision": "approve", "csrf_token": csrf_token(SECRET, "page-bob")},  # someone else's
    ):
        resp = pages.post(f"{path}/review", data=data, headers=bearer("rita"))
        assert resp.status_code == 403, data
    assert pages.get(f"/api/jobs/{job['id']}", headers=bearer("rita")).json()["state"] == (
        "awaiting_review"
    )


def test_review_and_release_through_the_forms(pages: TestClient) -> None:
    job = submit(pages)
    path = f"/review/jobs/{job['id']}"
    csrf = csrf_from(pages.get(path, headers=bearer("rita")).text)
    resp = pages.post(
        f"{path}/review",
        data={"csrf_token": csrf, "decision": "approve", "comment": "fine <b>bold</b>"},
        headers=bearer("rita"),
    )
    assert resp.status_code == 303 and resp.headers["location"] == path
    api = pages.get(f"/api/jobs/{job['id']}", headers=bearer("rita")).json()
    assert api["state"] == "approved"
    assert api["reviews"][0]["comment"] == "fine <b>bold</b>"
    page = pages.get(path, headers=bearer("rita")).text
    assert "fine &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    # the same decision again is a 409 page, not a 500
    again = pages.post(
        f"{path}/review", data={"csrf_token": csrf, "decision": "approve"}, headers=bearer("rita")
    )
    assert again.status_code == 409 and "text/html" in again.headers["content-type"]
    claim = pages.post("/api/labs/lab-a/claim", headers=bearer("agent")).json()
    posted = pages.post(
        f"/api/jobs/{job['id']}/result",
        json={"lease_id": claim["lease_id"], "result": result_for(claim["job"])},
        headers=bearer("agent"),
    )
    assert posted.status_code == 200, posted.text
    waiting = pages.get("/review", headers=bearer("rita")).text
    assert "Awaiting release" in waiting and path in waiting
    page = pages.get(path, headers=bearer("rita")).text
    assert 'value="withhold"' in page and "The posted result" in page
    resp = pages.post(
        f"{path}/release",
        data={"csrf_token": csrf, "decision": "withhold", "reason": "quotes data"},
        headers=bearer("rita"),
    )
    assert resp.status_code == 303
    api = pages.get(f"/api/jobs/{job['id']}", headers=bearer("rita")).json()
    assert api["state"] == "withheld" and api["release_reason"] == "quotes data"
    verify = pages.get("/api/audit/verify", headers=bearer("root")).json()
    assert verify["ok"] and verify["first_broken_seq"] is None and verify["findings"] == []
    history = pages.get(path, headers=bearer("root")).text
    assert "awaiting_release → withheld" in history and "quotes data" in history


def test_login_sets_the_cookie_and_the_cookie_signs_in(pages: TestClient) -> None:
    job = submit(pages)
    path = f"/review/jobs/{job['id']}"
    # without the login form's token (its double-submit cookie): 403
    assert pages.post("/review/login", data={"token": "page-rita"}).status_code == 403
    form = pages.get("/review/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert login_csrf is not None
    forged = pages.post("/review/login", data={"token": "page-rita", "csrf_token": "forged"})
    assert forged.status_code == 403
    bad = pages.post("/review/login", data={"token": "nope", "csrf_token": login_csrf.group(1)})
    assert bad.status_code == 401 and COOKIE not in pages.cookies
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', bad.text)
    assert login_csrf is not None
    resp = pages.post(
        "/review/login", data={"token": "page-rita", "csrf_token": login_csrf.group(1)}
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/review"
    set_cookie = resp.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=") and "page-rita" not in set_cookie
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie  # no hub
    assert "Path=/;" in set_cookie and "Max-Age=28800" in set_cookie
    assert "Secure" not in set_cookie  # plain http here: see the https test
    # the browser's cookie now opens the pages (and not the API)
    page = pages.get(path)
    assert page.status_code == 200 and "signed in as <b>rita</b>" in page.text
    assert pages.get(f"/api/jobs/{job['id']}").status_code == 401
    no_csrf = pages.post(f"{path}/review", data={"decision": "reject"})
    assert no_csrf.status_code == 403
    done = pages.post(
        f"{path}/review",
        data={"decision": "reject", "comment": "no", "csrf_token": csrf_from(page.text)},
    )
    assert done.status_code == 303
    assert pages.get(f"/api/jobs/{job['id']}", headers=bearer("ada")).json()["state"] == (
        "rejected"
    )
    out = pages.post("/review/logout", data={"csrf_token": csrf_from(page.text)})
    assert out.status_code == 303 and COOKIE not in pages.cookies
    assert pages.get(path).status_code == 401


def test_replicas_with_one_page_secret_accept_each_others_forms(
    sqlite_url: str, catalog_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSRF key comes from the queue_page_secret setting: replicas (or a restarted
    service) sharing it accept a form rendered by another; a different or random key refuses."""
    monkeypatch.setenv("ANALOGLAB_QUEUE_PAGE_SECRET", "shared-secret-of-the-replicas")
    shared = get_settings()
    other = shared.model_copy(update={"queue_page_secret": SecretStr("another-secret-entirely")})
    unset = shared.model_copy(update={"queue_page_secret": None})
    with contextlib.ExitStack() as stack:
        one, two, other_app, unset_app = (
            stack.enter_context(
                TestClient(create_app(sqlite_url, s, PAGE_TOKENS), follow_redirects=False)
            )
            for s in (shared, shared, other, unset)
        )
        job = submit(one)
        path = f"/review/jobs/{job['id']}"
        csrf = csrf_from(one.get(path, headers=bearer("rita")).text)
        assert csrf == csrf_token(b"shared-secret-of-the-replicas", "page-rita")
        form = {"csrf_token": csrf, "decision": "approve"}
        for refusing in (other_app, unset_app):
            resp = refusing.post(f"{path}/review", data=form, headers=bearer("rita"))
            assert resp.status_code == 403 and "CSRF" in resp.text
        resp = two.post(f"{path}/review", data=form, headers=bearer("rita"))
        assert resp.status_code == 303, resp.text
        state = one.get(f"/api/jobs/{job['id']}", headers=bearer("rita")).json()["state"]
        assert state == "approved"
    monkeypatch.setenv("ANALOGLAB_QUEUE_PAGE_SECRET", "short")
    with pytest.raises(ConfigError, match="queue_page_secret"):
        get_settings()


HOSTILE_NAME = "invoice\u202eexe.pdf"  # a right-to-left override: reads "invoicefdp.exe"
HOSTILE_TEXT = 'say "hi" \'there\' <img src=x onerror=alert(1)> \u2066\u200b\x1b[31m & bye'


def sign_in(c: TestClient, token: str) -> str:
    """Sign in through the token form; the session cookie's value."""
    form = c.get("/review/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert found is not None
    resp = c.post("/review/login", data={"token": token, "csrf_token": found.group(1)})
    assert resp.status_code == 303, resp.text
    cookie = c.cookies.get(COOKIE)
    assert cookie
    return cookie


def test_the_pages_are_autoescaped_templates() -> None:
    """Templates, not strings: every one escapes, in a file of the package."""
    names = templates.list_templates()
    assert {"base.html", "home.html", "job.html", "login.html", "error.html"} <= set(names)
    for name in names:
        assert templates.get_template(name).render is not None
    assert templates.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"


def test_hostile_names_and_comments_are_escaped_and_controls_shown(pages: TestClient) -> None:
    job = submit(pages)
    spec = probe_spec(name="probe-1", description=HOSTILE_TEXT)
    resp = pages.post(
        "/api/jobs", json={"frontier": "frontier-a", "spec": spec}, headers=bearer("ada")
    )
    assert resp.status_code == 201, resp.text
    job = resp.json()
    path = f"/review/jobs/{job['id']}"
    csrf = csrf_from(pages.get(path, headers=bearer("rita")).text)
    comment = f"see {HOSTILE_NAME} and </pre><script>alert(2)</script> \"q\" 'q'"
    resp = pages.post(
        f"{path}/review",
        data={"csrf_token": csrf, "decision": "request_changes", "comment": comment},
        headers=bearer("rita"),
    )
    assert resp.status_code == 303
    html = pages.get(path, headers=bearer("rita")).text
    for raw in ("<script>", "<img", "\u202e", "\u2066", "\u200b", "\x1b"):
        assert raw not in html, repr(raw)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "say &#34;hi&#34; &#39;there&#39;" in html
    assert "&lt;/pre&gt;&lt;script&gt;alert(2)&lt;/script&gt; &#34;q&#34; &#39;q&#39;" in html
    # bidi, zero-width and escape characters appear as visible marks where they were
    assert 'invoice<span class="ctl">U+202E</span>exe.pdf' in html
    for mark in ("U+2066", "U+200B", "U+001B"):
        assert f'<span class="ctl">{mark}</span>' in html
    # the API keeps the text exactly as written
    api = pages.get(f"/api/jobs/{job['id']}", headers=bearer("rita")).json()
    assert api["reviews"][0]["comment"] == comment


def test_the_session_cookie_is_not_the_token_and_logout_revokes_it(pages: TestClient) -> None:
    job = submit(pages)
    path = f"/review/jobs/{job['id']}"
    cookie = sign_in(pages, "page-rita")
    assert "page-rita" not in cookie
    # the cookie's value is no token: the API and the pages' bearer path refuse it
    assert pages.get("/api/jobs", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401
    assert pages.get(path, headers={"Authorization": f"Bearer {cookie}"}).status_code == 401
    page = pages.get(path)
    assert page.status_code == 200 and "signed in as <b>rita</b>" in page.text
    csrf = csrf_from(page.text)
    assert csrf != csrf_token(SECRET, "page-rita")  # keyed to the session, not the token
    # an altered cookie signs no one in
    altered = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    assert pages.get(path, headers={"Cookie": f"{COOKIE}={altered}"}).status_code == 401
    out = pages.post("/review/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/review/signed-out"
    assert COOKIE not in pages.cookies
    signed_out = pages.get("/review/signed-out")
    assert signed_out.status_code == 200 and 'href="/review/login' in signed_out.text
    # the old cookie, kept by someone, no longer works (it is ended server-side)
    kept = {"Cookie": f"{COOKIE}={cookie}"}
    gone = pages.get(path, headers=kept)
    assert gone.status_code == 401 and "the session has ended" in gone.text
    old_form = pages.post(
        f"{path}/review", data={"csrf_token": csrf, "decision": "approve"}, headers=kept
    )
    assert old_form.status_code == 401
    assert pages.get(f"/api/jobs/{job['id']}", headers=bearer("rita")).json()["state"] == (
        "awaiting_review"
    )


def test_csrf_tokens_belong_to_one_session(pages: TestClient) -> None:
    job = submit(pages)
    path = f"/review/jobs/{job['id']}"
    first = sign_in(pages, "page-rita")
    csrf_first = csrf_from(pages.get(path).text)
    pages.cookies.clear()
    sign_in(pages, "page-rita")
    csrf_second = csrf_from(pages.get(path).text)
    assert csrf_first != csrf_second
    refused = pages.post(f"{path}/review", data={"csrf_token": csrf_first, "decision": "approve"})
    assert refused.status_code == 403
    done = pages.post(  # each session takes its own
        f"{path}/review",
        data={"csrf_token": csrf_first, "decision": "approve"},
        headers={"Cookie": f"{COOKIE}={first}"},
    )
    assert done.status_code == 303


def test_sessions_expire(
    sqlite_url: str, catalog_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALOGLAB_QUEUE_SESSION_SECONDS", "600")
    clock = Clock()
    app = create_app(sqlite_url, catalog_home, PAGE_TOKENS, page_secret=SECRET, clock=clock)
    with TestClient(app, follow_redirects=False) as c:
        resp = c.get("/review/login")
        found = re.search(r'name="csrf_token" value="([^"]+)"', resp.text)
        assert found is not None
        resp = c.post("/review/login", data={"token": "page-rita", "csrf_token": found.group(1)})
        assert "Max-Age=600" in resp.headers["set-cookie"]
        assert c.get("/review").status_code == 200
        clock.advance(599)
        assert c.get("/review").status_code == 200
        clock.advance(2)
        assert c.get("/review").status_code == 401


def test_replicas_share_sessions_through_the_database(
    sqlite_url: str, catalog_home: Settings
) -> None:
    """A session started on one replica signs in on another (same database, same secret);
    ended on one, it is ended on both."""
    with contextlib.ExitStack() as stack:
        one, two = (
            stack.enter_context(
                TestClient(
                    create_app(sqlite_url, catalog_home, PAGE_TOKENS, page_secret=SECRET),
                    follow_redirects=False,
                )
            )
            for _ in range(2)
        )
        cookie = sign_in(one, "page-rita")
        two.cookies.set(COOKIE, cookie)
        page = two.get("/review")
        assert page.status_code == 200 and "signed in as <b>rita</b>" in page.text
        assert two.post("/review/logout", data={"csrf_token": csrf_from(page.text)}).status_code
        one.cookies.set(COOKIE, cookie)
        assert one.get("/review").status_code == 401


def test_cookies_are_secure_over_https(sqlite_url: str, catalog_home: Settings) -> None:
    """Behind a TLS proxy on loopback (uvicorn trusts its X-Forwarded-Proto) the cookies get
    Secure; over plain http they do not (a browser would drop them)."""
    import httpx

    app = create_app(sqlite_url, catalog_home, PAGE_TOKENS, page_secret=SECRET)
    with serve_app(app) as url:
        for proto, secure in (("https", True), ("http", False)):
            with httpx.Client(base_url=url, headers={"X-Forwarded-Proto": proto}) as c:
                form = c.get("/review/login")
                assert ("Secure" in form.headers["set-cookie"]) is secure
                found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
                assert found is not None
                c.cookies.set("analoglab_login_csrf", form.cookies["analoglab_login_csrf"])
                resp = c.post(
                    "/review/login", data={"token": "page-rita", "csrf_token": found.group(1)}
                )
                assert resp.status_code == 303, resp.text
                session = [
                    h for h in resp.headers.get_list("set-cookie") if h.startswith(COOKIE)
                ]
                assert session and ("Secure" in session[0]) is secure, session


def test_cookies_are_secure_behind_a_hub_served_over_https(
    pages: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS may end before the hub's proxy, which forwards plain http: the hub's public URL
    (JUPYTERHUB_PUBLIC_URL, set for its services) says the browser sees https."""
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_URL", "https://hub.example.org/")
    form = pages.get("/review/login")
    assert "Secure" in form.headers["set-cookie"]
