"""examples/04_browser_dashboard.html in a real browser (headless Chromium, driven over the
DevTools protocol) against a real gateway: runs reuse one sandbox, errors show on the page,
an expired sandbox is replaced, and leaving the page deletes the sandbox."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ROOT, Gateway, free_port, running_gateway

pytestmark = pytest.mark.docker

BROWSER = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)


class Page:
    """One browser tab over the DevTools protocol: evaluate JavaScript, wait for a value."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.next_id = ws, 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait(self, expression: str, seconds: float = 60) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.1)
        body = self.js("document.body.innerText")
        raise AssertionError(f"never true: {expression}; the page shows: {body}")


@pytest.fixture(scope="module")
def static_server() -> Iterator[str]:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(ROOT / "examples"))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def dashboard_gateway(docker_ready: None, static_server: str) -> Iterator[Gateway]:
    with running_gateway("dashboard", cors_origins=static_server) as gw:
        yield gw


@pytest.fixture
def page() -> Iterator[Page]:
    if BROWSER is None:
        pytest.fail("no Chromium: scripts/ensure-browser.sh installs it (make test runs it)")
    profile = Path(tempfile.mkdtemp(prefix="petri-chromium-"))
    proc = subprocess.Popen(
        [
            BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        target = next(t for t in tabs if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Page(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_dashboard_reuses_one_sandbox_shows_errors_and_cleans_up(
    dashboard_gateway: Gateway, static_server: str, page: Page
) -> None:
    api = dashboard_gateway.client(timeout=60)
    sandboxes: Callable[[], list[str]] = lambda: [  # noqa: E731
        s["id"] for s in api.get("/v1/sandboxes").json()["sandboxes"]
    ]
    url = f"{static_server}/04_browser_dashboard.html?gateway={dashboard_gateway.url}"
    page.call("Page.navigate", url=url)
    page.wait("document.readyState === 'complete' && !!document.getElementById('run')")

    def run(code: str | None = None) -> None:
        if code is not None:
            page.js(f"document.getElementById('code').value = {json.dumps(code)}")
        page.js("document.getElementById('status').textContent = ''")
        page.js("document.getElementById('run').click()")

    run()
    page.wait("document.getElementById('status').textContent === 'done'")
    out = page.js("document.getElementById('out').textContent")
    assert all(f"line {i}" in out for i in range(5)) and "[exit 0]" in out, out
    assert page.js("document.getElementById('error').textContent") == ""
    first = sandboxes()
    assert len(first) == 1
    run("print('again')")
    page.wait("document.getElementById('status').textContent === 'done'")
    assert "again" in page.js("document.getElementById('out').textContent")
    assert sandboxes() == first, "a second run made a second sandbox"

    # An API error shows on the page (a NUL byte in the code: 422).
    run("print(1)\u0000")
    error = page.wait("document.getElementById('error').textContent")
    assert "422" in error and "invalid_field" in error, error
    assert sandboxes() == first

    # The sandbox went away (TTL, another client): the next run makes a new one.
    api.delete(f"/v1/sandboxes/{first[0]}")
    run("print('new sandbox')")
    page.wait("document.getElementById('status').textContent === 'done'")
    assert page.js("document.getElementById('error').textContent") == ""
    second = sandboxes()
    assert len(second) == 1 and second != first

    # Leaving the page deletes its sandbox (a keepalive fetch, sent on pagehide).
    page.call("Page.navigate", url="about:blank")
    deadline = time.monotonic() + 15
    while sandboxes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandboxes() == [], "the sandbox outlived the page"
    api.close()
