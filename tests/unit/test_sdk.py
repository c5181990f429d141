"""The SDK reads a stream over real HTTP and skips what it cannot read as a Petri event (a
keep-alive httpx-sse turns into an empty event, unknown types, data that is not a JSON
object, ids that repeat or are not integers) instead of dying. The server here is a plain
socket server writing crafted bytes, so every odd case is exact."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from petri_sdk import Client, Sandbox, SandboxInfo, StdoutEvent

STREAM = (
    b": hello\n"
    b'id: 1\nevent: start\ndata: {"execution_id":"ex-x","sandbox_id":"sb-x"}\n\n'
    b": ping\n\n"  # httpx-sse: an empty `message` event with id 1 (httpx-sse#35)
    b'id: 2\nevent: stdout\ndata: {"text":"a"}\n\n'
    b": ping\n\n"
    b'id: 3\nevent: future_type\ndata: {"x":1}\n\n'  # a type this SDK does not know
    b"id: 4\nevent: stdout\ndata: not json\n\n"
    b"id: 5\nevent: stdout\ndata: [1, 2]\n\n"  # JSON, not an object
    b'id: 2\nevent: stdout\ndata: {"text":"again"}\n\n'  # an id already seen
    b'id: x7\nevent: stdout\ndata: {"text":"bad id"}\n\n'
    b'id: \xc2\xb2\nevent: stdout\ndata: {"text":"superscript id"}\n\n'
    b"id: 6\nevent: stdout\ndata:\n\n"  # empty data
    b'id: 7\nevent: stdout\ndata: {"text":"b"}\n\n'
    b'id: 8\nevent: exit\ndata: {"exit_code":0}\n\n'
    b'id: 9\nevent: stdout\ndata: {"text":"after the end"}\n\n'
)


@pytest.fixture
def crafted_server() -> Iterator[tuple[str, list[bytes]]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            requests.append(head)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            for i in range(0, len(STREAM), 37):  # odd chunks: lines split across reads
                conn.sendall(STREAM[i : i + 37])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", requests
    thread.join(5)
    server.close()


def test_follow_skips_what_is_not_a_petri_event(
    crafted_server: tuple[str, list[bytes]],
) -> None:
    url, requests = crafted_server
    with Client(url, timeout=5) as client:
        sandbox = Sandbox(SandboxInfo("sb-x", "python", "running"), client)
        events = list(sandbox.stream(execution_id="ex-x"))
    assert [(e.id, e.type) for e in events] == [
        (1, "start"),
        (2, "stdout"),
        (7, "stdout"),
        (8, "exit"),
    ]
    assert [e.text for e in events if isinstance(e, StdoutEvent)] == ["a", "b"]
    assert b"GET /v1/sandboxes/sb-x/executions/ex-x/events" in requests[0]
    assert b"last-event-id: 0" in requests[0].lower()
