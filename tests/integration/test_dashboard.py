"""The dashboard (DESIGN §12) in a real headless Chromium, against a real gateway and Docker.

Chromium is Debian's (`scripts/ensure-browser.sh` installs it; Playwright's own browser
download is never used). Every test drives the page the way a person does: clicks, keys, drops,
deep links; the gateway, the sandboxes and the programs are real.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ROOT, Gateway, free_port, running_gateway

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]
ASSETS = ROOT / "gateway" / "dashboard"


# --- the browser and the page ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-browser.sh (make test does)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; the test fails on any uncaught script error or CSP violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(30_000)
    problems: list[str] = []
    p.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    p.on(
        "console",
        lambda m: problems.append(m.text)
        if m.type == "error" and ("Content Security Policy" in m.text or "Refused" in m.text)
        else None,
    )
    yield p
    context.close()
    assert not problems, problems


def open_sandbox(p: Page, base: str, sid: str) -> None:
    p.goto(f"{base}/#/sandboxes/{sid}")
    expect(p.locator("#gateway-state")).to_have_attribute("data-state", "connected")
    expect(p.locator("#sandbox-view")).to_be_visible()
    expect(p.locator("#run")).to_be_enabled()


def run_code(p: Page, code: str) -> str:
    """Type `code` in the run box, press Run, return the new execution's id (from the URL)."""
    p.check("input[name=mode][value=code]")
    p.fill("#source", code)
    p.click("#run")
    p.wait_for_url(re.compile(r".*/executions/ex-[0-9a-f]+$"))
    return p.url.rsplit("/", 1)[1]


def wait_ended(p: Page, timeout: float = 60_000) -> None:
    expect(p.locator("#run-conn")).to_have_attribute("data-state", "ended", timeout=timeout)


def output(p: Page, selector: str = "#output") -> str:
    """The text of every element `selector` matches, in document order."""
    return "".join(p.locator(selector).all_text_contents())


def status_of(client: httpx.Client, sid: str, eid: str) -> str:
    return str(client.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()["status"])


# --- serving -----------------------------------------------------------------------------------


