"""Limits that must hold under hostile timing and hostile numbers, on a gateway of its own:
the sandbox cap under a burst of creates, one strict integer parser for every numeric query
parameter and header, and a deadline for request heads (slowloris)."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Gateway, running_gateway
from tests.sse import check_sequence, stream_events, text

pytestmark = pytest.mark.docker

MAX_SANDBOXES = 3
HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def gw(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway(
        "limits",
        max_sandboxes=str(MAX_SANDBOXES),
        header_timeout_seconds=str(HEADER_TIMEOUT),
        keepalive_seconds="0.3",
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def c(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.client(timeout=120) as client:
        yield client


def _sandboxes(c: httpx.Client) -> list[str]:
    return [s["id"] for s in c.get("/v1/sandboxes", params={"limit": 500}).json()["sandboxes"]]


# --- the sandbox cap ------------------------------------------------------------------------


def test_a_burst_of_creates_never_overshoots_the_cap(gw: Gateway, c: httpx.Client) -> None:
    assert _sandboxes(c) == []

    def create(_: int) -> int:
        with httpx.Client(base_url=gw.url, timeout=120) as own:
            return own.post("/v1/sandboxes", json={"language": "python"}).status_code

    with ThreadPoolExecutor(10) as pool:
        codes = sorted(pool.map(create, range(10)))
    try:
        assert codes == [201] * MAX_SANDBOXES + [429] * (10 - MAX_SANDBOXES), codes
        assert len(_sandboxes(c)) == MAX_SANDBOXES
        # A freed slot can be taken again, and only one.
        c.delete(f"/v1/sandboxes/{_sandboxes(c)[0]}")
        with ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(create, range(4)))
        assert codes == [201, 429, 429, 429], codes
        assert len(_sandboxes(c)) == MAX_SANDBOXES
    finally:
        for sid in _sandboxes(c):
            c.delete(f"/v1/sandboxes/{sid}")


# --- numbers in queries and headers ---------------------------------------------------------

BAD_NUMBERS = [
    "²",
    "１２",  # noqa: RUF001 (fullwidth digits: int() takes them)
    "١٢",  # Arabic-Indic digits
    "-1",
    "+1",
    " 1",
    "1_0",
    "1e3",
    "0x10",
    "9" * 30,
    str(2**63),
    "",
]


@pytest.fixture(scope="module")
def run_ids(c: httpx.Client) -> Iterator[tuple[str, str]]:
    sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
    eid = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo hi"}).json()["execution_id"]
    yield sid, eid
    c.delete(f"/v1/sandboxes/{sid}")


def _error_code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    code: str = r.json()["error"]["code"]
    return code


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_every_numeric_query_parameter_takes_ascii_digits_only(
    c: httpx.Client, run_ids: tuple[str, str], value: str
) -> None:
    sid, eid = run_ids
    for url, name in (
        ("/v1/sandboxes", "limit"),
        (f"/v1/sandboxes/{sid}/executions", "limit"),
        (f"/v1/sandboxes/{sid}/executions/{eid}/events", "after"),
    ):
        r = c.get(url, params={name: value})
        assert _error_code(r, 400) == "invalid_query", (url, value)


def _header_forms(value: str) -> list[bytes]:
    forms = [value.encode()]
    with contextlib.suppress(UnicodeEncodeError):
        forms.append(value.encode("latin-1"))  # '²' as one byte: Starlette reads latin-1
    return list(dict.fromkeys(forms))


# (A leading space is optional whitespace in HTTP: no client sends it, the parser strips it.)
@pytest.mark.parametrize("value", [v for v in BAD_NUMBERS if v != " 1"], ids=repr)
def test_last_event_id_takes_ascii_digits_only(
    gw: Gateway, c: httpx.Client, run_ids: tuple[str, str], value: str
) -> None:
    sid, eid = run_ids
    url = f"/v1/sandboxes/{sid}/executions/{eid}/events"
    for raw in _header_forms(value):
        r = c.get(url, headers={"Last-Event-ID": raw, "Accept": "text/event-stream"})
        assert _error_code(r, 400) == "invalid_header", (value, raw)


def test_the_largest_ids_are_accepted_and_nothing_failed(
    gw: Gateway, c: httpx.Client, run_ids: tuple[str, str]
) -> None:
    sid, eid = run_ids
    url = f"/v1/sandboxes/{sid}/executions/{eid}/events"
    largest = str(2**63 - 1)
    assert stream_events(c, "GET", url, params={"after": largest}) == []
    assert stream_events(c, "GET", url, after=2**63 - 1) == []
    events = stream_events(c, "GET", url, params={"after": "0"})
    check_sequence(events)
    assert text(events, "stdout") == "hi\n"
    assert c.get("/v1/sandboxes", params={"limit": "500"}).status_code == 200
    assert _error_code(c.get("/v1/sandboxes", params={"limit": "501"}), 400) == "invalid_query"
    assert gw.log_path is not None and "Traceback" not in gw.log_path.read_text()


# --- request heads have a deadline (slowloris) ----------------------------------------------


def _connect(gw: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=30)


def _closed_within(s: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed `s` (sending one byte of `trickle` every 0.2 s
    meanwhile), or None if it is still open after `seconds`."""
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        if sent < len(trickle):
            try:
                s.sendall(trickle[sent : sent + 1])
            except OSError:  # reset or broken pipe: closed
                return time.monotonic() - start
            sent += 1
        ready, _, _ = select.select([s], [], [], 0.2)
        if ready:
            try:
                if s.recv(65536) == b"":
                    return time.monotonic() - start
            except OSError:
                return time.monotonic() - start
    return None


