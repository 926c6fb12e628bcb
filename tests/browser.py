"""A real headless Chromium for tests that look at a page as a person would: Debian's `chromium` package
(.ci/run installs it), driven through its DevTools protocol over a pipe (`--remote-debugging-pipe`: the
browser reads commands on fd 3 and writes replies and events on fd 4, each message JSON ended by a NUL;
chromium's content/browser/devtools/devtools_pipe_handler.cc), so no port is opened and no client library
is needed. The browser never fetches anything of its own: the flags below turn its background traffic off,
and its profile is a fresh folder each time.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-pipe"]
CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")


def find_chromium() -> str:
    """The chromium executable; in CI (which installs it) a missing one fails the test, elsewhere it skips."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    message = ("chromium not found: the night's page is checked in a real headless Chromium (Debian's `chromium` "
               "package; .ci/run installs it: apt-get install -y chromium)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message + "; skipped here because CI is unset")


class Browser:
    """One headless Chromium and one page in it. `open(url)` loads the page and returns what went wrong while
    it did (console errors, uncaught exceptions, failed loads); `evaluate` runs JavaScript in it."""

    def __init__(self, profile: Path, width: int = 1100, height: int = 900) -> None:
        executable = find_chromium()
        commands_r, self._commands = os.pipe()  # we write commands; the browser reads them on fd 3
        self._replies, replies_w = os.pipe()  # the browser writes on fd 4

        def on_fds_3_and_4() -> None:
            os.dup2(commands_r, 3)
            os.dup2(replies_w, 4)

        self.log = (profile.parent / f"{profile.name}.stderr").open("wb")
        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     preexec_fn=on_fds_3_and_4, pass_fds=(3, 4))
        os.close(commands_r)
        os.close(replies_w)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._replies, selectors.EVENT_READ)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)
        self.size(width, height)

    # ------------------------------------------------------------ the protocol

    def send(self, method: str, *, session: bool = False, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):  # poll/epoll: any descriptor number (select: < 1,024)
                raise TimeoutError(f"chromium did not answer (its output: {self.log.name})")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (its output: {self.log.name})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            self.events.append(self._read(deadline))

    # ------------------------------------------------------------ what a test does

    def size(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def open(self, url: str) -> list[str]:
        """Load `url`; the problems seen while it loaded (console errors and warnings, exceptions, log errors)."""
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        self.evaluate("new Promise(done => requestAnimationFrame(() => done(true)))")  # laid out and painted
        return self.problems()

    def problems(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry']['text']} {params['entry'].get('url', '')}")
        return found

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """The whole page, top to bottom, as PNG."""
        content = self.send("Page.getLayoutMetrics", session=True)["cssContentSize"]
        width = int(self.evaluate("window.innerWidth"))
        self.size(width, int(content["height"]) + 1)
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        self._selector.close()
        os.close(self._replies)
        self.log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
