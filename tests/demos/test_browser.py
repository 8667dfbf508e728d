"""Each tab of the demo rendering in headless Chromium, with the tiny analogs, as a visitor
sees it: a link restores its view, each tab's button gives its output, and the address bar
follows the view. Screenshots ``1-talk.png`` … ``5-board.png`` (the whole page) under the
test's tmp folder; a tab that does not render fails the test."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest

from analoglab.config import Settings

from ..browser import Browser

pytestmark = pytest.mark.slow


def shoot(browser: Browser, path: Path) -> Path:
    """The whole page, not only the window."""
    data = browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(data["data"]))
    return path


def click(browser: Browser, selector: str, text: str | None = None) -> None:
    """Click the element matching ``selector`` (and reading ``text``, when given)."""
    found = browser.evaluate(
        f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]"
        f".find(e => {json.dumps(text)} === null || e.innerText.trim() === {json.dumps(text)});"
        " if (e) { e.click(); return true; } return false; })()"
    )
    assert found, f"no {selector} reading {text!r} on the page"


def filled(elem_id: str) -> str:
    """JS: the textbox ``elem_id`` holds text."""
    return f"(document.querySelector('#{elem_id} textarea')?.value || '').trim().length > 0"


def query(browser: Browser) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(browser.url()).query))


def released_check(home: Settings) -> str:
    """A transfer check of the tiny analog released through the queue (its two results with
    layer profiles of 3 and 5 blocks), so the board has a row, a score and profiles."""
    from analoglab.experiments.spec import parse_spec
    from analoglab.experiments.transfer import compare
    from analoglab.tracking import TransferCheckRun

    from ..tracking.conftest import PROBE, build_result

    spec = parse_spec(PROBE)
    check = TransferCheckRun.open(
        spec, analog="tiny-analog-s", frontier="tiny-frontier", settings=home
    )
    analog = build_result(spec, "tiny-analog-s", values=[0.5, 0.9, 0.7])
    frontier = build_result(spec, "tiny-frontier", values=[0.5, 0.6, 0.95, 0.9, 0.8], weights="f")
    check.log_analog(analog)
    check.set_job("job-1")
    check.log_frontier(frontier)
    check.log_report(compare(analog, frontier))
    return check.run_id


def test_every_tab_renders_for_a_visitor(
    demo_url: str, demo_home: Settings, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    released_check(demo_home)
    link = (
        demo_url
        + "?"
        + urllib.parse.urlencode(
            {"tab": "talk", "analog": "tiny-analog-s", "prompt": "the hotel was", "seed": "3"}
        )
    )
    with Browser(tmp_path / "browser", timeout=90) as browser:
        browser.open(link)
        browser.wait_for("document.body.innerText.includes('The analog continues')")
        # the link's view is restored: its analog (and its card), its prompt, its seed
        browser.wait_for("document.body.innerText.includes('An analog of tiny-frontier')")
        browser.wait_for(
            "[...document.querySelectorAll('textarea')].some(t => t.value === 'the hotel was')"
        )
        assert browser.evaluate(
            "[...document.querySelectorAll('input')].some(i => i.value === 'tiny-analog-s')"
        )

        # 1. Talk: a completion
        click(browser, "#talk-button")
        browser.wait_for(filled("completion"))
        shoot(browser, shots / "1-talk.png")

        # 2. Look inside: both plots
        click(browser, "[role=tab]", "Look inside")
        click(browser, "#look-button")
        browser.wait_for(
            "[...document.querySelectorAll('img')].filter(i => /^data:image\\/(webp|png)/"
            ".test(i.src)).length >= 2"
        )
        browser.wait_for("location.search.includes('tab=look')")
        assert "logit lens" in browser.text()
        shoot(browser, shots / "2-look-inside.png")

        # 3. Steer: the demo vector, default and steered side by side
        click(browser, "[role=tab]", "Steer")
        browser.wait_for("document.body.innerText.includes('computed by the demo')")
        click(browser, "#steer-button")
        browser.wait_for(filled("steered"))
        browser.wait_for("document.body.innerText.includes('probability before')")
        assert query(browser)["vector"] == "demo:sentiment"
        shoot(browser, shots / "3-steer.png")

        # 4. Fidelity: both cards
        click(browser, "[role=tab]", "Fidelity")
        browser.wait_for(
            "document.body.innerText.split('KL (nats/token)').slice(1).join('')"
            ".includes('tiny-analog-m')"
        )
        shoot(browser, shots / "4-fidelity.png")

        # 5. Transfer board: the released check's row, its score chart and its layer profiles
        click(browser, "[role=tab]", "Transfer board")
        browser.wait_for("document.body.innerText.includes('1 of 1 released transfer checks')")
        browser.wait_for(
            "[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image')"
            " && i.offsetParent !== null && i.naturalWidth > 0).length >= 2"
        )
        browser.wait_for("document.body.innerText.includes('first block (0) to the last (1)')")
        browser.wait_for("location.search.includes('tab=board')")
        shoot(browser, shots / "5-board.png")

        # a link to another view opens on it
        browser.open(
            demo_url
            + "?"
            + urllib.parse.urlencode(
                {"tab": "steer", "analog": "tiny-analog-m", "strength": "-3", "seed": "9"}
            )
        )
        browser.wait_for(
            "[...document.querySelectorAll('[role=tab]')].some(t => "
            "t.innerText.trim() === 'Steer' && t.getAttribute('aria-selected') === 'true')"
        )
        browser.wait_for(
            "[...document.querySelectorAll('input')].some(i => i.value === 'tiny-analog-m')"
        )
        assert browser.evaluate(
            "[...document.querySelectorAll('input[type=number]')].some(i => i.value === '-3')"
        )
        assert browser.errors == [], browser.errors
