"""Streams that survive: reconnect with Last-Event-ID, several followers, kill, stdin,
idempotent retries and the output budget, against a real uvicorn gateway and real Docker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, running_gateway
from tests.sse import Received, check_sequence, parse_wire, stream_events, text

pytestmark = pytest.mark.docker

TICKS = (
    "import time\n"
    "for i in range({n}):\n"
    "    print(f'tick {{i}}', flush=True)\n"
    "    time.sleep({pause})\n"
)


# How many `sleep 300`/`sleep 301` processes the sandbox holds (the counter does not match).
SLEEPERS = (
    "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null"
    " | grep -c '^sleep 30[01] ' || true"
)


def ticks(n: int) -> str:
    return "".join(f"tick {i}\n" for i in range(n))


def start(client: httpx.Client, sid: str, **body: Any) -> str:
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={**body, "wait": False})
    assert r.status_code == 202, r.text
    path, _, query = r.json()["events_url"].partition("?")
    assert path == f"/v1/sandboxes/{sid}/executions/{r.json()['execution_id']}/events"
    assert query.startswith("token=")  # read-only, this run only: for EventSource (§11)
    return str(r.json()["execution_id"])


def events_url(sid: str, eid: str) -> str:
    return f"/v1/sandboxes/{sid}/executions/{eid}/events"


def record(client: httpx.Client, sid: str, eid: str) -> dict[str, Any]:
    r = client.get(f"/v1/sandboxes/{sid}/executions/{eid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_disconnect_does_not_stop_it_and_last_event_id_resumes_exactly(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    n = 15
    first: list[Received] = []
    with client.stream(
        "POST",
        f"/v1/sandboxes/{sid}/exec",
        json={"code": TICKS.format(n=n, pause=0.2)},
        headers={"Accept": "text/event-stream"},
    ) as r:
        eid = r.headers["x-execution-id"]
        for event in parse_wire(r.iter_lines()):
            first.append(event)
            if text(first, "stdout").count("\n") >= 3:
                break  # hang up mid-stream
    time.sleep(0.6)
    assert record(client, sid, eid)["status"] == "running", "a disconnect must not stop it"
    # Reconnect with the standard header, and once more with ?after= from the middle.
    rest = stream_events(client, "GET", events_url(sid, eid), after=first[-1].id)
    union = first + rest
    check_sequence(union)
    assert text(union, "stdout") == ticks(n)
    assert union[-1].type == "exit" and union[-1].data["exit_code"] == 0
    assert record(client, sid, eid)["status"] == "exited"
    middle = len(union) // 2
    by_query = stream_events(client, "GET", events_url(sid, eid) + f"?after={middle}")
    assert [(e.id, e.type, e.data) for e in by_query] == [
        (e.id, e.type, e.data) for e in union[middle:]
    ]
    # Replay of the finished execution from the start is the whole stream again.
    again = stream_events(client, "GET", events_url(sid, eid))
    assert [(e.id, e.type, e.data) for e in again] == [(e.id, e.type, e.data) for e in union]
    # Past the end: nothing, and the stream closes.
    assert stream_events(client, "GET", events_url(sid, eid), after=union[-1].id) == []


def test_two_concurrent_followers_each_get_every_event_once(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    # Lines while it starts, then a burst far larger than the gateway's in-memory window.
    code = TICKS.format(n=5, pause=0.1) + "import sys\nsys.stdout.write('x' * 4096 * 1500)\n"
    eid = start(client, sid, code=code)
    with ThreadPoolExecutor(3) as pool:
        followers = [
            pool.submit(stream_events, client, "GET", events_url(sid, eid)) for _ in range(2)
        ]

        def late() -> list[Received]:
            time.sleep(0.3)
            return stream_events(client, "GET", events_url(sid, eid), after=2)

        third = pool.submit(late)
        a, b, c = (f.result(timeout=120) for f in (*followers, third))
    check_sequence(a)
    assert [(e.id, e.type, e.data) for e in a] == [(e.id, e.type, e.data) for e in b]
    assert [(e.id, e.type, e.data) for e in c] == [(e.id, e.type, e.data) for e in a[2:]]
    assert text(a, "stdout") == ticks(5) + "x" * 4096 * 1500


def test_kill_ends_the_process_group_with_sigkill(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    eid = start(
        client, sid, command="sleep 300 & sleep 301 & while :; do echo tick; sleep 0.1; done"
    )
    got: list[Received] = []
    killed_at: list[float] = []
    with client.stream("GET", events_url(sid, eid), headers={"Accept": "text/event-stream"}) as r:
        for event in parse_wire(r.iter_lines()):
            got.append(event)
            if text(got, "stdout").count("tick") == 3 and not killed_at:
                k = client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
                assert k.status_code == 202, k.text
                killed_at.append(time.monotonic())
    took = time.monotonic() - killed_at[0]
    check_sequence(got)
    end = got[-1]
    assert end.type == "exit", end
    assert end.data["exit_code"] == 137 and end.data["signal"] == "SIGKILL"
    assert end.data["timed_out"] is False and end.data["oom_killed"] is False
    assert took < 5
    rec = record(client, sid, eid)
    assert rec["status"] == "killed" and rec["exit_code"] == 137
    # The whole group went, background children included.
    ps = client.post(
        f"/v1/sandboxes/{sid}/exec",
        json={"command": SLEEPERS},
    ).json()
    assert ps["stdout"].strip() == "0", ps
    again = client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_running"
    missing = client.post(f"/v1/sandboxes/{sid}/executions/ex-nope/kill")
    assert missing.status_code == 404


def test_kill_right_after_start_still_kills(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    eid = start(client, sid, command="sleep 300")
    k = client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
    assert k.status_code == 202, k.text
    events = stream_events(client, "GET", events_url(sid, eid))
    check_sequence(events)
    assert record(client, sid, eid)["status"] == "killed"
    assert events[-1].data.get("code") != "internal_error", events[-1]


@pytest.mark.parametrize(
    "stdin",
    ["line1\nline2", "", "tab\tcr\r\nunicode ünï ✓ and no newline", "x" * (900 * 1024)],
    ids=["two-lines", "empty", "mixed", "900KB"],
)
def test_stdin_is_fed_exactly_and_closed(
    client: httpx.Client, sandbox: dict[str, Any], stdin: str
) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": 'cat; echo "<eof $?>" >&2', "stdin": stdin, "timeout_seconds": 30},
    )
    body = r.json()
    assert body["exit_code"] == 0 and body["timed_out"] is False, body
    assert body["stdout"] == stdin  # exactly those bytes: cat saw EOF, nothing added
    assert body["stderr"] == "<eof 0>\n"


def test_stdin_reaches_python_and_without_stdin_it_sees_eof(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    code = "import sys\ndata = sys.stdin.buffer.read()\nprint(len(data), repr(data))\n"
    r = client.post(f"/v1/sandboxes/{sandbox['id']}/exec", json={"code": code, "stdin": "a\nb"})
    assert r.json()["stdout"] == "3 b'a\\nb'\n"
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec", json={"code": code, "timeout_seconds": 5}
    )
    assert r.json()["stdout"] == "0 b''\n" and r.json()["timed_out"] is False


def test_stdin_a_program_does_not_read_is_harmless(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    # The program ends while stdin is still being written: a race between the gateway's
    # writes and Docker closing the socket, so it is run often enough to meet it.
    for _ in range(25):
        r = client.post(
            f"/v1/sandboxes/{sandbox['id']}/exec",
            json={"command": "echo done", "stdin": "y" * (900 * 1024)},
        )
        assert r.json()["stdout"] == "done\n" and r.json()["exit_code"] == 0, r.json()


def test_idempotency_key_returns_the_same_execution_sequentially(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    body = {"command": "echo run >> runs.txt; wc -l < runs.txt"}
    key = {"Idempotency-Key": "retry-1"}
    one = client.post(f"/v1/sandboxes/{sid}/exec", json=body, headers=key)
    two = client.post(f"/v1/sandboxes/{sid}/exec", json=body, headers=key)
    assert one.status_code == two.status_code == 200
    assert one.json()["execution_id"] == two.json()["execution_id"]
    assert one.json()["stdout"] == two.json()["stdout"] == "1\n"
    assert two.headers["x-execution-id"] == one.json()["execution_id"]
    # The stream of a retried request is the stream of that one execution.
    streamed = stream_events(client, "POST", f"/v1/sandboxes/{sid}/exec", json=body, headers=key)
    check_sequence(streamed)
    assert streamed[0].data["execution_id"] == one.json()["execution_id"]
    assert text(streamed, "stdout") == "1\n"
    later = client.post(f"/v1/sandboxes/{sid}/exec", json={**body, "wait": False}, headers=key)
    assert later.status_code == 202 and later.json()["execution_id"] == one.json()["execution_id"]
    # Another key (or none) runs it again.
    other = client.post(f"/v1/sandboxes/{sid}/exec", json=body, headers={"Idempotency-Key": "2"})
    assert other.json()["stdout"] == "2\n"
    assert client.post(f"/v1/sandboxes/{sid}/exec", json=body).json()["stdout"] == "3\n"
    listed = client.get(f"/v1/sandboxes/{sid}/executions").json()["executions"]
    assert len(listed) == 3


def test_idempotency_key_is_scoped_to_the_sandbox(client: httpx.Client, new_sandbox: Any) -> None:
    a, b = new_sandbox()["id"], new_sandbox()["id"]
    key = {"Idempotency-Key": "same"}
    ra = client.post(f"/v1/sandboxes/{a}/exec", json={"command": "echo a"}, headers=key)
    rb = client.post(f"/v1/sandboxes/{b}/exec", json={"command": "echo b"}, headers=key)
    assert ra.json()["execution_id"] != rb.json()["execution_id"]
    assert (ra.json()["stdout"], rb.json()["stdout"]) == ("a\n", "b\n")


def test_concurrent_requests_with_one_key_run_once(
    gateway: Gateway, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    body = {"command": "echo run >> conc.txt; sleep 0.5; wc -l < conc.txt"}
    barrier = threading.Barrier(6)

    def post(i: int) -> httpx.Response:
        with gateway.client() as c:  # one connection each: really concurrent
            barrier.wait()
            headers = {"Idempotency-Key": "burst"}
            if i % 2:
                got = stream_events(
                    c, "POST", f"/v1/sandboxes/{sid}/exec", json=body, headers=headers
                )
                return httpx.Response(
                    200,
                    json={
                        "execution_id": got[0].data["execution_id"],
                        "stdout": text(got, "stdout"),
                    },
                )
            return c.post(f"/v1/sandboxes/{sid}/exec", json=body, headers=headers)

    with ThreadPoolExecutor(6) as pool:
        results = [f.json() for f in pool.map(post, range(6))]
    assert len({r["execution_id"] for r in results}) == 1, results
    assert {r["stdout"] for r in results} == {"1\n"}


def test_invalid_idempotency_key_is_refused(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "true"},
        headers={"Idempotency-Key": "k" * 201},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header"


def test_invalid_last_event_id_is_refused(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    eid = client.post(f"/v1/sandboxes/{sandbox['id']}/exec", json={"command": "true"}).json()[
        "execution_id"
    ]
    r = client.get(
        events_url(sandbox["id"], eid),
        headers={"Accept": "text/event-stream", "Last-Event-ID": "abc"},
    )
    assert r.status_code == 400
    r = client.get(events_url(sandbox["id"], "ex-0000"), headers={"Accept": "text/event-stream"})
    assert r.status_code == 404


# --- the output budget, on a gateway of its own ---------------------------------------------

BUDGET, TAIL = 100_000, 10_000


@pytest.fixture(scope="module")
def budget_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway(
        "budget", output_budget_bytes=str(BUDGET), output_tail_bytes=str(TAIL)
    ) as gw:
        yield gw


def test_output_budget_keeps_the_head_and_the_tail(budget_gateway: Gateway) -> None:
    # 40 KB on stderr first (given time to arrive first: Docker does not keep the order of
    # the two pipes), then ~780 KB of numbered lines on stdout. The budget counts both.
    lines, err = 60_000, "E" * 40_000
    code = (
        "import sys, time\n"
        f"sys.stderr.write('E' * {len(err)}); sys.stderr.flush(); time.sleep(0.5)\n"
        f"for i in range({lines}):\n"
        "    sys.stdout.write(f'line {i:06d}\\n')\n"
    )
    expected = "".join(f"line {i:06d}\n" for i in range(lines))
    with budget_gateway.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            events = stream_events(c, "POST", f"/v1/sandboxes/{sid}/exec", json={"code": code})
            check_sequence(events)
            kinds = [e.type for e in events]
            assert kinds.count("truncated") == 1
            cut = kinds.index("truncated")
            assert events[cut].data["budget_bytes"] == BUDGET
            assert text(events[:cut], "stderr") == err
            assert text(events[:cut], "stdout") == expected[: BUDGET - len(err)]
            after = events[cut + 1 :]
            assert text(after, "stderr") == ""
            tail = text(after, "stdout")
            assert tail == expected[-TAIL:]
            end = events[-1]
            assert end.type == "exit" and end.data["truncated"] is True
            assert end.data["exit_code"] == 0
            eid = events[0].data["execution_id"]
            rec = c.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
            assert rec["truncated"] is True and rec["status"] == "exited"
            # What is stored is what was streamed: one mechanism, one budget.
            stored = stream_events(c, "GET", events_url(sid, eid))
            assert [(e.id, e.type, e.data) for e in stored] == [
                (e.id, e.type, e.data) for e in events
            ]
            js = c.post(f"/v1/sandboxes/{sid}/exec", json={"code": code}).json()
            assert js["truncated"] is True and js["stderr"] == err
            assert js["stdout"] == expected[: BUDGET - len(err)] + expected[-TAIL:]
            small = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo hi"}).json()
            assert small["truncated"] is False and small["stdout"] == "hi\n"
        finally:
            c.delete(f"/v1/sandboxes/{sid}")