@pytest.mark.parametrize(
    "head",
    [b"", b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "],
    ids=["nothing", "partial-request-line", "partial-headers"],
)
def test_an_incomplete_request_head_is_closed_at_the_deadline(gw: Gateway, head: bytes) -> None:
    with _connect(gw) as s:
        s.sendall(head)
        took = _closed_within(s, HEADER_TIMEOUT + 5)
    assert took is not None, "the connection is still open"
    assert took < HEADER_TIMEOUT + 3


def test_a_head_trickled_byte_by_byte_is_closed_at_the_deadline(gw: Gateway) -> None:
    trickle = b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200  # 1 byte per 0.2 s
    with _connect(gw) as s:
        took = _closed_within(s, HEADER_TIMEOUT + 5, trickle)
    assert took is not None and took < HEADER_TIMEOUT + 3, took


def test_the_deadline_applies_again_after_each_response(gw: Gateway) -> None:
    with _connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = b""
        while b'{"status":"ok"}' not in reply:
            reply += s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the next head never completes
        took = _closed_within(s, HEADER_TIMEOUT + 5)
    assert took is not None and took < HEADER_TIMEOUT + 3, took


def test_a_slow_stream_and_a_slow_client_with_a_complete_head_are_not_cut(
    gw: Gateway, c: httpx.Client
) -> None:
    sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
    try:
        # A run silent for 3 s (three header deadlines) streams to its end.
        events = stream_events(
            c, "POST", f"/v1/sandboxes/{sid}/exec", json={"command": "sleep 3; echo late"}
        )
        check_sequence(events)
        assert text(events, "stdout") == "late\n"
        # A client that sent its head and then takes its time with the body is the app's.
        body = b'{"command": "echo slow body"}'
        with _connect(gw) as s:
            s.sendall(
                f"POST /v1/sandboxes/{sid}/exec HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            time.sleep(HEADER_TIMEOUT + 1)
            s.sendall(body)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"slow body" in reply, reply[:300]
    finally:
        c.delete(f"/v1/sandboxes/{sid}")


def test_200_idle_connections_do_not_stop_the_gateway(gw: Gateway, c: httpx.Client) -> None:
    sockets = [_connect(gw) for _ in range(200)]
    try:
        for s in sockets:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never finished
        start = time.monotonic()
        assert c.get("/healthz", timeout=5).status_code == 200
        assert time.monotonic() - start < 2
        time.sleep(HEADER_TIMEOUT + 2)
        still_open = [s for s in sockets if _closed_within(s, 0.05) is None]
        assert not still_open, f"{len(still_open)} of 200 still open"
        assert c.get("/healthz", timeout=5).status_code == 200
    finally:
        for s in sockets:
            s.close()
