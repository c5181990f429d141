"""Test mode (DESIGN §9) through a real gateway: the example projects of
examples/06_test_a_project in all four languages (plus a failing test each), the app under
test and its readiness, bad apps, bad input, kills, timeouts, hostile reports."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, container_ids, running_gateway
from tests.sse import Received, check_sequence, stream_events, text

pytestmark = pytest.mark.docker

EXAMPLES = ROOT / "examples" / "06_test_a_project"
MakeSandbox = Callable[..., dict[str, Any]]
# Lists every process of the sandbox (no `ps` in the images): one command line a line.
PROCESSES = "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline 2>/dev/null; echo; done"
SLOW = 900  # seconds: a cold Go build of net/http takes minutes on a loaded 2-core machine


def upload(client: httpx.Client, sid: str, files: dict[str, str | bytes]) -> None:
    for path, data in files.items():
        r = client.put(f"/v1/sandboxes/{sid}/files/{path}", content=data)
        assert r.status_code == 201, r.text


def example(language: str) -> dict[str, str | bytes]:
    folder = EXAMPLES / language
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def processes(client: httpx.Client, sid: str) -> str:
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": PROCESSES})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return str(r.json()["stdout"])


def run_stream(client: httpx.Client, sid: str, **body: Any) -> list[Received]:
    events = stream_events(client, "POST", f"/v1/sandboxes/{sid}/exec", json={"test": True, **body})
    check_sequence(events)
    return events


def one(events: list[Received], kind: str) -> dict[str, Any]:
    found = [e.data for e in events if e.type == kind]
    assert len(found) == 1, [(e.type, e.data) for e in events]
    return found[0]


def assert_order(events: list[Received]) -> None:
    """start → install → app (+ ready) → runner output → report → exit; no overlap."""
    types = [e.type for e in events]
    ready, report = types.index("ready"), types.index("report")
    installs = [i for i, t in enumerate(types) if t == "install"]
    output = [i for i, t in enumerate(types) if t in ("stdout", "stderr")]
    apps = [i for i, t in enumerate(types) if t == "app"]
    assert output, "the runner printed nothing"
    assert all(i < min([*apps, ready]) for i in installs)
    assert ready < min(output) and max(output) < report
    assert types[-1] == "exit"


def assert_report(
    report: dict[str, Any], runner: str, counts: tuple[int, int, int, int], names: set[str]
) -> None:
    assert report["runner"] == runner
    got = (report["passed"], report["failed"], report["skipped"], report["errors"])
    assert got == counts, report
    assert {c["name"] for c in report["cases"]} == names
    assert isinstance(report["duration_ms"], int) and report["duration_ms"] > 0
    for case in report["cases"]:
        assert set(case) <= {"name", "suite", "status", "duration_ms", "message"}
        assert case["suite"] and case["status"] in ("passed", "failed", "skipped", "error")


def counts_of(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("passed", "failed", "skipped", "errors")}


# --- the four languages, end to end ----------------------------------------------------------


def test_python_app_and_pytest(client: httpx.Client, new_sandbox: MakeSandbox) -> None:
    sid = new_sandbox("python")["id"]
    broken = 'def test_broken():\n    assert 1 + 1 == 3, "math is hard"\n'
    upload(client, sid, {**example("python"), "tests/test_broken.py": broken})
    app = {"command": "python3 app.py", "port": 5000, "ready_path": "/"}
    events = run_stream(client, sid, app=app)
    assert_order(events)
    report = one(events, "report")
    names = {"test_health", "test_add", "test_add_refuses_words", "test_broken"}
    assert_report(report, "pytest", (3, 1, 0, 0), names)
    (failed,) = [c for c in report["cases"] if c["status"] == "failed"]
    assert failed["suite"] == "tests.test_broken" and "math is hard" in failed["message"]
    exit_ = events[-1].data
    assert exit_["exit_code"] == 1 and exit_["tests"] == counts_of(report)
    ready = one(events, "ready")
    assert ready["port"] == 5000 and 0 <= ready["after_ms"] < 30000
    # The app's output only as `app` events, the runner's only as stdout/stderr.
    app_out, runner_out = text(events, "app"), text(events, "stdout") + text(events, "stderr")
    assert "listening on port 5000" in app_out and "GET /add?a=2&b=3 -> 200" in app_out
    assert "1 failed, 3 passed" in runner_out
    assert "listening" not in runner_out and "GET /" not in runner_out
    assert "passed" not in app_out and "math is hard" not in app_out
    assert {e.data["stream"] for e in events if e.type == "app"} <= {"stdout", "stderr"}
    # The app never outlives the run; its report folder is gone.
    assert "app.py" not in processes(client, sid)
    files = [f["path"] for f in client.get(f"/v1/sandboxes/{sid}/files").json()["files"]]
    assert not [f for f in files if f.startswith(".petri/reports/")]

    # The JSON answer carries the whole report under `tests`, and the app's output apart.
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"test": True, "app": app})
    assert r.status_code == 200, r.text
    result = r.json()
    assert_report(result["tests"], "pytest", (3, 1, 0, 0), names)
    assert result["exit_code"] == 1 and "listening on port 5000" in result["app"]["stdout"]
    assert "listening" not in result["stdout"] and result["app"]["ready_after_ms"] >= 0
    assert "3 passed" not in result["app"]["stdout"]


def test_node_npm_test_and_json_answer(client: httpx.Client, new_sandbox: MakeSandbox) -> None:
    sid = new_sandbox("node")["id"]
    broken = (
        'const test = require("node:test");\nconst assert = require("node:assert");\n'
        'test("broken", () => { assert.strictEqual(1 + 1, 3, "math is hard"); });\n'
    )
    upload(client, sid, {**example("node"), "test/broken.test.js": broken})
    app = {"command": "node app.js", "port": 3000, "ready_path": "/"}
    r = client.post(
        f"/v1/sandboxes/{sid}/exec", json={"test": True, "app": app}, timeout=SLOW
    )
    assert r.status_code == 200, r.text
    result = r.json()
    report = result["tests"]
    names = {"health", "add", "add refuses words", "broken"}
    assert_report(report, "npm test", (3, 1, 0, 0), names)
    (failed,) = [c for c in report["cases"] if c["status"] == "failed"]
    assert "math is hard" in failed["message"]
    assert result["exit_code"] != 0 and "GET /add?a=2&b=3 -> 200" in result["app"]["stdout"]
    assert "✖ broken" in result["stdout"] and "GET /" not in result["stdout"]
    assert "node app.js" not in processes(client, sid)


def test_node_without_a_test_script_uses_node_test(
    client: httpx.Client, new_sandbox: MakeSandbox
) -> None:
    sid = new_sandbox("node")["id"]
    tests = (
        'const test = require("node:test");\nconst assert = require("node:assert");\n'
        'test("ok", () => {});\n'
        'test("bad", () => { assert.strictEqual(2, 3, "two is not three"); });\n'
        'test.skip("later", () => {});\n'
    )
    # npm init's placeholder script is no test script: node's own runner runs.
    package = '{"name": "x", "scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'
    upload(client, sid, {"test/a.test.js": tests, "package.json": package})
    events = run_stream(client, sid, timeout_seconds=SLOW)
    report = one(events, "report")
    assert_report(report, "node --test", (1, 1, 1, 0), {"ok", "bad", "later"})
    assert events[-1].data["tests"] == counts_of(report)


def test_go_app_and_go_test(client: httpx.Client, new_sandbox: MakeSandbox) -> None:
    sid = new_sandbox("go")["id"]
    broken = (
        'package main\n\nimport "testing"\n\n'
        'func TestBroken(t *testing.T) { t.Errorf("math is hard: got %d", 1+1) }\n'
    )
    upload(client, sid, {**example("go"), "broken_test.go": broken})
    app = {"command": "go run .", "port": 8080, "ready_timeout_seconds": SLOW - 60}
    events = run_stream(client, sid, app=app, timeout_seconds=SLOW)
    assert_order(events)
    report = one(events, "report")
    names = {"TestHealth", "TestAdd", "TestAddRefusesWords", "TestBroken"}
    assert_report(report, "go test", (3, 1, 0, 0), names)
    (failed,) = [c for c in report["cases"] if c["status"] == "failed"]
    assert failed["suite"] == "example.com/app"
    assert failed["message"] == "broken_test.go:5: math is hard: got 2"
    assert events[-1].data["tests"] == counts_of(report)
    # `go test -json` is shown as the text it carries, never as JSON.
    stdout = text(events, "stdout")
    assert "--- FAIL: TestBroken" in stdout and "=== RUN   TestAdd" in stdout
    assert '"Action"' not in stdout
    assert "listening on port 8080" in text(events, "app")
    assert "listening" not in stdout + text(events, "stderr")


@pytest.fixture
def java_image(docker_ready: None) -> None:
    """The java image as runtimes/java describes it (with JUnit 5), checked again right
    before the test: other checkouts on one Docker engine may have built their own since
    the session started (a no-op when it is current)."""
    from gateway.images import build_images
    from gateway.runtimes import load_runtimes

    build_images(load_runtimes(ROOT / "runtimes"), ["java"], log=lambda line: None)


def test_java_app_and_junit(
    client: httpx.Client, new_sandbox: MakeSandbox, java_image: None
) -> None:
    sid = new_sandbox("java")["id"]
    broken = (
        "import static org.junit.jupiter.api.Assertions.assertEquals;\n"
        "import org.junit.jupiter.api.Test;\n\n"
        "class BrokenTest {\n    @Test\n"
        '    void broken() { assertEquals(3, 1 + 1, "math is hard"); }\n}\n'
    )
    upload(client, sid, {**example("java"), "src/test/java/BrokenTest.java": broken})
    app = {"command": "java src/main/java/App.java", "port": 8080, "ready_timeout_seconds": 300}
    r = client.post(
        f"/v1/sandboxes/{sid}/exec",
        json={"test": True, "app": app, "timeout_seconds": SLOW},
        timeout=SLOW,
    )
    assert r.status_code == 200, r.text
    result = r.json()
    report = result["tests"]
    names = {"health()", "add()", "addRefusesWords()", "broken()"}
    assert_report(report, "junit", (3, 1, 0, 0), names)
    (failed,) = [c for c in report["cases"] if c["status"] == "failed"]
    assert failed["suite"] == "BrokenTest"
    assert failed["message"] == "math is hard ==> expected: <3> but was: <2>"
    assert result["exit_code"] == 1 and result["stdout"].count("✔") >= 3
    assert "listening on port 8080" in result["app"]["stdout"]
    assert "App.java" not in processes(client, sid)


# --- bad apps --------------------------------------------------------------------------------


def test_app_that_exits_before_it_is_ready(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    command = "echo booting; echo 'no config file' >&2; exit 3"
    events = run_stream(client, sid, app={"command": command, "port": 5000})
    error = events[-1]
    assert error.type == "error" and error.data["code"] == "app_exited"
    assert "code 3" in error.data["message"]
    assert "booting" in error.data["message"] and "no config file" in error.data["message"]
    types = {e.type for e in events}
    assert not types & {"stdout", "stderr", "report", "ready", "exit"}  # no runner ran
    assert "booting" in text(events, "app")


def test_app_that_never_answers(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    deaf = "python3 -c \"import time; print('up but deaf', flush=True); time.sleep(600)\""
    started = time.monotonic()
    app = {"command": deaf, "port": 5000, "ready_timeout_seconds": 3}
    events = run_stream(client, sid, app=app)
    took = time.monotonic() - started
    error = events[-1]
    assert error.type == "error" and error.data["code"] == "app_not_ready"
    assert "within 3 s" in error.data["message"] and "up but deaf" in error.data["message"]
    assert 3 <= took < 30
    assert "up but deaf" in text(events, "app") and "report" not in {e.type for e in events}
    assert "time.sleep(600)" not in processes(client, sid)


def test_a_port_already_taken_is_app_exited_not_a_false_ready(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    other = {"command": APP["command"], "wait": False, "timeout_seconds": 120}
    squatter = client.post(f"/v1/sandboxes/{sid}/exec", json=other).json()["execution_id"]
    try:
        listening = (
            "for i in $(seq 100); do : 2>/dev/null <>/dev/tcp/127.0.0.1/5000 && exit; "
            "sleep 0.2; done; exit 1"
        )
        assert client.post(f"/v1/sandboxes/{sid}/exec", json={"command": listening}).json()[
            "exit_code"
        ] == 0
        events = run_stream(client, sid, app={"command": "python3 app.py", "port": 5000})
        error = events[-1]
        assert error.type == "error" and error.data["code"] == "app_exited"
        assert "port 5000 is already taken" in error.data["message"]
        assert "ready" not in {e.type for e in events}
    finally:
        client.post(f"/v1/sandboxes/{sid}/executions/{squatter}/kill")


def test_readiness_follows_the_app_not_a_fixed_sleep(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    server = "python3 -m http.server --bind 127.0.0.1 5000"
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    fast = one(run_stream(client, sid, app={"command": server, "port": 5000}), "ready")
    slow_app = {"command": f"sleep 2; exec {server}", "port": 5000, "ready_path": "/"}
    slow = one(run_stream(client, sid, app=slow_app), "ready")
    # A fast app is ready well before its 30 s timeout; a slow one when it listens, not before.
    assert fast["after_ms"] < 10000
    assert 2000 <= slow["after_ms"] < 2000 + 10000


# --- no tests, bad input ---------------------------------------------------------------------


def test_a_project_without_tests_gets_a_report_that_says_so(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    upload(client, sandbox["id"], {"app.py": "print('no tests here')\n"})
    events = run_stream(client, sandbox["id"])
    report = one(events, "report")
    assert report["cases"] == [] and report["message"] == "no tests were found"
    assert counts_of(report) == {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    assert events[-1].data["exit_code"] == 5  # pytest's "no tests collected"
    assert events[-1].data["tests"] == counts_of(report)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"app": {"command": "x", "port": 80}}, "invalid_field"),
        ({"app": {"command": "x", "port": 70000}}, "invalid_field"),
        ({"app": {"command": "x", "port": 1023}}, "invalid_field"),
        ({"app": {"command": "x", "port": "5000"}}, "invalid_field"),
        ({"app": {"command": "x", "port": True}}, "invalid_field"),
        ({"app": {"command": "", "port": 5000}}, "invalid_field"),
        ({"app": {"command": "   ", "port": 5000}}, "invalid_field"),
        ({"app": {"command": "x" * 8193, "port": 5000}}, "invalid_field"),
        ({"app": {"port": 5000}}, "invalid_field"),
        ({"app": {"command": "x", "port": 5000, "ready_path": "health"}}, "invalid_field"),
        ({"app": {"command": "x", "port": 5000, "ready_path": "/a b"}}, "invalid_field"),
        ({"app": {"command": "x", "port": 5000, "ready_path": "/\r\nX: y"}}, "invalid_field"),
        ({"app": {"command": "x", "port": 5000, "ready_timeout_seconds": 0}}, "invalid_field"),
        ({"app": {"command": "x", "port": 5000, "host": "0.0.0.0"}}, "unknown_field"),
        ({"app": "python app.py"}, "invalid_field"),
        (
            {"app": {"command": "x", "port": 5000, "ready_timeout_seconds": 60},
             "timeout_seconds": 10},
            "invalid_field",
        ),
        ({"test": False, "app": {"command": "x", "port": 5000}}, "invalid_field"),
        ({"code": "print(1)"}, "invalid_field"),
    ],
)
def test_bad_test_mode_requests_are_422_and_change_nothing(
    client: httpx.Client, sandbox: dict[str, Any], body: dict[str, Any], code: str
) -> None:
    sid = sandbox["id"]
    before = client.get(f"/v1/sandboxes/{sid}/files").json()
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"test": True, **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert client.get(f"/v1/sandboxes/{sid}/executions").json()["executions"] == []
    assert client.get(f"/v1/sandboxes/{sid}/files").json() == before


def test_filename_narrows_pytest_and_a_missing_one_is_404(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    upload(client, sid, {
        "tests/test_a.py": "def test_a():\n    pass\n",
        "tests/test_b.py": "def test_b():\n    pass\n",
    })
    report = one(run_stream(client, sid, filename="tests/test_b.py"), "report")
    assert [c["name"] for c in report["cases"]] == ["test_b"]
    report = one(run_stream(client, sid, filename="tests"), "report")  # a folder works too
    assert report["passed"] == 2
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"test": True, "filename": "nope.py"})
    assert r.status_code == 404


def test_filename_is_refused_where_the_runner_runs_the_whole_project(
    client: httpx.Client, new_sandbox: MakeSandbox
) -> None:
    sid = new_sandbox("go")["id"]
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"test": True, "filename": "x_test.go"})
    assert r.status_code == 422 and "whole project" in r.json()["error"]["message"]


# --- kills, timeouts, shutdown: the app never outlives the run --------------------------------

SLOW_TEST = "import time\n\ndef test_slow():\n    time.sleep(300)\n"
APP = {"command": "python3 -m http.server --bind 127.0.0.1 5000", "port": 5000}


def wait_for(client: httpx.Client, sid: str, needle: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while needle not in processes(client, sid):
        assert time.monotonic() < deadline, f"{needle!r} never ran"
        time.sleep(0.3)


def test_kill_during_the_tests_stops_runner_and_app(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_slow.py": SLOW_TEST})
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"test": True, "app": APP, "wait": False})
    eid = r.json()["execution_id"]
    wait_for(client, sid, "pytest")
    assert "http.server" in processes(client, sid)
    assert client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill").status_code == 202
    events = stream_events(client, "GET", f"/v1/sandboxes/{sid}/executions/{eid}/events")
    check_sequence(events)
    assert events[-1].type == "exit" and events[-1].data["exit_code"] == 137
    report = one(events, "report")
    assert report["cases"] is None and "killed" in report["message"]
    left = processes(client, sid)
    assert "pytest" not in left and "http.server" not in left


def test_kill_while_waiting_for_the_app(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    app = {"command": "sleep 299", "port": 5000, "ready_timeout_seconds": 250}
    body = {"test": True, "app": app, "wait": False, "timeout_seconds": 300}
    r = client.post(f"/v1/sandboxes/{sid}/exec", json=body)
    assert r.status_code == 202, r.text
    eid = r.json()["execution_id"]
    wait_for(client, sid, "sleep 299")
    started = time.monotonic()
    assert client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill").status_code == 202
    events = stream_events(client, "GET", f"/v1/sandboxes/{sid}/executions/{eid}/events")
    assert time.monotonic() - started < 20
    assert events[-1].type == "exit" and events[-1].data["exit_code"] == 137
    assert not {e.type for e in events} & {"report", "ready", "stdout"}
    assert "sleep 299" not in processes(client, sid)


def test_timeout_bounds_the_whole_run(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_slow.py": SLOW_TEST})
    started = time.monotonic()
    events = run_stream(client, sid, app=APP, timeout_seconds=8)
    assert time.monotonic() - started < 8 + 20
    exit_ = events[-1].data
    assert exit_["timed_out"] is True and exit_["duration_ms"] < (8 + 15) * 1000
    assert "timed out" in one(events, "report")["message"]
    left = processes(client, sid)
    assert "pytest" not in left and "http.server" not in left


def test_gateway_shutdown_stops_the_app(docker_ready: None) -> None:
    with running_gateway("testmode-stop", shutdown_grace_seconds="1") as gw, gw.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        upload(c, sid, {"tests/test_slow.py": SLOW_TEST})
        body = {"test": True, "app": APP, "wait": False}
        assert c.post(f"/v1/sandboxes/{sid}/exec", json=body).status_code == 202
        wait_for(c, sid, "pytest")
        (cid,) = container_ids(f"petri.sandbox={sid}")
        gw.stop()
        left = subprocess.run(
            ["docker", "exec", cid, "sh", "-c", PROCESSES],
            capture_output=True, text=True, check=True,
        ).stdout
        assert "http.server" not in left and "pytest" not in left


def test_a_daemonizing_app_does_not_outlive_the_run(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    # The server leaves the app's process group (setsid); the group's shell just waits.
    escape = "setsid python3 -m http.server --bind 127.0.0.1 5000 & wait"
    events = run_stream(client, sid, app={"command": escape, "port": 5000})
    assert one(events, "report")["passed"] == 1 and events[-1].type == "exit"
    assert "http.server" not in processes(client, sid)


def test_a_flooding_app_has_its_own_budget(docker_ready: None) -> None:
    settings = {"output_budget_bytes": "65536", "output_tail_bytes": "4096"}
    with running_gateway("testmode-budget", **settings) as gw, gw.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        upload(c, sid, {"tests/test_x.py": "def test_x():\n    print('x' * 50000)\n    assert 0\n"})
        flood = (
            "head -c 3000000 /dev/zero | tr '\\0' a; echo; "
            "exec python3 -m http.server --bind 127.0.0.1 5000"
        )
        events = run_stream(c, sid, app={"command": flood, "port": 5000})
        truncated = [e.data for e in events if e.type == "truncated"]
        assert [t.get("source") for t in truncated] == ["app"]
        assert len(text(events, "app")) <= 65536 + 2 * 4096
        exit_ = events[-1].data
        assert exit_["truncated"] is False and exit_["tests"]["failed"] == 1
        assert "x" * 50000 in text(events, "stdout")  # the runner's output is whole


def test_a_gateway_crash_leaves_no_app_after_restart(docker_ready: None) -> None:
    with running_gateway("testmode-crash") as gw:
        with gw.client() as c:
            sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            upload(c, sid, {"tests/test_slow.py": SLOW_TEST})
            body = {"test": True, "app": APP, "wait": False}
            eid = c.post(f"/v1/sandboxes/{sid}/exec", json=body).json()["execution_id"]
            wait_for(c, sid, "pytest")
        gw.stop(signal.SIGKILL)  # no clean-up at all: the app and pytest live on
        (cid,) = container_ids(f"petri.sandbox={sid}")
        ps = ["docker", "exec", cid, "sh", "-c", PROCESSES]
        assert "http.server" in subprocess.run(ps, capture_output=True, text=True).stdout
        gw.start()  # recovery marks the run interrupted and kills its groups, the app's too
        with gw.client() as c:
            events = stream_events(c, "GET", f"/v1/sandboxes/{sid}/executions/{eid}/events")
            assert events[-1].type == "error" and events[-1].data["code"] == "interrupted"
        left = subprocess.run(ps, capture_output=True, text=True, check=True).stdout
        assert "http.server" not in left and "pytest" not in left


# --- hostile reports -------------------------------------------------------------------------

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">]>
<testsuite name="&e;"><testcase name="&e;"/></testsuite>
"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<testsuite name="s"><testcase name="&x;"/></testsuite>
"""


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ('cp laughs.xml "$PETRI_REPORT_DIR/"', "refused"),
        ('cp xxe.xml "$PETRI_REPORT_DIR/"', "refused"),
        ('printf "<testsuite><testcase" > "$PETRI_REPORT_DIR/r.xml"', "not well-formed"),
        ('echo "<html/>" > "$PETRI_REPORT_DIR/r.xml"', "not a JUnit XML report"),
        ('head -c 9000000 /dev/zero > "$PETRI_REPORT_DIR/r.xml"', "larger than"),
        ('ln -s /etc/passwd "$PETRI_REPORT_DIR/r.xml"', "left no report"),
        ('mkfifo "$PETRI_REPORT_DIR/r.xml"', "left no report"),
        ('rmdir "$PETRI_REPORT_DIR" && ln -s / "$PETRI_REPORT_DIR"', "left no report"),
    ],
)
def test_hostile_reports_give_null_cases_not_a_crash(
    client: httpx.Client, sandbox: dict[str, Any], script: str, message: str
) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"laughs.xml": LAUGHS, "xxe.xml": XXE})
    started = time.monotonic()
    events = run_stream(client, sid, command=script)
    assert time.monotonic() - started < 60
    report = one(events, "report")
    assert report["runner"] == "command" and report["cases"] is None
    assert report["passed"] is None and message in report["message"], report
    assert "root:" not in str(report)
    assert events[-1].type == "exit" and events[-1].data["tests"]["failed"] is None
    # The gateway removed the report folder (a symlink: only the link) and still serves
    # (removal follows the run; the sandbox's next exec waits for it).
    processes(client, sid)
    files = [f["path"] for f in client.get(f"/v1/sandboxes/{sid}/files").json()["files"]]
    assert not [f for f in files if f.startswith(".petri/reports/")]
    assert Path("/etc/passwd").exists()


def test_a_command_can_report_junit_xml(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    command = 'python3 -m pytest -q -p no:cacheprovider --junitxml="$PETRI_REPORT_DIR/mine.xml"'
    report = one(run_stream(client, sid, command=command), "report")
    assert report["runner"] == "command" and report["passed"] == 1


def test_concurrent_followers_see_app_events(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    """A second client following the run by id sees the same app/ready/report events."""
    sid = sandbox["id"]
    upload(client, sid, {"tests/test_x.py": "def test_x():\n    pass\n"})
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"test": True, "app": APP, "wait": False})
    eid = r.json()["execution_id"]
    seen: list[list[Received]] = []

    def follow() -> None:
        seen.append(stream_events(client, "GET", f"/v1/sandboxes/{sid}/executions/{eid}/events"))

    threads = [threading.Thread(target=follow) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(seen) == 2 and [e.data for e in seen[0]] == [e.data for e in seen[1]]
    assert {"app", "ready", "report", "exit"} <= {e.type for e in seen[0]}
