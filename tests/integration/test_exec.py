"""Exec over SSE and JSON against a real gateway, real Docker and the real runtime images."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from gateway.runner import STALE_BATCH
from gateway.runtimes import load_runtimes
from tests.conftest import RUNTIMES
from tests.sse import check_sequence, parse_wire, stream_events, text

pytestmark = pytest.mark.docker


def test_stdout_and_stderr_are_separate_typed_events_in_order(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    code = (
        "import sys, time\nprint('out1', flush=True)\ntime.sleep(0.05)\n"
        "print('err1', file=sys.stderr, flush=True)\ntime.sleep(0.05)\n"
        "print('out2', flush=True)\nsys.exit(3)\n"
    )
    events = stream_events(
        client, "POST", f"/v1/sandboxes/{sandbox['id']}/exec", json={"code": code}
    )
    check_sequence(events)
    assert events[0].type == "start"
    assert events[0].data == {
        "execution_id": events[0].data["execution_id"],
        "sandbox_id": sandbox["id"],
    }
    assert text(events, "stdout") == "out1\nout2\n"
    assert text(events, "stderr") == "err1\n"
    # stdout and stderr are two pipes: their relative order holds when writes are apart in time.
    # Event boundaries are not: unbuffered, `print` writes the text and its newline apart, and
    # Docker may hand them over in one frame or two.
    order: list[tuple[str, str]] = []
    for e in events:
        if e.type in ("stdout", "stderr"):
            if order and order[-1][0] == e.type:
                order[-1] = (e.type, order[-1][1] + e.data["text"])
            else:
                order.append((e.type, e.data["text"]))
    assert order == [("stdout", "out1\n"), ("stderr", "err1\n"), ("stdout", "out2\n")]
    exit_ = events[-1]
    assert exit_.type == "exit"
    assert exit_.data["exit_code"] == 3  # a non-zero exit is data, not an error
    assert exit_.data["timed_out"] is False and exit_.data["oom_killed"] is False
    assert exit_.data["truncated"] is False and exit_.data["duration_ms"] >= 0


def test_stream_parses_with_httpx_sse_and_carries_execution_id(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    with connect_sse(
        client,
        "POST",
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "echo hello; echo oops >&2"},
        headers={"Accept": "text/event-stream"},
    ) as source:
        eid = source.response.headers["x-execution-id"]
        got = [(s.id, s.event, json.loads(s.data)) for s in source.iter_sse()]
    assert [g[0] for g in got] == [str(i) for i in range(1, len(got) + 1)]
    assert got[0][2]["execution_id"] == eid
    assert "".join(d["text"] for _, t, d in got if t == "stdout") == "hello\n"
    assert "".join(d["text"] for _, t, d in got if t == "stderr") == "oops\n"
    assert got[-1][1] == "exit" and got[-1][2]["exit_code"] == 0


def test_output_arrives_while_the_program_runs(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    # The program stamps each line with the (shared) wall clock as it prints it; the client
    # stamps it as it arrives. The difference is the streaming delay the gateway adds.
    code = (
        "import time\nfor i in range(8):\n    print(f'{time.time():.6f}', flush=True)\n"
        "    time.sleep(0.2)\n"
    )
    url = f"/v1/sandboxes/{sandbox['id']}/exec"
    delays: list[float] = []
    with client.stream("POST", url, json={"code": code},
                       headers={"Accept": "text/event-stream"}) as r:
        for event in parse_wire(r.iter_lines()):
            if event.type == "stdout" and event.data["text"].strip():
                received = time.time()
                delays += [received - float(t) for t in event.data["text"].split()]
    assert len(delays) == 8
    print(f"print -> client delays (ms): {[round(d * 1000, 1) for d in delays]}")
    # Lines printed 200 ms apart each arrive long before the next one is printed.
    assert max(delays) < 0.15, delays
    assert sorted(delays)[len(delays) // 2] < 0.1, delays


def test_partial_lines_stream_without_waiting_for_newline(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    code = (
        "import sys, time\nsys.stdout.write('no newline yet'); sys.stdout.flush()\n"
        "time.sleep(1.0)\nprint(' done')\n"
    )
    started = time.monotonic()
    with client.stream(
        "POST",
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"code": code},
        headers={"Accept": "text/event-stream"},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "no newline yet" in line:
                first = time.monotonic() - started
                break
    assert first < 0.9, f"partial line arrived after {first:.2f}s: it waited for the newline"


def test_json_mode_returns_the_whole_result(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "printf 'a\\nb'; printf 'E' >&2; exit 2"},
    )
    assert r.status_code == 200
    body = r.json()
    assert r.headers["x-execution-id"] == body["execution_id"]
    assert body["stdout"] == "a\nb" and body["stderr"] == "E" and body["exit_code"] == 2
    assert body["timed_out"] is False and body["truncated"] is False
    assert body["install"]["status"] == "skipped"
    assert isinstance(body["duration_ms"], int)


def test_wait_false_returns_202_and_events_follow(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "sleep 0.3; echo later", "wait": False},
    )
    assert r.status_code == 202
    eid = r.json()["execution_id"]
    assert r.headers["x-execution-id"] == eid
    events = stream_events(client, "GET", f"/v1/sandboxes/{sandbox['id']}/executions/{eid}/events")
    check_sequence(events)
    assert text(events, "stdout") == "later\n"
    record = client.get(f"/v1/sandboxes/{sandbox['id']}/executions/{eid}").json()
    assert record["status"] == "exited" and record["exit_code"] == 0


def test_filename_mode_runs_an_uploaded_file(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    client.put(f"/v1/sandboxes/{sid}/files/pkg/helper.py", content=b"VALUE = 41\n")
    app = b"import sys\nsys.path.insert(0, 'pkg')\nimport helper\nprint(helper.VALUE + 1)\n"
    client.put(f"/v1/sandboxes/{sid}/files/app.py", content=app)
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"filename": "app.py"})
    assert r.json()["stdout"] == "42\n", r.json()
    missing = client.post(f"/v1/sandboxes/{sid}/exec", json={"filename": "nope.py"})
    assert missing.status_code == 404


def test_timeout_kills_an_endless_loop(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    started = time.monotonic()
    events = stream_events(
        client,
        "POST",
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "echo begin; while :; do :; done", "timeout_seconds": 2},
    )
    took = time.monotonic() - started
    check_sequence(events)
    assert text(events, "stdout") == "begin\n"
    assert events[-1].type == "exit"
    assert events[-1].data["timed_out"] is True
    assert events[-1].data["exit_code"] == 137 and events[-1].data["signal"] == "SIGKILL"
    assert took < 10
    again = client.post(f"/v1/sandboxes/{sandbox['id']}/exec", json={"command": "echo alive"})
    assert again.json()["stdout"] == "alive\n"


def test_ended_execs_files_in_tmp_are_removed_in_batches(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    """Each exec leaves a pid file in /tmp; the files of ended ones are removed by a later
    exec's wrapper, STALE_BATCH at a time (an `rm` before every program cost 1.3-4 ms)."""
    counts = []
    for _ in range(2 * STALE_BATCH + 2):
        r = client.post(
            f"/v1/sandboxes/{sandbox['id']}/exec",
            json={"command": "ls -A /tmp | grep -c '^.petri-ex-.*[.]pid$'"},
        )
        counts.append(int(r.json()["stdout"]))
    assert max(counts) <= STALE_BATCH + 1, counts  # the ended ones waiting, and its own
    assert counts.count(1) >= 2, counts  # only its own: the batch before it was removed


