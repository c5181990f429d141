"""The Python SDK through a real gateway: every method of both twins, typed errors, the
environment, drops mid-run and before an answer, silent runs, and runs longer than any
client timeout."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from petri_sdk import (
    App,
    AppExited,
    AppNotReady,
    AsyncClient,
    AsyncSandbox,
    Client,
    Conflict,
    ErrorEvent,
    Event,
    ExecutionNotFound,
    ExitEvent,
    FileNotFound,
    GatewayUnavailable,
    InstallEvent,
    InstallFailed,
    InvalidRequest,
    PetriError,
    QuotaExceeded,
    ReportEvent,
    Sandbox,
    SandboxNotFound,
    ServiceFailed,
    ServiceNotFound,
    StartEvent,
    StderrEvent,
    StdoutEvent,
)
from tests.conftest import Gateway, free_port, running_gateway
from tests.proxy import DroppingProxy

pytestmark = pytest.mark.docker

TICKS = (
    "import time\nfor i in range(8):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.15)\n"
)
TICKS_OUT = "".join(f"tick {i}\n" for i in range(8))
LIVE = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\n"
NO_INDEX = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0"}


def make_project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "conftest.py").write_text("")  # pytest puts the project root on sys.path
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(
        "from pkg.calc import add\n\ndef test_add():\n    assert add(2, 2) == 4\n"
    )
    (root / "main.py").write_text(
        "import sys\nfrom pkg.calc import add\nprint(add(*map(int, sys.argv[1:3])))\n"
    )
    for skipped in (".git", "__pycache__", "node_modules"):
        (root / skipped).mkdir()
        (root / skipped / "junk.txt").write_text("never uploaded")
    secret = root.parent / f"{root.name}-secret.txt"
    secret.write_text("outside the folder")
    (root / "link.txt").symlink_to(secret)
    return root


def _ids_ok(events: list[Event]) -> None:
    ids = [e.id for e in events]
    assert ids == list(range(1, len(ids) + 1)), ids
    assert isinstance(events[0], StartEvent)
    assert events[-1].terminal and sum(e.terminal for e in events) == 1


# --- every method, sync twin -------------------------------------------------------------------


def test_sync_twin_every_method(gateway: Gateway, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    with Sandbox.create("python", url=gateway.url, ttl=600, env={"GREETING": "hi"}) as sb:
        assert sb.id.startswith("sb-") and sb.language == "python"
        assert sb.get_info().ttl_seconds == 600 and "GREETING" in sb.info.env
        assert sb.id in [s.id for s in Sandbox.list(url=gateway.url)]

        # files
        assert sb.files.write("notes/a.txt", "héllo").size == len("héllo".encode())
        sb.files.write("/sandbox/notes/b.bin", b"\x00\xff")
        sb.files.write("notes/c.txt", io.BytesIO(b"from a file object"))
        assert sb.files.read("./notes/a.txt") == "héllo"
        assert sb.files.read_bytes("notes/b.bin") == b"\x00\xff"
        assert sb.files.read("notes/c.txt") == "from a file object"
        assert [f.path for f in sb.files.list("notes")] == [
            "notes/a.txt",
            "notes/b.bin",
            "notes/c.txt",
        ]
        assert sb.files.exists("notes/a.txt") and not sb.files.exists("notes/zz")
        sb.files.remove("notes/b.bin")
        with pytest.raises(FileNotFound):
            sb.files.read("notes/b.bin")
        uploaded = sb.files.upload_dir(project, "proj")
        assert sorted(uploaded) == [
            "proj/conftest.py",
            "proj/main.py",
            "proj/pkg/calc.py",
            "proj/tests/test_calc.py",
        ], "skipped: .git, __pycache__, node_modules and the symlink"
        assert not any("junk" in f.path or "link" in f.path for f in sb.files.list())

        # runs: output live, non-zero exit as data
        seen: list[tuple[str, str, float]] = []
        events: list[Event] = []
        ex = sb.run_code(
            LIVE + "print('oops', file=sys.stderr)\nsys.exit(3)\n",
            on_stdout=lambda t: seen.append(("out", t, time.monotonic())),
            on_stderr=lambda t: seen.append(("err", t, time.monotonic())),
            on_event=events.append,
        )
        done = time.monotonic()
        assert (ex.exit_code, ex.status, ex.ok) == (3, "exited", False)
        assert ex.stdout == "first\nsecond\n" and ex.stderr == "oops\n"
        # a chunk as it arrived: print() may write "first" and "\n" apart
        assert seen[0][0] == "out" and seen[0][1].startswith("first")
        assert done - seen[0][2] > 1.0, "not live"
        assert [t for k, t, _ in seen if k == "err"] == ["oops\n"]
        _ids_ok(events)
        assert ex.id == events[0].data["execution_id"] and ex.duration_ms

        ex = sb.run_command(
            'echo "$1|$2|$GREETING|$X"; cat', args=["a b", "c"], env={"X": "y"}, stdin="piped"
        )
        assert ex.stdout == "a b|c|hi|y\npiped" and ex.ok
        ex = sb.run_file("proj/main.py", args=["2", "40"])
        assert ex.stdout == "42\n"
        ex = sb.run_command("sleep 5", timeout=1)
        assert ex.timed_out and ex.status == "timed_out" and not ex.ok

        # test mode: the runner's exit code and its parsed report
        ex = sb.run_tests("proj/tests/test_calc.py")
        assert ex.exit_code == 0, ex.stdout + ex.stderr
        assert ex.tests is not None and (ex.tests.passed, ex.tests.failed) == (1, 0)

        # stream: typed events until the terminal one
        streamed = list(sb.stream(code=TICKS))
        _ids_ok(streamed)
        assert "".join(e.text for e in streamed if isinstance(e, StdoutEvent)) == TICKS_OUT
        assert isinstance(streamed[-1], ExitEvent) and streamed[-1].exit_code == 0
        replay = list(sb.stream(execution_id=streamed[0].data["execution_id"], after=3))
        assert [e.id for e in replay] == [e.id for e in streamed[3:]]

        # kill a running execution from the stream
        killed: list[Event] = []
        for event in sb.stream(command="echo up; sleep 60"):
            killed.append(event)
            if isinstance(event, StdoutEvent):
                info = sb.kill(killed[0].data["execution_id"])
                assert info.id == killed[0].data["execution_id"]
        end = killed[-1]
        assert isinstance(end, ExitEvent) and end.killed and end.exit_code == 137

        # executions, one execution, packages
        listed = sb.executions()
        assert listed[0].id == killed[0].data["execution_id"] and listed[0].status == "killed"
        assert sb.execution(ex.id).exit_code == 0
        assert sb.packages() == []

        # connect to the same sandbox from a second client, close it (the sandbox lives)
        other = Sandbox.connect(sb.id, url=gateway.url)
        assert other.files.read("notes/a.txt") == "héllo"
        other.close()
        assert sb.get_info().status == "running"
    with pytest.raises(SandboxNotFound):  # deleted when the block ended
        Sandbox.connect(sb.id, url=gateway.url)


# --- every method, async twin ------------------------------------------------------------------


async def test_async_twin_every_method(gateway: Gateway, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    async with AsyncSandbox.create("python", url=gateway.url, ttl=600) as sb:
        assert (await sb.get_info()).ttl_seconds == 600
        assert sb.id in [s.id for s in await AsyncSandbox.list(url=gateway.url)]
        assert (await sb.files.write("a.txt", "x")).path == "a.txt"
        await sb.files.write("b.txt", io.BytesIO(b"y" * 3_000_000))  # streamed in chunks
        assert await sb.files.read("a.txt") == "x"
        assert len(await sb.files.read_bytes("b.txt")) == 3_000_000
        assert {f.path for f in await sb.files.list()} == {"a.txt", "b.txt"}
        assert await sb.files.exists("b.txt")
        await sb.files.remove("b.txt")
        with pytest.raises(FileNotFound):
            await sb.files.read_bytes("b.txt")
        assert len(await sb.files.upload_dir(project)) == 4

        stamps: list[float] = []

        async def on_stdout(text: str) -> None:  # async callbacks are awaited
            await asyncio.sleep(0)
            stamps.append(time.monotonic())

        ex = await sb.run_code(LIVE, on_stdout=on_stdout, on_event=lambda e: None)
        assert ex.stdout == "first\nsecond\n" and ex.ok
        assert time.monotonic() - stamps[0] > 1.0, "not live"
        assert (await sb.run_command("exit 4")).exit_code == 4
        assert (await sb.run_file("main.py", args=["1", "2"])).stdout == "3\n"
        tested = await sb.run_tests()
        assert tested.exit_code == 0 and tested.tests is not None and tested.tests.passed == 1

        events = [e async for e in sb.stream(code=TICKS)]
        _ids_ok(events)
        assert "".join(e.text for e in events if isinstance(e, StdoutEvent)) == TICKS_OUT
        eid = events[0].data["execution_id"]
        assert [e.id for e in [e async for e in sb.stream(execution_id=eid, after=5)]] == [
            e.id for e in events[5:]
        ]
        eid, last = "", None
        async for event in sb.stream(command="echo up; sleep 60"):
            if isinstance(event, StartEvent):
                eid = event.execution_id
            if isinstance(event, StdoutEvent):
                assert (await sb.kill(eid)).id == eid
            last = event
        assert isinstance(last, ExitEvent) and last.killed and last.exit_code == 137
        assert (await sb.execution(eid)).status == "killed"
        assert (await sb.executions())[0].id == eid
        assert await sb.packages() == []
        other = await AsyncSandbox.connect(sb.id, url=gateway.url)
        assert await other.files.read("a.txt") == "x"
        await other.close()
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect(sb.id, url=gateway.url)
    # awaited instead of entered: no deletion until asked
    sb2 = await AsyncSandbox.create("node", url=gateway.url)
    try:
        assert (await sb2.run_code("console.log(6 * 7)")).stdout == "42\n"
    finally:
        await sb2.delete()
    await sb2.delete()  # already gone: fine


# --- the environment ---------------------------------------------------------------------------


def test_url_and_key_come_from_the_environment_and_arguments_win(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    with DroppingProxy(port, cut=rb"^NEVER") as proxy:
        monkeypatch.setenv("PETRI_URL", proxy.url)
        monkeypatch.setenv("PETRI_API_KEY", "from-env")
        with Sandbox.create("python") as sb:
            assert sb.run_command("echo env").stdout == "env\n"
        assert all(
            b"authorization: Bearer from-env" in h.lower().replace(b"bearer", b"Bearer")
            for h in proxy.requests
        ), proxy.requests
        seen = len(proxy.requests)
        monkeypatch.setenv("PETRI_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
        with Sandbox.create("python", url=proxy.url, api_key="from-arg") as sb:
            sb.run_command("true")
        assert all(b"Bearer from-arg" in h for h in proxy.requests[seen:])


# --- typed errors ------------------------------------------------------------------------------


def test_errors_are_typed(gateway: Gateway) -> None:
    with pytest.raises(InvalidRequest) as bad:
        Sandbox.create("cobol", url=gateway.url)
    assert bad.value.code == "unknown_language" and bad.value.status == 422
    assert isinstance(bad.value, ValueError) and isinstance(bad.value, PetriError)
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("sb-0000000000000000", url=gateway.url)
    with pytest.raises(GatewayUnavailable) as down:
        Sandbox.create("python", url=f"http://127.0.0.1:{free_port()}")
    assert "is it running?" in down.value.message and "petri serve" in down.value.message
    with Sandbox.create("python", url=gateway.url, env=NO_INDEX) as sb:
        with pytest.raises(ExecutionNotFound):
            sb.execution("ex-0000000000000000")
        done = sb.run_command("true")
        with pytest.raises(Conflict) as conflict:
            sb.kill(done.id)
        assert conflict.value.code == "not_running"
        with pytest.raises(InvalidRequest):
            sb.run_command("true", timeout=0)
        # an install that fails is an exception carrying the partial execution
        sb.files.write("requirements.txt", "petri-no-such-package==1.0\n")
        install: list[str] = []
        with pytest.raises(InstallFailed) as failed:
            sb.run_code("print(1)", on_install=install.append)
        assert "petri-no-such-package" in failed.value.message
        assert failed.value.execution is not None
        assert "petri-no-such-package" in failed.value.execution.install
        assert install and "".join(install) == failed.value.execution.install
        events = list(sb.stream(code="print(1)"))  # a stream yields the error as an event
        assert isinstance(events[-1], ErrorEvent) and events[-1].code == "install_failed"
        assert any(isinstance(e, InstallEvent) for e in events)


def test_quota_exceeded_is_typed(docker_ready: None) -> None:
    with (
        running_gateway("sdk-quota", max_sandboxes="1") as gw,
        Sandbox.create("python", url=gw.url),
    ):
        with pytest.raises(QuotaExceeded) as over:
            Sandbox.create("python", url=gw.url)
        assert over.value.status == 429


# --- drops, silence and long runs --------------------------------------------------------------


def _port(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def test_a_stream_dropped_mid_run_resumes_without_gap_or_duplicate(gateway: Gateway) -> None:
    with (
        DroppingProxy(_port(gateway), after_events=3) as proxy,
        Sandbox.create("python", url=proxy.url) as sb,
    ):
        events = list(sb.stream(code=TICKS))
        ex = sb.run_command("true")
    assert proxy.cuts == 1
    _ids_ok(events)
    assert "".join(e.text for e in events if isinstance(e, StdoutEvent)) == TICKS_OUT
    resumed = [h for h in proxy.requests if b"/events" in h]
    assert len(resumed) == 1 and b"last-event-id: 3" in resumed[0].lower(), resumed
    assert ex.ok


async def test_an_async_stream_dropped_mid_run_resumes(gateway: Gateway) -> None:
    with DroppingProxy(_port(gateway), after_events=5) as proxy:
        async with AsyncSandbox.create("python", url=proxy.url) as sb:
            chunks: list[str] = []
            ex = await sb.run_code(TICKS, on_stdout=chunks.append)
    assert proxy.cuts == 1
    assert ex.stdout == TICKS_OUT and "".join(chunks) == TICKS_OUT and ex.exit_code == 0


def test_a_start_cut_before_its_answer_runs_once(gateway: Gateway) -> None:
    """The request reached the gateway, the answer never reached the client: the SDK sends
    it again with the same Idempotency-Key and gets the same run, not a second one."""
    with (
        DroppingProxy(_port(gateway), before_response=True) as proxy,
        Sandbox.create("python", url=proxy.url) as sb,
    ):
        ex = sb.run_code(TICKS)
        runs = sb.executions()
    assert proxy.cuts == 1
    assert ex.stdout == TICKS_OUT
    posts = [h for h in proxy.requests if b"/exec " in h]
    keys = {line for h in posts for line in h.lower().split(b"\r\n") if b"idempotency-key" in line}
    assert len(posts) == 2 and len(keys) == 1, posts
    assert len(runs) == 1, [r.id for r in runs]


@pytest.fixture(scope="module")
def quick_ping_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("sdk-keepalive", keepalive_seconds="0.3") as gw:
        yield gw


def test_a_run_silent_past_the_keepalive_keeps_its_connection(
    quick_ping_gateway: Gateway,
) -> None:
    """Silent for 3 s with a 1 s stall timeout: the keep-alives (every 0.3 s) hold the one
    connection; no reconnect, no stray event."""
    with (
        DroppingProxy(_port(quick_ping_gateway), cut=rb"^NEVER") as proxy,
        Sandbox.create("python", url=proxy.url) as sb,
    ):
        sb.client.stall_timeout = 1.0
        events = list(sb.stream(command="echo a; sleep 3; echo b"))
    _ids_ok(events)
    assert [e.type for e in events] == ["start", "stdout", "stdout", "exit"]
    assert not [h for h in proxy.requests if b"/events" in h], "it reconnected"


def test_a_stalled_stream_reconnects_and_loses_nothing(gateway: Gateway) -> None:
    """No keep-alive within 1 s (the default is 15 s): the SDK takes the connection for dead,
    reconnects with Last-Event-ID, and the run reads through exactly once."""
    with (
        DroppingProxy(_port(gateway), cut=rb"^NEVER") as proxy,
        Sandbox.create("python", url=proxy.url) as sb,
    ):
        sb.client.stall_timeout = 1.0
        ex = sb.run_command("echo a; sleep 3.5; echo b")
    assert ex.stdout == "a\nb\n" and ex.exit_code == 0
    resumed = [h for h in proxy.requests if b"/events" in h]
    assert len(resumed) >= 2 and all(b"last-event-id: 2" in h.lower() for h in resumed)


def test_a_long_run_is_not_cut_by_a_short_client_timeout(gateway: Gateway) -> None:
    """A 2 s client timeout for calls; runs of 22 s on both twins end normally."""
    command = "sleep 22; echo done"

    async def run_async() -> Any:
        async with AsyncSandbox.create("python", url=gateway.url, timeout=2) as sb:
            return await sb.run_command(command, timeout=120)

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(a=asyncio.run(run_async())))
    thread.start()
    started = time.monotonic()
    with Sandbox.create("python", url=gateway.url, timeout=2) as sb:
        ex = sb.run_command(command, timeout=120)
    thread.join(120)
    assert time.monotonic() - started > 21
    for done in (ex, result["a"]):
        assert done.stdout == "done\n" and done.exit_code == 0 and done.duration_ms > 21_000


def test_a_shared_client_serves_many_sandboxes(gateway: Gateway) -> None:
    with Client(gateway.url) as client:
        boxes = [Sandbox.create("python", client=client) for _ in range(2)]
        try:
            outs = [b.run_code(f"print({i})").stdout for i, b in enumerate(boxes)]
        finally:
            for b in boxes:
                b.delete()
        assert outs == ["0\n", "1\n"]
        assert client.http.is_closed is False  # the sandboxes do not close what they share


def test_the_async_client_is_an_async_context_manager(gateway: Gateway) -> None:
    async def main() -> bool:
        async with AsyncClient(gateway.url) as client:
            sb = await AsyncSandbox.create("python", client=client)
            await sb.delete()
        return client.http.is_closed

    assert asyncio.run(main())


def test_stderr_events_are_typed(gateway: Gateway) -> None:
    with Sandbox.create("python", url=gateway.url) as sb:
        events = list(sb.stream(command="echo out; echo err >&2"))
    assert sorted(type(e).__name__ for e in events[1:3]) == ["StderrEvent", "StdoutEvent"]
    assert [(e.type, e.text) for e in events if isinstance(e, StderrEvent)] == [("stderr", "err\n")]


# --- serve mode --------------------------------------------------------------------------------

SERVER = "python3 -m http.server 8000"


def test_services_on_the_sync_twin(gateway: Gateway) -> None:
    with Sandbox.create("python", url=gateway.url) as sb:
        sb.files.write("index.html", "<h1>served</h1>")
        logs: list[str] = []
        svc = sb.services.start(SERVER, port=8000, ready_path="/", on_stderr=logs.append)
        assert svc.status == "ready" and svc.id.startswith("sv-") and svc.port == 8000
        assert svc.preview_url and httpx.get(svc.preview_url, timeout=30).text == "<h1>served</h1>"
        assert [s.id for s in sb.services.list()] == [svc.id]
        assert sb.services.get(svc.id).execution_id == svc.execution_id
        sb.services.stop(svc)
        assert sb.services.get(svc.id).status == "stopped"
        assert httpx.get(svc.preview_url, timeout=30).status_code in (404, 410)
        with pytest.raises(ServiceFailed) as exited:
            sb.services.start("echo bye; exit 3", port=8001)
        assert exited.value.execution is not None and exited.value.execution.stdout == "bye\n"
        with pytest.raises(ServiceFailed) as silent:
            sb.services.start("sleep 60", port=8002, ready_timeout=2)
        assert silent.value.code == "service_not_ready"
        with pytest.raises(ServiceNotFound):
            sb.services.get("sv-0000000000000000")
        started = sb.services.start(SERVER, port=8000, wait=False)
        assert started.status == "starting"
        sb.services.stop(started.id)


async def test_services_on_the_async_twin(gateway: Gateway) -> None:
    async with AsyncSandbox.create("python", url=gateway.url) as sb:
        await sb.files.write("index.html", "async")
        svc = await sb.services.start(SERVER, port=8000)
        assert svc.preview_url is not None
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(svc.preview_url)).text == "async"
        assert [s.status for s in await sb.services.list()] == ["ready"]
        assert (await sb.services.get(svc.id)).status == "ready"
        await sb.services.stop(svc)
        assert (await sb.services.get(svc.id)).status == "stopped"


async def test_a_service_start_cancelled_while_waiting_is_stopped(gateway: Gateway) -> None:
    """An agent (or an MCP client) that gives up on start() must not leave a service running
    that it has no handle to."""
    async with AsyncSandbox.create("python", url=gateway.url) as sb:
        waiting = asyncio.create_task(sb.services.start("sleep 600", port=8003))
        for _ in range(100):
            if await sb.services.list():
                break
            await asyncio.sleep(0.1)
        (started,) = await sb.services.list()
        assert started.status == "starting"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await sb.services.get(started.id)).status == "stopped"


def test_a_service_whose_callback_raises_is_stopped(gateway: Gateway) -> None:
    def explode(text: str) -> None:
        raise RuntimeError("callback failed")

    with Sandbox.create("python", url=gateway.url) as sb:
        with pytest.raises(RuntimeError, match="callback failed"):
            sb.services.start("echo hello; sleep 600", port=8004, on_stdout=explode)
        (started,) = sb.services.list()
        assert started.status == "stopped"


# --- test mode ---------------------------------------------------------------------------------

APP = (
    "import http.server, socketserver\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'pong')\n"
    "print('serving', flush=True)\n"
    "socketserver.TCPServer.allow_reuse_address = True  # the last run's socket may linger\n"
    "socketserver.TCPServer(('127.0.0.1', 5000), H).serve_forever()\n"
)
APP_TESTS = (
    "import urllib.request\n\n"
    "def test_ping():\n"
    "    assert urllib.request.urlopen('http://127.0.0.1:5000/').read() == b'pong'\n\n"
    "def test_bad():\n"
    "    assert 1 == 2, 'one is not two'\n"
)


def _app_project(sb: Sandbox) -> None:
    sb.files.write("conftest.py", "")
    sb.files.write("app.py", APP)
    sb.files.write("tests/test_app.py", APP_TESTS)


def test_run_tests_reports_results_with_an_app_under_test(gateway: Gateway) -> None:
    with Sandbox.create("python", url=gateway.url) as sb:
        _app_project(sb)
        events: list[Event] = []
        ex = sb.run_tests(app=App("python3 app.py", 5000, ready_path="/"), on_event=events.append)
        assert (ex.status, ex.exit_code, ex.ok) == ("exited", 1, False)
        assert ex.tests is not None and ex.tests.runner == "pytest"
        assert (ex.tests.passed, ex.tests.failed, ex.tests.skipped, ex.tests.errors) == (1, 1, 0, 0)
        assert [c.name for c in ex.tests.failures] == ["test_bad"]
        assert "one is not two" in (ex.tests.failures[0].message or "")
        assert ex.app_output.startswith("serving\n") and ex.ready_after_ms is not None
        assert "serving" not in ex.stdout, "the app's output is never the runner's"
        types = [e.type for e in events]
        assert types.index("ready") < types.index("report") < types.index("exit")
        # only the passing file: ok
        sb.files.remove("tests/test_app.py")
        sb.files.write("tests/test_ok.py", "def test_ok():\n    assert True\n")
        ok = sb.run_tests("tests/test_ok.py")
        assert ok.ok and ok.tests is not None and ok.tests.ok and ok.tests.passed == 1
        # an app that dies, an app that never answers: typed failures with its output
        with pytest.raises(AppExited) as died:
            sb.run_tests(app=App("echo crashing; exit 3", 5000))
        assert died.value.execution is not None and "crashing" in died.value.execution.app_output
        with pytest.raises(AppNotReady):
            sb.run_tests(app={"command": "sleep 60", "port": 5001, "ready_timeout_seconds": 2})


async def test_run_tests_on_the_async_twin(gateway: Gateway) -> None:
    async with AsyncSandbox.create("python", url=gateway.url) as sb:
        await sb.files.write("conftest.py", "")
        await sb.files.write("app.py", APP)
        await sb.files.write("tests/test_app.py", APP_TESTS)
        ex = await sb.run_tests(app=App("python3 app.py", 5000))
        assert ex.tests is not None and (ex.tests.passed, ex.tests.failed) == (1, 1)
        streamed = [e async for e in sb.stream(test=True, app=App("python3 app.py", 5000))]
        report = next(e for e in streamed if isinstance(e, ReportEvent))
        assert report.report is not None and report.report.failed == 1
        end = streamed[-1]
        assert isinstance(end, ExitEvent) and end.tests is not None and end.tests.passed == 1
