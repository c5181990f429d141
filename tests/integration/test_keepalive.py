"""Keep-alives flow while a run is silent, and no client mistakes one for an event: httpx-sse
(which turns a comment followed by a blank line into an empty `message` event once an id was
seen, florimondmanca/httpx-sse#35), the SDK, `curl -N` and the strict reader of tests/sse.py.
A gateway of its own sends them every 0.2 s; each run is silent for 2 s."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from petri_sdk import AsyncSandbox, Sandbox, StdoutEvent
from tests.conftest import Gateway, running_gateway
from tests.sse import check_sequence, stream_events, text

pytestmark = pytest.mark.docker

QUIET = "echo before; sleep 2; echo after"  # an id is seen, then 2 s of silence
KEEPALIVE = b": keep-alive\n"


@pytest.fixture(scope="module")
def quick_ping_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("keepalive", keepalive_seconds="0.2") as gw:
        yield gw


@pytest.fixture(scope="module")
def c(quick_ping_gateway: Gateway) -> Iterator[httpx.Client]:
    with quick_ping_gateway.client() as client:
        yield client


@pytest.fixture(scope="module")
def sid(c: httpx.Client) -> Iterator[str]:
    sandbox_id = str(c.post("/v1/sandboxes", json={"language": "python"}).json()["id"])
    yield sandbox_id
    c.delete(f"/v1/sandboxes/{sandbox_id}")


def _check_httpx_sse(events: list[Any]) -> None:
    assert events, "no events"
    assert all(e.data for e in events), [e for e in events if not e.data]
    assert all(e.event != "message" for e in events), [e.event for e in events]
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"
    terminals = [e for e in events if e.event in ("exit", "error")]
    assert len(terminals) == 1 and events[-1] is terminals[0], [e.event for e in events]


def test_httpx_sse_sees_no_keepalive_as_an_event(c: httpx.Client, sid: str) -> None:
    # The stream of exec itself (POST) ...
    with connect_sse(c, "POST", f"/v1/sandboxes/{sid}/exec", json={"command": QUIET}) as source:
        posted = list(source.iter_sse())
    _check_httpx_sse(posted)
    assert [e.event for e in posted] == ["start", "stdout", "stdout", "exit"]
    # ... and the events of a run followed live (GET), resumed from an id.
    eid = c.post(
        f"/v1/sandboxes/{sid}/exec", json={"command": QUIET, "wait": False}
    ).json()["execution_id"]
    url = f"/v1/sandboxes/{sid}/executions/{eid}/events"
    with connect_sse(c, "GET", url, headers={"Last-Event-ID": "1"}) as source:
        followed = list(source.iter_sse())
    _check_httpx_sse(followed)
    assert int(followed[0].id) == 2 and followed[-1].event == "exit"


def test_the_sdk_reads_a_silent_run_through(quick_ping_gateway: Gateway) -> None:
    """Both twins, a stream and a run with callbacks, each silent for 2 s (~10 keep-alives)."""
    with Sandbox.create("python", url=quick_ping_gateway.url) as sb:
        events = list(sb.stream(command=QUIET))
        chunks: list[str] = []
        ex = sb.run_command(QUIET, on_stdout=chunks.append)
    assert [e.type for e in events] == ["start", "stdout", "stdout", "exit"]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert "".join(e.text for e in events if isinstance(e, StdoutEvent)) == "before\nafter\n"
    assert ex.stdout == "before\nafter\n" and chunks == ["before\n", "after\n"]
    assert ex.exit_code == 0 and ex.status == "exited"


async def test_the_async_sdk_reads_a_silent_run_through(quick_ping_gateway: Gateway) -> None:
    async with AsyncSandbox.create("python", url=quick_ping_gateway.url) as sb:
        events = [e async for e in sb.stream(command=QUIET)]
        ex = await sb.run_command(QUIET)
    assert [e.type for e in events] == ["start", "stdout", "stdout", "exit"]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert ex.stdout == "before\nafter\n" and ex.exit_code == 0


def test_curl_shows_keepalive_comment_lines_between_events(
    quick_ping_gateway: Gateway, sid: str
) -> None:
    done = subprocess.run(
        [
            "curl", "-sfN", "-X", "POST", "-H", "Accept: text/event-stream",
            "-d", '{"command": "' + QUIET + '"}',
            f"{quick_ping_gateway.url}/v1/sandboxes/{sid}/exec",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    raw = done.stdout
    assert raw.count(KEEPALIVE) >= 5, raw  # ~10 in 2 s of silence
    assert KEEPALIVE + b"\n" not in raw, "a keep-alive followed by a blank line"
    # Each keep-alive stands alone between whole events: after a blank line (the end of an
    # event) or another keep-alive, never inside an event.
    for match in re.finditer(re.escape(KEEPALIVE), raw):
        before = raw[: match.start()]
        assert before.endswith((b"\n\n", KEEPALIVE)), raw[max(0, match.start() - 80) :]
    # Without the comments, the bytes are exactly the events.
    events = raw.replace(KEEPALIVE, b"").split(b"\n\n")
    assert events[-1] == b"" and len(events) == 5, events
    assert all(e.startswith(b"id: ") for e in events[:-1])


def test_strict_reader_counts_keepalives_and_exact_events(c: httpx.Client, sid: str) -> None:
    comments: list[str] = []
    events = stream_events(
        c, "POST", f"/v1/sandboxes/{sid}/exec", json={"command": QUIET}, comments=comments
    )
    check_sequence(events)
    assert text(events, "stdout") == "before\nafter\n"
    assert len(comments) >= 5, comments
    assert set(comments) == {": keep-alive"}, comments