def test_timeout_also_kills_background_children(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "sleep 300 & sleep 300 & wait", "timeout_seconds": 1},
    )
    assert r.json()["timed_out"] is True
    ps = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={
            "command": "ls /proc | grep -E '^[0-9]+$' | while read p; do "
            "cat /proc/$p/cmdline 2>/dev/null | tr '\\0' ' '; echo; "
            "done | grep -c '^sleep 300' || true"
        },
    )
    assert ps.json()["stdout"].strip() == "0"


def test_invalid_utf8_output_is_replaced_not_lost(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec", json={"command": "printf 'ok \\377\\376 end\\n'"}
    )
    assert r.json()["stdout"] == "ok \ufffd\ufffd end\n"


def test_env_and_stdin_reach_the_program(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        json={"command": "echo $GREETING; cat", "env": {"GREETING": "hi"}, "stdin": "line1\nline2"},
    )
    assert r.json()["stdout"] == "hi\nline1\nline2"


@pytest.mark.parametrize("language", sorted(load_runtimes(RUNTIMES)))
def test_each_runtime_runs_its_smoke_program(
    client: httpx.Client, new_sandbox: Any, language: str
) -> None:
    runtime = load_runtimes(RUNTIMES)[language]
    sid = new_sandbox(language)["id"]
    with runtime.smoke_path.open("rb") as f:
        name = f"smoke/{runtime.smoke_path.name}"
        assert client.put(f"/v1/sandboxes/{sid}/files/{name}", content=f.read()).status_code == 201
    events = stream_events(
        client, "POST", f"/v1/sandboxes/{sid}/exec", json={"filename": name, "timeout_seconds": 120}
    )
    check_sequence(events)
    assert runtime.smoke_expect in text(events, "stdout"), events
    assert events[-1].type == "exit" and events[-1].data["exit_code"] == 0, events
    code = client.post(
        f"/v1/sandboxes/{sid}/exec",
        json={"code": runtime.smoke_path.read_text(), "timeout_seconds": 120},
    ).json()
    assert runtime.smoke_expect in code["stdout"], code


def test_args_reach_the_program_as_given_never_through_a_shell(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    url = f"/v1/sandboxes/{sandbox['id']}/exec"
    odd = ["two words", "$HOME", "; rm -rf /", "'\"", "-n", ""]
    code = "import sys, json\nprint(json.dumps(sys.argv[1:]))\n"
    assert json.loads(client.post(url, json={"code": code, "args": odd}).json()["stdout"]) == odd
    client.put(f"/v1/sandboxes/{sandbox['id']}/files/a.py", content=code.encode())
    r = client.post(url, json={"filename": "a.py", "args": odd}).json()
    assert json.loads(r["stdout"]) == odd
    r = client.post(url, json={"command": 'printf "%s|" "$@"; echo "$#"', "args": odd}).json()
    assert r["stdout"] == "|".join(odd) + "|6\n"
    r = client.post(url, json={"command": "echo $0 $#"}).json()  # no args: bash -c as before
    assert r["stdout"] == "/bin/bash 0\n"
    for bad in ({"code": "1", "args": "a b"}, {"code": "1", "args": [1]},
                {"code": "1", "args": ["a\x00b"]}, {"test": True, "args": ["-k", "x"]},
                {"code": "1", "args": ["x"] * 1025}):
        refused = client.post(url, json=bad)
        assert refused.status_code == 422, (bad, refused.text)
