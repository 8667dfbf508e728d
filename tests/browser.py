"""A real browser for the suite: headless Chromium (Debian's) driven over the DevTools protocol.

``chromium_path()`` finds Chromium, installing Debian's package when it is missing (the test
is skipped only where apt cannot install it). :class:`Browser` starts it with a fresh profile
and a DevTools port on loopback, and drives one tab with a few commands of the protocol, sent
over its websocket (``websocket-client``), so that cookies set while signing in are kept for
later pages — which ``chromium --screenshot URL`` cannot do::

    with Browser(tmp_path / "browser") as browser:
        browser.open("http://127.0.0.1:8000/services/mlflow/")
        browser.fill_and_submit({"#username_input": "ada", "#password_input": "x"})
        browser.wait_for("document.querySelector('#root')?.innerText.includes('Experiments')")
        browser.screenshot(tmp_path / "mlflow.png")

Exceptions the page throws are collected in :attr:`Browser.errors`; a condition that does not
hold in time fails the test with the page's text and a screenshot saved beside it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import httpx
import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def _unavailable(reason: str) -> NoReturn:
    """No browser: under CI (``CI=true``) the check fails, elsewhere the test is skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser check cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    """Debian's Chromium, installed with apt when missing (when apt cannot: skipped, but under
    ``CI=true`` failed, so the browser check never silently goes untested)."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if shutil.which("apt-get") is None:
        _unavailable("Chromium is not installed and there is no apt-get to install it")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            _unavailable(f"cannot install Chromium ({' '.join(command)}): {done.stderr[-300:]}")
    found = shutil.which("chromium")
    if found is None:
        _unavailable("apt installed chromium, but it is not on PATH")
    return found


class Browser:
    """One headless Chromium tab (see the module docstring)."""

    def __init__(self, folder: Path, timeout: float = 30.0) -> None:
        self.folder = folder
        self.timeout = timeout
        self.errors: list[str] = []
        self._id = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None

    def __enter__(self) -> Browser:
        import websocket

        profile = self.folder / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "chromium.log").open("wb")
        self._proc = subprocess.Popen(
            [
                chromium_path(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                pytest.fail(f"Chromium did not start:\n{self._log_tail()}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True
        )
        self.send("Page.enable")
        self.send("Runtime.enable")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None

    def _log_tail(self) -> str:
        log = self.folder / "chromium.log"
        return log.read_text(errors="replace")[-3000:] if log.is_file() else ""

    # -- the protocol -------------------------------------------------------------------------

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command; its result (events met meanwhile are noted)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.errors.append(str(text))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (None when it throws)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    # -- what a test does ---------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Go to ``url`` and wait until the page (after any redirects) has loaded."""
        before = self.evaluate("performance.timeOrigin")
        self.send("Page.navigate", url=url)
        self._wait_for_new_document(before)

    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def fill_and_submit(self, fields: dict[str, str]) -> None:
        """Type ``fields`` (CSS selector → value) into the page's form and submit it."""
        script = "".join(
            f"document.querySelector({json.dumps(sel)}).value = {json.dumps(value)};"
            for sel, value in fields.items()
        )
        first = json.dumps(next(iter(fields)))
        before = self.evaluate("performance.timeOrigin")
        self.evaluate(f"{script} document.querySelector({first}).form.submit(); true")
        self._wait_for_new_document(before)

    def _wait_for_new_document(self, before: Any) -> None:
        """Wait until another document than the one started at ``before`` has loaded (each
        document has its own ``performance.timeOrigin``)."""
        self.wait_for(
            f"performance.timeOrigin !== {json.dumps(before)} && document.readyState === 'complete'"
        )

    def wait_for(self, condition: str, timeout: float | None = None) -> None:
        """Wait until the JavaScript ``condition`` holds; else save a screenshot and fail."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                shot = self.folder / "failed.png"
                with contextlib.suppress(Exception):
                    self.screenshot(shot)
                pytest.fail(
                    f"the page at {self.url()} never met {condition} (screenshot: {shot}); "
                    f"its errors: {self.errors}; its text:\n{self.text()[:2000]}"
                )
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the tab as it is now, written to ``path``."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