def test_the_dashboard_is_served_from_the_package_with_a_strict_policy(gateway: Gateway) -> None:
    with gateway.client() as c:
        page_ = c.get("/")
        assert page_.status_code == 200
        assert page_.headers["content-type"].startswith("text/html")
        csp = page_.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert page_.headers["x-content-type-options"] == "nosniff"
        html = page_.text
        # No inline script or style, nothing from another host (air-gapped hosts, CSP).
        assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
        assert "<style" not in html and not re.search(r"<[^>]*\s(style|on\w+)\s*=", html, re.I)
        for asset in sorted(ASSETS.iterdir()):
            r = c.get(f"/dashboard/{asset.name}")
            assert r.status_code == 200, asset.name
            assert r.content == asset.read_bytes()
            assert r.headers["content-security-policy"] == csp
            # The SVG namespace is a name, not something loaded.
            own = r.content.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")
            assert not re.search(rb"https?://|//[a-z]", own), f"{asset.name} loads from elsewhere"
            again = c.get(f"/dashboard/{asset.name}", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        assert r.headers["content-type"].split(";")[0] in (
            "text/javascript", "text/css", "text/html", "image/svg+xml")
        # Only the dashboard's own files: no other file of the package, no traversal.
        for name in ("routes.py", "..%2Froutes.py", "%2e%2e", "__init__.py", "app.js%00"):
            r = c.get(f"/dashboard/{name}")
            assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert c.get("/dashboard/../routes.py").status_code == 404


def test_a_wheel_of_the_project_ships_the_dashboard(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("petri-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ASSETS.iterdir():
        assert f"gateway/dashboard/{asset.name}" in names


# --- sandboxes, runs, live output ------------------------------------------------------------


def test_create_run_live_and_delete_a_sandbox(
    gateway: Gateway, client: httpx.Client, page: Page
) -> None:
    page.goto(f"{gateway.url}/")
    expect(page.locator("#gateway-state")).to_have_attribute("data-state", "connected")
    page.select_option("#language", "python")
    page.click("#create")
    page.wait_for_url(re.compile(r".*#/sandboxes/sb-[0-9a-f]+$"))
    sid = page.url.rsplit("/", 1)[1]
    try:
        assert client.get(f"/v1/sandboxes/{sid}").json()["language"] == "python"
        expect(page.locator(f"#sandbox-list li[data-id={sid}] .tag")).to_have_text("python")
        expect(page.locator("#sandbox-ttl")).to_have_text(re.compile(r"\d+m \d\ds"))
        expect(page.locator("#source")).to_have_value(re.compile("print"))  # the example

        code = (
            "import sys, time\n"
            "for i in range(14):\n"
            "    print(f'tick {i}')\n"
            "    if i == 2:\n"
            "        print('oops', file=sys.stderr)\n"
            "    time.sleep(0.5)\n"
            "sys.exit(3)\n"
        )
        eid = run_code(page, code)
        expect(page.locator("#output")).to_contain_text("tick 1")
        # Seen while it still runs: live, not after the fact.
        assert status_of(client, sid, eid) == "running"
        assert "tick 13" not in output(page)
        expect(page.locator("#run-conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#run-badge")).to_have_text("running")
        expect(page.locator("#kill")).to_be_enabled()
        wait_ended(page)
        text = output(page)
        for i in range(14):
            assert text.count(f"tick {i}\n") == 1, text
        assert output(page, "#output .stderr") == "oops\n"
        assert "oops" not in output(page, "#output .stdout")
        expect(page.locator("#run-badge")).to_have_text("exited")
        expect(page.locator("#run-meta")).to_contain_text("exit code 3")
        expect(page.locator("#run-end")).to_contain_text("Exited with code 3")
        expect(page.locator("#install")).to_be_hidden()  # nothing was installed
        row = page.locator(f"#executions li[data-id={eid}]")
        expect(row.locator(".badge")).to_have_text("exited")
        expect(row).to_contain_text("exit 3")
        expect(row.locator("a")).to_have_attribute("aria-current", "true")

        # Delete asks twice, then the sandbox is gone from the page and the gateway.
        page.click("#delete")
        expect(page.locator("#delete")).to_have_text("Really delete?")
        assert client.get(f"/v1/sandboxes/{sid}").status_code == 200
        page.click("#delete")
        expect(page.locator(f"#sandbox-list li[data-id={sid}]")).to_have_count(0)
        expect(page.locator("#empty")).to_be_visible()
        assert client.get(f"/v1/sandboxes/{sid}").status_code == 404
    finally:
        client.delete(f"/v1/sandboxes/{sid}")


def test_kill_button_ends_a_running_program(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    open_sandbox(page, gateway.url, sandbox["id"])
    eid = run_code(page, "import time\ni = 0\nwhile True:\n    print(i)\n    i += 1\n"
                         "    time.sleep(0.1)\n")
    expect(page.locator("#output")).to_contain_text("5\n")
    page.click("#kill")
    wait_ended(page, timeout=30_000)
    expect(page.locator("#run-badge")).to_have_text("killed")
    expect(page.locator("#run-end")).to_contain_text("SIGKILL")
    expect(page.locator("#kill")).to_be_disabled()
    assert status_of(client, sandbox["id"], eid) == "killed"


def test_test_mode_runs_the_runner(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]
    test = b"def test_ok():\n    assert 1 + 1 == 2\n\ndef test_bad():\n    assert 1 == 2\n"
    assert client.put(f"/v1/sandboxes/{sid}/files/test_things.py", content=test).status_code == 201
    open_sandbox(page, gateway.url, sid)
    page.check("#test-mode")
    page.fill("#source", "")
    page.click("#run")
    page.wait_for_url(re.compile(r".*/executions/ex-[0-9a-f]+$"))
    eid = page.url.rsplit("/", 1)[1]
    wait_ended(page, timeout=90_000)
    assert client.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()["test"] is True
    expect(page.locator("#output")).to_contain_text("1 failed, 1 passed")
    expect(page.locator(f"#executions li[data-id={eid}] .tag")).to_have_text("test")


# --- resuming, replay, deep links ----------------------------------------------------------------


class CuttableProxy:
    """A TCP proxy in front of the gateway that can cut every open connection (a dropped
    network) and, for a while, answer 502 like a load balancer whose backend is away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.refuse_until = 0.0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                with contextlib.suppress(OSError):
                    client.recv(65536)
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n")
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self, refuse_seconds: float = 0) -> None:
        self.refuse_until = time.monotonic() + refuse_seconds
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


def test_a_dropped_connection_resumes_without_gaps_or_duplicates(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    proxy = CuttableProxy(gateway.port)
    try:
        open_sandbox(page, proxy.url, sandbox["id"])
        eid = run_code(page, "import time\nfor i in range(240):\n    print(f'n {i}')\n"
                             "    time.sleep(0.04)\n")
        expect(page.locator("#output")).to_contain_text("n 20\n")
        proxy.cut()  # the browser reconnects by itself with Last-Event-ID
        expect(page.locator("#run-conn")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#run-conn")).to_have_attribute("data-state", "live", timeout=20_000)
        # Cut again and answer 502 for a while: the browser gives up on its own, and the
        # page reconnects from the last id it showed (?after=N).
        proxy.cut(refuse_seconds=5)
        expect(page.locator("#run-conn")).to_have_attribute("data-state", "reconnecting")
        wait_ended(page)
        reconnects = int(page.get_attribute("#run-conn", "data-reconnects") or 0)
        assert reconnects >= 2
        text = output(page)
        assert text == "".join(f"n {i}\n" for i in range(240)), text[-500:]
        expect(page.locator("#run-badge")).to_have_text("exited")
        last_id = int(page.get_attribute("#run-conn", "data-last-id") or 0)
        events = client.get(
            f"/v1/sandboxes/{sandbox['id']}/executions/{eid}/events",
            headers={"Accept": "text/event-stream"},
        ).text
        assert last_id == max(int(m) for m in re.findall(r"^id: (\d+)$", events, re.M))
    finally:
        proxy.close()


def test_deep_links_replay_a_finished_run_and_follow_a_running_one(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]
    code = ("import sys\nfor i in range(50):\n    print(f'out {i}')\n"
            "    print(f'err {i}', file=sys.stderr)\nsys.exit(2)\n")
    done = client.post(f"/v1/sandboxes/{sid}/exec", json={"code": code}).json()
    page.goto(f"{gateway.url}/#/sandboxes/{sid}/executions/{done['execution_id']}")
    wait_ended(page)
    assert output(page, "#output .stdout") == done["stdout"]
    assert output(page, "#output .stderr") == done["stderr"]
    expect(page.locator("#run-badge")).to_have_text("exited")
    expect(page.locator("#run-meta")).to_contain_text("exit code 2")
    expect(page.locator(f"#executions li[data-id={done['execution_id']}] a")).to_have_attribute(
        "aria-current", "true")

    running = client.post(
        f"/v1/sandboxes/{sid}/exec",
        json={"code": "import time\nfor i in range(16):\n    print(f'live {i}')\n"
                      "    time.sleep(0.4)\n", "wait": False},
    ).json()
    page.goto(f"{gateway.url}/#/sandboxes/{sid}/executions/{running['execution_id']}")
    expect(page.locator("#output")).to_contain_text("live 2")
    assert status_of(client, sid, running["execution_id"]) == "running"
    expect(page.locator("#run-conn")).to_have_attribute("data-state", "live")
    wait_ended(page)
    assert output(page) == "".join(f"live {i}\n" for i in range(16))

    page.goto(f"{gateway.url}/#/sandboxes/{sid}/executions/ex-0000000000000000")
    expect(page.locator("#run-end")).to_contain_text("no execution")
    page.goto(f"{gateway.url}/#/sandboxes/sb-does-not-exist")
    expect(page.locator("#sandbox-status")).to_have_text("gone")
    expect(page.locator("#run")).to_be_disabled()


def test_every_event_type_is_rendered_in_its_place(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    """The §4/§9 contract as the page reads it, including events the gateway does not send
    yet (app, ready, report) and keep-alive comments with and without a blank line after them:
    the stream of a real execution is replaced by this one."""
    sid = sandbox["id"]
    eid = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true"}).json()["execution_id"]
    cases = [
        {"name": "test_ok", "suite": "tests.test_a", "status": "passed", "duration_ms": 3},
        {"name": "test_bad", "suite": "tests.test_a", "status": "failed", "duration_ms": 5,
         "message": "assert 1 == 2 <img src=x onerror=window.__pwned=1>"},
        {"name": "test_later", "suite": "tests.test_b", "status": "skipped", "duration_ms": 0},
    ]
    events = [
        ("start", {"execution_id": eid, "sandbox_id": sid}),
        ("install", {"text": "Collecting <b>requests</b>\n"}),
        ("install", {"text": "Installed 1 package\n"}),
        ("app", {"stream": "stdout", "text": "app listening\n"}),
        ("app", {"stream": "stderr", "text": "app warning\n"}),
        ("ready", {"port": 5000, "after_ms": 120}),
        ("stdout", {"text": "collected 3 items\n"}),
        ("truncated", {"budget_bytes": 8, "message": "output budget reached"}),
        ("stdout", {"text": "the tail\n"}),
        ("surprise", {"text": "a type this page does not know"}),
        ("report", {"runner": "pytest", "passed": 1, "failed": 1, "skipped": 1, "errors": 0,
                    "duration_ms": 8, "cases": cases}),
        ("exit", {"exit_code": 1, "duration_ms": 950, "timed_out": False, "truncated": False,
                  "oom_killed": False, "tests": {"passed": 1, "failed": 1, "skipped": 1,
                                                 "errors": 0}}),
    ]
    body = ": keep-alive\n"  # a comment with no blank line after it
    for n, (kind, data) in enumerate(events, 1):
        frame = f"id: {n}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
        body += frame
        if data.get("text") == "collected 3 items\n":
            body += ": keep-alive\n\n" + frame  # replayed with the same id: shown once
            body += 'data: {"text": "an unnamed event"}\n\n'
    page.route(
        re.compile(rf".*/executions/{eid}/events.*"),
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=body
        ),
    )
    page.goto(f"{gateway.url}/#/sandboxes/{sid}/executions/{eid}")
    wait_ended(page)
    assert output(page, "#output .stdout") == "collected 3 items\nthe tail\n"
    assert output(page, "#output .note") == "\n[output budget reached]\n"
    install = page.locator("#install")
    expect(install).to_be_visible()
    assert install.evaluate("d => d.open") is False  # folded away until asked for
    expect(page.locator("#install-count")).to_have_text("(2 lines)")
    assert output(page, "#install .pane") == "Collecting <b>requests</b>\nInstalled 1 package\n"
    assert output(page, "#app .stdout") == "app listening\n"
    assert output(page, "#app .stderr") == "app warning\n"
    expect(page.locator("#run-notes")).to_contain_text("port 5000")
    expect(page.locator("#report .report-summary")).to_have_text(
        "pytest: 1 passed, 1 failed, 1 skipped, 0 errors in 8 ms")
    rows = page.locator("#report tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("failed")
    expect(rows.nth(1).locator(".message")).to_have_text(cases[1]["message"])
    expect(page.locator("#run-end")).to_contain_text("Exited with code 1")
    body_text = output(page, "body")
    assert "a type this page does not know" not in body_text
    assert "an unnamed event" not in body_text
    assert page.locator("#run-view img, #run-view script, #run-view .pane b").count() == 0
    assert page.evaluate("window.__pwned") is None


# --- safety, speed, keyboard -------------------------------------------------------------------


def test_program_output_and_file_names_are_text_never_html(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]
    hostile = "<img src=x onerror=window.__pwned=1>"
    name = "<img src=x onerror=window.__pwned=3>.txt"
    assert client.put(f"/v1/sandboxes/{sid}/files/{quote(name)}", content=b"x").status_code == 201
    open_sandbox(page, gateway.url, sid)
    run_code(page, "import sys\n"
                   f"print({hostile!r})\n"
                   "print('<script>window.__pwned=2</script>', file=sys.stderr)\n")
    wait_ended(page)
    # stdout and stderr are two pipes: Docker may deliver the two lines in either order.
    lines = sorted(output(page).splitlines())
    assert lines == sorted([hostile, "<script>window.__pwned=2</script>"])
    expect(page.locator("#files")).to_contain_text(name)
    page.wait_for_timeout(500)  # an injected image would have fired its handler by now
    assert page.locator("main img, aside img, main script").count() == 0
    assert page.evaluate("window.__pwned") is None


@pytest.mark.parametrize(
    "pace",
    [
        "",  # as fast as it can: the gateway merges the writes into few large events
        "    if i % 10 == 0:\n        time.sleep(0.001)\n",  # about a thousand events
    ],
    ids=["burst", "trickle"],
)
def test_ten_thousand_lines_render_fast_without_a_node_per_line(
    gateway: Gateway, sandbox: dict[str, Any], page: Page, pace: str
) -> None:
    open_sandbox(page, gateway.url, sandbox["id"])
    page.evaluate(
        """() => {
        window.__long = [];
        new PerformanceObserver((list) => {
            for (const e of list.getEntries()) window.__long.push(e.duration);
        }).observe({ type: "longtask" });
    }"""
    )
    # One write per line, as it happens: the gateway sends them in as many events as it reads.
    # 32 characters a line: 320K in all, more than the page lays out in one frame.
    code = (
        "import sys, time\nfor i in range(10000):\n"
        "    sys.stdout.write(f'line {i:05d} ' + '.' * 20 + '\\n')\n" + pace
    )
    started = time.monotonic()
    run_code(page, code)
    page.wait_for_function(
        "() => document.querySelector('#output')?.lastElementChild?.textContent"
        ".endsWith('line 09999 ' + '.'.repeat(20) + '\\n')",
        polling=50,
        timeout=60_000,
    )
    seconds = time.monotonic() - started
    wait_ended(page)
    long_tasks = page.evaluate("window.__long")
    spans = page.locator("#output span").count()
    blocks = page.locator("#output .block").count()
    events = int(page.get_attribute("#run-conn", "data-last-id") or 0)
    # Still answering at once, and scrolled to the end.
    t = time.monotonic()
    page.evaluate("() => document.querySelector('#output').scrollTop")
    answer_ms = (time.monotonic() - t) * 1000
    at_end = page.evaluate(
        "() => { const o = document.querySelector('#output');"
        " return [o.scrollHeight, o.scrollTop, o.clientHeight]; }"
    )
    print(
        f"\n10,000 lines: last line shown {seconds:.2f} s after Run, {events} events, "
        f"{blocks} blocks, {spans} spans, longest task {max(long_tasks, default=0):.0f} ms, "
        f"page answers in {answer_ms:.0f} ms"
    )
    assert output(page) == "".join(f"line {i:05d} {'.' * 20}\n" for i in range(10000))
    assert seconds < 30
    assert spans <= 50 and blocks <= 50  # batched, never a node per line
    assert max(long_tasks, default=0) < 1000
    assert answer_ms < 500
    assert at_end[0] - at_end[1] - at_end[2] < 30, at_end


def test_auto_scroll_stops_when_the_reader_scrolls_up(
    gateway: Gateway, sandbox: dict[str, Any], page: Page
) -> None:
    open_sandbox(page, gateway.url, sandbox["id"])
    run_code(page, "import time\nfor i in range(400):\n    print(f'row {i}')\n"
                   "    if i % 20 == 0:\n        time.sleep(0.1)\n")
    expect(page.locator("#output")).to_contain_text("row 100")
    page.locator("#output").evaluate("o => { o.scrollTop = 0; }")
    expect(page.locator("#jump")).to_be_visible()
    wait_ended(page)
    assert page.locator("#output").evaluate("o => o.scrollTop") == 0  # left where the reader was
    page.click("#jump")
    assert page.locator("#output").evaluate(
        "o => o.scrollHeight - o.scrollTop - o.clientHeight < 30")
    expect(page.locator("#jump")).to_be_hidden()


def test_keyboard_only_tab_to_the_run_box_and_ctrl_enter_runs(
    gateway: Gateway, sandbox: dict[str, Any], page: Page
) -> None:
    open_sandbox(page, gateway.url, sandbox["id"])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "source"
    assert "/sandboxes/" in page.url  # the skip link did not change the route
    # Plain tabbing gets there too.
    page.evaluate("document.activeElement.blur()")
    presses = 0
    while presses < 40 and page.evaluate("document.activeElement.id") != "source":
        page.keyboard.press("Tab")
        presses += 1
    assert page.evaluate("document.activeElement.id") == "source", presses
    page.keyboard.press("Control+A")
    page.keyboard.type("print('typed and run')")
    page.keyboard.press("Control+Enter")
    wait_ended(page)
    assert output(page) == "typed and run\n"
    expect(page.locator("#run-badge")).to_have_text("exited")


# --- files ---------------------------------------------------------------------------------------


def test_drop_a_zip_then_download_a_file(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as z:
        z.writestr("app/main.py", "print('from the zip')\n")
        z.writestr("app/data/numbers.txt", "1 2 3\n")
    open_sandbox(page, gateway.url, sid)
    transfer = page.evaluate_handle(
        """bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], "project.zip",
                              { type: "application/zip" }));
        return dt;
    }""",
        list(packed.getvalue()),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#files-status")).to_have_text("Uploaded 2 files.")
    expect(page.locator("#files")).to_contain_text("app/data/numbers.txt")
    listed = {f["path"] for f in client.get(f"/v1/sandboxes/{sid}/files").json()["files"]}
    assert {"app/main.py", "app/data/numbers.txt"} <= listed
    with page.expect_download() as download:
        page.get_by_role("link", name="app/data/numbers.txt").click()
    assert Path(download.value.path()).read_bytes() == b"1 2 3\n"
    # The program sees what was dropped.
    page.check("input[name=mode][value=command]")
    page.fill("#source", "python3 app/main.py")
    page.click("#run")
    wait_ended(page)
    assert output(page) == "from the zip\n"


# --- a dashboard people keep open -----------------------------------------------------------


def test_a_dashboard_left_open_follows_activity_without_keeping_sandboxes_alive(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]

    def last_active() -> str:
        found = client.get("/v1/sandboxes", params={"limit": 500}).json()["sandboxes"]
        return str(next(s for s in found if s["id"] == sid)["last_active_at"])

    open_sandbox(page, gateway.url, sid)
    page.wait_for_timeout(6000)  # the page settles: details read, one poll since
    before = last_active()
    page.wait_for_timeout(11000)  # two more polls
    assert last_active() == before  # watching renewed nothing
    # An agent runs something: the open page shows it without a click.
    eid = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo agent"}).json()[
        "execution_id"
    ]
    expect(page.locator(f"#executions li[data-id={eid}]")).to_be_visible(timeout=15_000)


def test_a_gateway_that_goes_away_shows_an_error(browser: Browser) -> None:
    with running_gateway("dash-away", shutdown_grace_seconds="1") as gw:
        with gw.client() as c:
            sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        context = browser.new_context()
        p = context.new_page()
        p.set_default_timeout(30_000)
        try:
            open_sandbox(p, gw.url, sid)
            expect(p.locator("#offline")).to_be_hidden()
            run_code(p, "import time\nwhile True:\n    print('still here')\n    time.sleep(0.2)\n")
            expect(p.locator("#output")).to_contain_text("still here")
            gw.stop()
            expect(p.locator("#gateway-state")).to_have_attribute("data-state", "offline")
            expect(p.locator("#offline")).to_be_visible()
            expect(p.locator("#offline")).to_contain_text("Cannot reach the gateway")
            expect(p.locator("#run-conn")).not_to_have_attribute("data-state", "live")
            p.click("#create")
            expect(p.locator("#error")).to_contain_text("Creating a sandbox failed")
            expect(p.locator("#offline")).to_be_visible()
            # Back again: the page notices by itself; the run it followed ended as the gateway
            # recorded it (interrupted by the shutdown).
            gw.start()
            expect(p.locator("#gateway-state")).to_have_attribute("data-state", "connected")
            expect(p.locator("#offline")).to_be_hidden()
            expect(p.locator("#run-end")).to_contain_text("interrupted")
            expect(p.locator("#run-badge")).to_have_text(re.compile("failed|interrupted"))
        finally:
            context.close()


# --- services (serve mode) and API keys (issue 13) ---------------------------------------------


def test_start_a_service_open_its_preview_follow_its_output_and_stop_it(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]
    answer = "<b>hello from the app</b>"
    assert client.put(f"/v1/sandboxes/{sid}/files/index.html", content=answer).status_code == 201
    open_sandbox(page, gateway.url, sid)
    expect(page.locator("#no-services")).to_be_visible()
    page.fill("#service-command", "python3 -m http.server 8080")
    page.fill("#service-port", "8080")
    page.click("#service-start")
    row = page.locator("#services li")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-status", "ready", timeout=60_000)
    expect(row.locator(".command")).to_have_text("python3 -m http.server 8080")
    (service,) = client.get(f"/v1/sandboxes/{sid}/services").json()["services"]
    assert service["status"] == "ready"
    # Starting it followed its execution's output, like any run.
    assert page.url.endswith(f"/executions/{service['execution_id']}")
    expect(page.locator("#run-conn")).to_have_attribute("data-state", "live")

    link = row.locator("a.preview")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    href = link.get_attribute("href")
    assert href == service["preview_url"], (href, service)
    # The preview answers with the app's page (a new tab opened by the page gets it too).
    with page.context.expect_page() as opened:
        link.click()
    tab = opened.value
    tab.wait_for_load_state()
    expect(tab.locator("b")).to_have_text("hello from the app")
    tab.close()
    got = httpx.get(href, timeout=30)
    assert got.status_code == 200 and answer in got.text
    # The app's own log (http.server logs each request to stderr) shows in the output pane.
    expect(page.locator("#output")).to_contain_text("GET / HTTP/1.1")

    # Back on the sandbox, clicking the service follows its execution again.
    page.goto(f"{gateway.url}/#/sandboxes/{sid}")
    expect(page.locator("#run-view")).to_be_hidden()
    row.locator("a.service-link").click()
    page.wait_for_url(re.compile(rf".*/executions/{service['execution_id']}$"))
    expect(page.locator("#output")).to_contain_text("GET / HTTP/1.1")

    row.locator("button.stop").click()
    expect(row).to_have_attribute("data-status", "stopped")
    expect(row.locator("a.preview")).to_have_count(0)
    expect(row.locator("button.stop")).to_be_hidden()
    assert client.get(f"/v1/sandboxes/{sid}/services/{service['id']}").json()["status"] == "stopped"
    assert httpx.get(href, timeout=30).status_code != 200
    wait_ended(page)


def test_a_service_command_is_text_never_html(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any], page: Page
) -> None:
    sid = sandbox["id"]
    hostile = "<img src=x onerror=alert(1)>; sleep 300"
    r = client.post(f"/v1/sandboxes/{sid}/services", json={"command": hostile, "port": 9})
    assert r.status_code == 201, r.text
    open_sandbox(page, gateway.url, sid)
    row = page.locator("#services li")
    expect(row.locator(".command")).to_have_text(hostile)
    assert page.locator("#services img").count() == 0
    client.delete(f"/v1/sandboxes/{sid}/services/{r.json()['id']}")


@pytest.fixture(scope="module")
def keyed(docker_ready: None) -> Iterator[tuple[Gateway, str]]:
    from tests.teams import new_key

    with running_gateway("dash-keys") as gw:
        yield gw, new_key(gw, "t")


def test_a_gateway_with_keys_asks_for_one_and_streams_with_its_token(
    keyed: tuple[Gateway, str], browser: Browser
) -> None:
    gw, key = keyed
    headers = {"Authorization": f"Bearer {key}"}
    with gw.client(headers=headers) as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        done = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo replayed"}).json()
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(30_000)
    requests: list[tuple[str, str | None]] = []
    p.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
    problems: list[str] = []
    p.on("pageerror", lambda e: problems.append(str(e)))
    try:
        p.goto(f"{gw.url}/")
        expect(p.locator("#key-form")).to_be_visible()
        expect(p.locator("#forget-key")).to_be_hidden()
        expect(p.locator(f"#sandbox-list li[data-id={sid}]")).to_have_count(0)
        # A wrong key is refused and said so; the right one lists the tenant's sandboxes.
        p.fill("#api-key", "petri_000000000000_" + "x" * 43)
        p.click("#use-key")
        expect(p.locator("#key-status")).to_contain_text("refused")
        expect(p.locator("#key-form")).to_be_visible()
        assert not any(a == f"Bearer {key}" for _, a in requests)
        keyed_from = len(requests)
        p.fill("#api-key", key)
        p.click("#use-key")
        expect(p.locator("#key-form")).to_be_hidden()
        expect(p.locator(f"#sandbox-list li[data-id={sid}]")).to_have_count(1)
        expect(p.locator("#forget-key")).to_be_visible()
        assert p.evaluate("sessionStorage.getItem('petri.key')") == key
        assert p.evaluate("localStorage.length") == 0
        assert p.locator("#api-key").input_value() == ""

        p.click(f"#sandbox-list li[data-id={sid}] a")
        expect(p.locator("#run")).to_be_enabled()
        eid = run_code(p, "import time\nfor i in range(12):\n    print(f'tick {i}')\n"
                          "    time.sleep(0.5)\n")
        expect(p.locator("#output")).to_contain_text("tick 1")
        with gw.client(headers=headers) as c:
            assert status_of(c, sid, eid) == "running"
        expect(p.locator("#run-conn")).to_have_attribute("data-state", "live")
        wait_ended(p)
        assert output(p) == "".join(f"tick {i}\n" for i in range(12))
        # The live stream was the browser's EventSource on the 202's token (no header there);
        # every API fetch carried the key.
        streams = [u for u, _ in requests if f"/executions/{eid}/events" in u]
        assert streams and all("token=" in u for u in streams), streams
        api_calls = [
            (u, a) for u, a in requests[keyed_from:] if "/v1/" in u and "/events" not in u
        ]
        assert api_calls and all(a == f"Bearer {key}" for _, a in api_calls), api_calls

        # A past execution has no token: it is replayed with fetch and the key.
        p.click(f"#executions li[data-id={done['execution_id']}] a")
        wait_ended(p)
        assert output(p) == "replayed\n"
        replay = [(u, a) for u, a in requests if f"/executions/{done['execution_id']}/events" in u]
        assert replay and all(a == f"Bearer {key}" for _, a in replay), replay

        # A run started elsewhere (an agent), opened by deep link: no token either, so it is
        # followed live with fetch and the key.
        with gw.client(headers=headers) as c:
            live = c.post(f"/v1/sandboxes/{sid}/exec", json={
                "code": "import time\nfor i in range(10):\n    print(f'agent {i}')\n"
                        "    time.sleep(0.5)\n", "wait": False}).json()["execution_id"]
            p.goto(f"{gw.url}/#/sandboxes/{sid}/executions/{live}")
            expect(p.locator("#output")).to_contain_text("agent 1")
            assert status_of(c, sid, live) == "running"
        expect(p.locator("#run-conn")).to_have_attribute("data-state", "live")
        wait_ended(p)
        assert output(p) == "".join(f"agent {i}\n" for i in range(10))

        p.click("#forget-key")
        expect(p.locator("#key-form")).to_be_visible()
        expect(p.locator(f"#sandbox-list li[data-id={sid}]")).to_have_count(0)
        assert p.evaluate("sessionStorage.getItem('petri.key')") is None
    finally:
        context.close()
        with gw.client(headers=headers) as c:
            c.delete(f"/v1/sandboxes/{sid}")
    assert not problems, problems
