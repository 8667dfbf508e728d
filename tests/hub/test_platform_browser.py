"""``analoglab up`` in a real browser: headless Chromium signs in and sees each page render.

One platform (the module fixture of ``conftest.py``: labs ``lab-a`` and ``lab-b``), a researcher
and a reviewer of ``lab-a`` added with ``analoglab users add``. In Chromium, in order: the
admin signs in with the credentials file and sees the admin page list the users; the
researcher's JupyterLab (its server started through the hub's API) shows its launcher; the
reviewer, in a fresh profile, opens the review pages, which sign in through the hub's OAuth
and show the reviewer's name and lab-a's queue; the researcher opens the MLflow UI through
the hub's gate. Screenshots ``1-…png`` to ``4-…png`` under the test's tmp folder; a page that
does not render fails the test.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from ..browser import Browser
from ..platformtools import Running, start_server

pytestmark = pytest.mark.slow

LOGIN = ("#username_input", "#password_input")


def admin_password(data: Path) -> str:
    lines = (data / "hub/admin-credentials.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)["password"]


def sign_in(browser: Browser, url: str, name: str, password: str) -> None:
    """Open ``url``, land on the hub's login form, sign in there and follow the redirects."""
    browser.open(url)
    browser.wait_for("document.querySelector('#username_input')")
    browser.fill_and_submit(dict(zip(LOGIN, (name, password), strict=True)))


def test_the_platforms_pages_render_in_a_real_browser(
    platform: Running,
    tmp_path: Path,
) -> None:
    tag = secrets.token_hex(3)
    researcher, reviewer = f"r{tag}", f"v{tag}"
    for name, extra in ((researcher, []), (reviewer, ["--reviewer", "lab-a"])):
        done = platform.run("users", "add", name, *extra, "--json")
        assert done.returncode == 0, done.stderr
        platform.users[name] = json.loads(done.stdout)["password"]  # the fixture deletes them
    start_server(platform, researcher, platform.user_token(researcher))

    # 1. the admin signs in with the credentials file; the admin page lists the users
    with Browser(tmp_path / "admin") as browser:
        sign_in(browser, platform.url + "/hub/admin", "admin", admin_password(platform.data))
        browser.wait_for(f"document.body.innerText.includes({reviewer!r})", 60)
        browser.wait_for(f"document.body.innerText.includes({researcher!r})", 10)
        assert "/hub/admin" in browser.url()
        browser.screenshot(tmp_path / "1-hub-admin.png")

    with Browser(tmp_path / "researcher") as browser:
        # 2. the researcher's JupyterLab: its launcher, with the platform's notebooks beside it
        sign_in(
            browser,
            platform.url + f"/user/{researcher}/lab",
            researcher,
            platform.users[researcher],
        )
        browser.wait_for(
            "document.querySelector('#jp-main-dock-panel') && "
            "document.querySelector('.jp-Launcher') && "
            "document.querySelector('.jp-DirListing-content')?.innerText"
            ".includes('shared-notebooks')",
            90,
        )
        assert f"/user/{researcher}/lab" in browser.url()
        # JupyterLab was told not to fetch news: no prompt asks about it
        time.sleep(2)
        assert "news" not in browser.evaluate("document.body.innerText").lower()
        browser.screenshot(tmp_path / "2-jupyterlab.png")

        # 3. the reviewer, in a fresh profile: the review pages sign in with the hub's OAuth
        with Browser(tmp_path / "reviewer") as other:
            review = platform.url + "/services/queue/review"
            sign_in(other, review, reviewer, platform.users[reviewer])
            other.wait_for(f"location.href === {review!r}", 30)
            other.wait_for(
                f"document.body.innerText.includes('signed in as {reviewer}') && "
                "document.body.innerText.includes('Lab lab-a')",
                30,
            )
            other.screenshot(tmp_path / "3-review-queue.png")

        # 4. the MLflow UI through the hub: the React app lists the experiments
        browser.open(platform.url + "/services/mlflow/")
        browser.wait_for("document.querySelector('#root')?.innerText.includes('Experiments')", 90)
        browser.wait_for("document.querySelector('#root').innerText.includes('Default')", 60)
        shot = browser.screenshot(tmp_path / "4-mlflow.png")
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
