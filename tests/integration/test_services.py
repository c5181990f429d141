"""Serve mode through a real gateway: services, their preview URLs (HTTP and WebSockets
proxied to a real app in a sandbox), their lifetimes, limits and clean-up."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from gateway.models import EVENT_DATA
from tests.conftest import Gateway, running_gateway
from tests.preview_app import pattern_bytes
from tests.serve import (
    events,
    get,
    preview_client,
    run,
    start,
    start_ready,
    upload_app,
    wait_status,
)
from tests.sse import check_sequence, text

pytestmark = pytest.mark.docker

MakeSandbox = Callable[..., dict[str, Any]]
MB = 1024 * 1024
TOKEN = re.compile(r"/preview/([a-z2-7]{52})/$")


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.json()["error"]["code"] == code, r.text


@pytest.fixture(scope="module")
def pc() -> Iterator[httpx.Client]:
    with preview_client() as c:
        yield c


# --- the service and its record ---------------------------------------------------------------


def test_a_service_starts_answers_and_reports_ready(
    gateway: Gateway, client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    sid = new_sandbox()["id"]
    upload_app(client, sid)
    created = start(client, sid, ready_path="/headers")
    assert created["id"].startswith("sv-") and created["sandbox_id"] == sid
    assert created["status"] == "starting" and created["port"] == 8000
    assert created["command"] == "python3 app.py 8000"
    assert created["execution_id"].startswith("ex-") and created["expires_at"]
    match = TOKEN.search(created["preview_url"])
    assert match and created["preview_url"].startswith(f"{gateway.url}/preview/"), created
    ready = wait_status(client, created, "ready")
    assert ready["ready_at"] and ready["preview_url"] == created["preview_url"]
    listed = client.get(f"/v1/sandboxes/{sid}/services").json()["services"]
    assert [s["id"] for s in listed] == [created["id"]]
    r = pc.get(created["preview_url"] + "anything?x=1")
    assert r.status_code == 200 and r.json() == {"method": "GET", "path": "/anything?x=1"}
    # Its output is the event stream of its execution, with a `ready` event in it.
    assert client.delete(f"/v1/sandboxes/{sid}/services/{created['id']}").status_code == 204
    got = events(client, created)
    check_sequence(got)
    for event in got:  # every event is what the OpenAPI document says it is
        model = EVENT_DATA[event.type]
        model.model_validate(event.data)
        assert set(event.data) <= set(model.model_fields), (event.type, event.data)
    ready_events = [e for e in got if e.type == "ready"]
    assert len(ready_events) == 1 and ready_events[0].data["port"] == 8000
    assert 0 <= ready_events[0].data["after_ms"] < 60000
    assert "preview app listening on 8000" in text(got, "stdout")
    assert "GET /headers" in text(got, "stderr")  # the readiness probe, as the app logged it
    assert got[-1].type == "exit" and got[-1].data["signal"] == "SIGKILL"


def test_every_method_path_query_and_headers_reach_the_app(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    url = service["preview_url"]
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = pc.request(method, url + "a/b%2Fc/?q=1&q=2&e=%E2%9C%93", content=b"x")
        assert r.status_code == 200, (method, r.text)
        assert r.json() == {"method": method, "path": "/a/b%2Fc/?q=1&q=2&e=%E2%9C%93"}
    head = pc.head(url + "x")
    assert head.status_code == 200 and head.content == b""
    r = pc.get(
        url + "headers?k=v",
        headers={
            "Authorization": "Bearer caller-secret",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Connection": "keep-alive, X-Hop-Named",
            "X-Hop-Named": "must-not-pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Custom": "kept",
            "Cookie": "app=1",
            "User-Agent": "petri-test",
        },
    )
    seen = r.json()
    assert seen["method"] == "GET" and seen["target"] == "/headers?k=v"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-custom"] == "kept" and headers["cookie"] == "app=1"
    assert headers["user-agent"] == "petri-test"
    for dropped in ("authorization", "proxy-authorization", "x-hop-named", "keep-alive", "te"):
        assert dropped not in headers, (dropped, headers)
    assert "caller-secret" not in r.text
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-prefix"] == "/preview/" + TOKEN.search(url).group(1)  # type: ignore[union-attr]
    assert headers["host"] == httpx.URL(url).netloc.decode()
    # The app's response headers come back, less the hop-by-hop ones.
    r = pc.get(url + "hop")
    assert r.status_code == 200 and r.headers["x-app"] == "yes"
    assert r.headers["server"].startswith("BaseHTTP/")  # the app's own, not the gateway's
    assert "x-secret-hop" not in r.headers and "keep-alive" not in r.headers
    assert len(r.headers.get_list("date")) == 1
    # Without its trailing slash the preview redirects to it, keeping the query.
    r = pc.get(url.rstrip("/") + "?a=1")
    assert r.status_code == 307 and r.headers["location"] == httpx.URL(url).path + "?a=1"


def test_twenty_megabytes_stream_both_ways_byte_for_byte(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    url = service["preview_url"]
    size = 20 * MB
    body = os.urandom(size)
    digest = hashlib.sha256(body).hexdigest()

    def chunks() -> Iterator[bytes]:
        for at in range(0, size, 256 * 1024):
            yield body[at : at + 256 * 1024]

    # Up (chunked, as a generator streams it) ...
    r = pc.post(url + "sink", content=chunks())
    assert r.status_code == 200 and r.json() == {"bytes": size, "sha256": digest}
    # ... with a Content-Length, and back down (echo) ...
    r = pc.post(url + "echo", content=body, headers={"Content-Type": "application/x-test"})
    assert r.status_code == 200 and r.headers["x-body-sha256"] == digest
    assert r.headers["content-length"] == str(size) and r.content == body
    # ... and a download streamed as the app writes it.
    with pc.stream("GET", url + f"bytes?n={size}") as r:
        assert r.status_code == 200 and r.headers["content-length"] == str(size)
        got = b"".join(r.iter_raw())
    assert got == pattern_bytes(size)


def test_the_proxy_keeps_connections_alive_and_survives_the_app_closing_them(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    url = service["preview_url"]
    # Requests one after another reuse one connection to the app (the relay makes one TCP
    # connection to the app per connection to its socket: the app sees the same port).
    ports = {pc.get(url + "peer").json()["port"] for _ in range(5)}
    assert len(ports) == 1, ports
    # The app closes a kept-alive connection without warning: the next request still
    # answers, on a new connection, also with a body, and the pool does not keep a dead one.
    for method, body in (("GET", None), ("POST", b"x" * 1000), ("GET", None)):
        r = pc.get(url + "drop")
        assert r.status_code == 200 and r.json() == {"dropped": True}
        time.sleep(0.2)  # the close reaches the gateway before the next request (or not)
        r = pc.request(method, url + "echo", content=body)
        assert r.status_code == 200 and r.content == (body or b""), r.text[:300]
    for _ in range(3):  # right after a close, with no pause in between
        assert pc.get(url + "drop").status_code == 200
        assert pc.get(url + "peer").status_code == 200
    # Concurrent requests each get a connection of their own, and all answer.
    with (
        httpx.Client(timeout=30, trust_env=False) as other,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        got = list(pool.map(lambda _: other.get(url + "work?ms=200").status_code, range(8)))
    assert got == [200] * 8


def test_an_answer_the_app_gives_before_reading_the_body_reaches_the_caller(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    url = service["preview_url"]
    for size in (1000, 8 * MB):
        r = pc.post(url + "early", content=b"x" * size)
        assert r.status_code in (413, 502), (size, r.status_code, r.text[:300])
        if size == 1000:  # all of it was in before the app answered: its answer is relayed
            assert r.status_code == 413 and r.json() == {"too": "large"}
    assert pc.get(url + "peer").status_code == 200  # and the next request is fine


def test_an_upload_the_app_does_not_read_is_held_back_not_buffered_by_the_gateway(
    client: httpx.Client, new_sandbox: MakeSandbox
) -> None:
    """The proxy reads a request body ahead of the app (so the server does not pace it at
    64 KiB per round trip), but only a few MiB: a caller pushing into an app that reads
    nothing is held back by TCP, not stored in the gateway's memory."""
    service = start_ready(client, new_sandbox()["id"])
    url = service["preview_url"] + "work?ms=8000"  # answers after 8 s, never reads the body
    sent = 0
    stop = threading.Event()

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        block = b"x" * MB
        while not stop.is_set() and sent < 1024 * MB:
            sent += MB
            yield block

    ended: list[object] = []

    def post() -> None:
        # The body stops short of its Content-Length (see `stop`): the client gives up.
        with httpx.Client(timeout=30, trust_env=False) as c:
            try:
                got = c.post(url, content=chunks(), headers={"Content-Length": str(1024 * MB)})
                ended.append(got.status_code)
            except Exception as exc:  # what it was is asserted below
                ended.append(exc)

    pusher = threading.Thread(target=post, daemon=True)
    pusher.start()
    time.sleep(6)
    held = sent
    stop.set()
    pusher.join(60)
    # Kernel buffers on three sockets, the relay's and the proxy's read-ahead: tens of MiB at
    # most. Unbounded buffering takes in hundreds (the loopback moves 200+ MB/s).
    assert 0 < held < 96 * MB, held
    assert not pusher.is_alive(), ended
    assert ended and not isinstance(ended[0], int | AssertionError), ended
    with preview_client() as pc:  # and the service still answers
        assert pc.get(service["preview_url"] + "peer").status_code == 200


def test_websocket_echo_through_the_preview(
    client: httpx.Client, new_sandbox: MakeSandbox
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    ws_url = service["preview_url"].replace("http://", "ws://") + "ws?room=1"
    with ws_connect(
        ws_url,
        subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
        additional_headers={"Authorization": "Bearer caller-secret"},
        max_size=4 * MB,
    ) as ws:
        assert ws.subprotocol == "chat.v1"
        ws.send("héllo, service")
        assert ws.recv() == "héllo, service"
        blob = os.urandom(MB)
        ws.send(blob)
        assert ws.recv() == blob
        for i in range(50):  # many small messages keep their order
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]
        ws.close(4001, "done")
    assert ws.close_code == 4001  # the app echoed our close code back through the proxy
    # An unknown token is a plain JSON 404, also to a WebSocket handshake.
    bad = service["preview_url"].replace("http://", "ws://")
    bad = re.sub(r"/preview/[a-z2-7]+/", "/preview/" + "a" * 52 + "/", bad)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(bad + "ws")
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body)["error"]["code"] == "preview_not_found"


# --- errors: unknown, expired, exited, not ready ------------------------------------------------


def test_unknown_and_malformed_tokens_are_404(gateway: Gateway, pc: httpx.Client) -> None:
    for path in (
        f"/preview/{secrets.token_hex(26)[:52]}/",  # hex is not the alphabet
        f"/preview/{'a' * 52}/",  # well formed, unknown
        f"/preview/{'a' * 52}/deeper/path?q=1",
        "/preview/x/",
        "/preview/",
        "/preview",
        "/preview/%2e%2e/v1/sandboxes",
    ):
        _error(pc.get(gateway.url + path), 404, "preview_not_found")
    r = pc.post(gateway.url + f"/preview/{'b' * 52}/", content=b"x" * MB)
    _error(r, 404, "preview_not_found")


def test_an_exited_service_shows_exited_and_its_preview_answers_502(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    assert pc.get(service["preview_url"] + "exit").json() == {"bye": True}
    ended = wait_status(client, service, "exited")
    assert ended["ended_at"] and ended["preview_url"] == service["preview_url"]
    _error(pc.get(service["preview_url"]), 502, "service_unavailable")
    got = events(client, service)
    check_sequence(got)
    assert got[-1].type == "exit" and got[-1].data["exit_code"] == 3


def test_a_service_that_never_answers_ends_with_its_output_tail(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    sid = new_sandbox()["id"]
    service = start(
        client,
        sid,
        command="echo booting the thing; echo on stderr >&2; exec sleep 600",
        ready_timeout_seconds=2,
    )
    started = time.monotonic()
    ended = wait_status(client, service, "exited", seconds=30)
    assert time.monotonic() - started < 20
    assert ended["ready_at"] is None
    got = events(client, service)
    check_sequence(got)
    assert got[-1].type == "error" and got[-1].data["code"] == "service_not_ready"
    message = got[-1].data["message"]
    assert "port 8000" in message and "booting the thing" in message and "on stderr" in message
    _error(pc.get(service["preview_url"]), 502, "service_unavailable")
    r = run(client, sid, "ls /proc | grep -c '^[0-9]*$'")
    assert int(r["stdout"]) <= 6, r  # the sleep was killed with the service


def test_a_preview_expires_with_410_and_stops_the_service(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"], preview_ttl_seconds=4)
    assert pc.get(service["preview_url"]).status_code == 200
    ended = wait_status(client, service, "stopped", seconds=30)
    _error(pc.get(service["preview_url"] + "headers"), 410, "preview_expired")
    assert ended["ended_at"] >= ended["expires_at"] or ended["status"] == "stopped"
    got = events(client, service)
    assert got[-1].type == "exit" and got[-1].data["timed_out"] is True


# --- stopping, revoking, limits ---------------------------------------------------------------


def test_delete_stops_the_service_and_revokes_its_url(
    gateway: Gateway, client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    sid = new_sandbox()["id"]
    service = start_ready(client, sid)
    path = f"/v1/sandboxes/{sid}/services/{service['id']}"
    assert client.delete(path).status_code == 204
    _error(pc.get(service["preview_url"]), 404, "preview_not_found")
    stopped = get(client, service)
    assert stopped["status"] == "stopped" and stopped["preview_url"] is None
    r = run(client, sid, "ls /proc | grep -c '^[0-9]*$'; ls -A .petri/services")
    count, *files = r["stdout"].split()
    assert int(count) <= 6 and files == [], r  # app and relay gone, socket removed
    assert not _open_in(gateway, str(gateway.workspace_root / sid))  # its fd is closed
    assert client.delete(path).status_code == 204  # stopping again is fine
    _error(client.get(f"/v1/sandboxes/{sid}/services/sv-nope"), 404, "service_not_found")
    _error(client.delete(f"/v1/sandboxes/{sid}/services/sv-nope"), 404, "service_not_found")


def _open_in(gateway: Gateway, folder: str) -> list[str]:
    """Files under `folder` the gateway process holds open (fds, O_PATH ones included)."""
    assert gateway.proc is not None
    found = []
    for fd in Path(f"/proc/{gateway.proc.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(folder):
                found.append(target)
    return found


def test_deleting_the_sandbox_revokes_its_previews(
    gateway: Gateway, client: httpx.Client, pc: httpx.Client
) -> None:
    sid = client.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
    service = start_ready(client, sid)
    assert pc.get(service["preview_url"]).status_code == 200
    workspace = str(gateway.workspace_root / sid)
    assert _open_in(gateway, workspace)  # the relay's socket, held while the service runs
    assert client.delete(f"/v1/sandboxes/{sid}").status_code == 204
    _error(pc.get(service["preview_url"]), 404, "preview_not_found")
    _error(client.get(f"/v1/sandboxes/{sid}/services"), 404, "sandbox_not_found")
    deadline = time.monotonic() + 10
    while held := _open_in(gateway, workspace):  # nothing keeps the old workspace busy
        assert time.monotonic() < deadline, held
        time.sleep(0.1)


def test_too_many_services_is_429_and_bad_bodies_422_change_nothing(
    client: httpx.Client, new_sandbox: MakeSandbox
) -> None:
    sid = new_sandbox()["id"]
    before_executions = client.get(f"/v1/sandboxes/{sid}/executions").json()
    for body in (
        {"command": "true", "port": 0},
        {"command": "true", "port": 65536},
        {"command": "true", "port": "8000"},
        {"command": "true", "port": 8000.5},
        {"command": "true", "port": True},
        {"command": "true"},
        {"port": 8000},
        {"command": "", "port": 8000},
        {"command": "true", "port": 8000, "ready_path": "no-slash"},
        {"command": "true", "port": 8000, "ready_path": "/a b"},
        {"command": "true", "port": 8000, "ready_timeout_seconds": 0},
        {"command": "true", "port": 8000, "preview_ttl_seconds": 10**9},
        {"command": "true", "port": 8000, "surprise": 1},
        {"command": "a\u0000b", "port": 8000},
    ):
        r = client.post(f"/v1/sandboxes/{sid}/services", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] in ("invalid_field", "unknown_field", "limit_too_high")
    assert client.get(f"/v1/sandboxes/{sid}/services").json() == {"services": []}
    assert client.get(f"/v1/sandboxes/{sid}/executions").json() == before_executions
    # The default limit is 4 running services per sandbox.
    idle = {"command": "exec sleep 600", "ready_timeout_seconds": 600}
    made = [start(client, sid, **idle) for _ in range(4)]
    r = client.post(f"/v1/sandboxes/{sid}/services", json={"command": "sleep 1", "port": 9})
    _error(r, 429, "too_many_services")
    assert len(client.get(f"/v1/sandboxes/{sid}/services").json()["services"]) == 4
    assert client.delete(f"/v1/sandboxes/{sid}/services/{made[0]['id']}").status_code == 204
    start(client, sid, **idle)  # a place is free again


# --- living beside other execs ------------------------------------------------------------------


def test_a_service_outlives_other_execs_whose_leftovers_still_die(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    sid = new_sandbox()["id"]
    service = start_ready(client, sid)
    # An ordinary exec leaves a background job and a daemon that left its process group.
    r = run(client, sid, "sleep 301 & setsid sleep 302 & echo started")
    assert r["stdout"] == "started\n", r
    r = run(client, sid, "sleep 0.5; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    assert "sleep 301" not in r["stdout"] and "sleep 302" not in r["stdout"], r
    assert "app.py 8000" in r["stdout"] and "socat" in r["stdout"], r
    assert pc.get(service["preview_url"] + "x").status_code == 200
    assert get(client, service)["status"] == "ready"
    # A second service in the same sandbox is spared likewise when an exec ends.
    other = start(client, sid, command="python3 app.py 8001", port=8001)
    wait_status(client, other, "ready")
    run(client, sid, "setsid sleep 303 & true")
    assert pc.get(service["preview_url"] + "y").status_code == 200
    assert pc.get(other["preview_url"] + "z").status_code == 200


def test_preview_traffic_counts_as_activity(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    sid = new_sandbox()["id"]
    service = start_ready(client, sid)

    def last_active() -> str:
        # the listing does not renew a sandbox itself
        page = client.get("/v1/sandboxes", params={"limit": 500}).json()["sandboxes"]
        return str(next(s for s in page if s["id"] == sid)["last_active_at"])

    # A running service is activity too: the reaper (every 60 s on this gateway) renews its
    # sandbox. Two passes never fall into two windows of 1.2 s in a row, so one stays quiet.
    for _ in range(2):
        before = last_active()
        time.sleep(1.2)
        if last_active() == before:
            break
    else:
        raise AssertionError("the sandbox was renewed twice with no traffic")
    assert pc.get(service["preview_url"]).status_code == 200
    assert last_active() > before


# --- a gateway of its own: reaper, host-based previews, restarts ---------------------------------


@pytest.fixture(scope="module")
def own(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway(
        "services",
        reaper_interval_seconds="0.5",
        preview_domain="preview.test",
        public_url="http://gw.test:1234",
        max_services_per_sandbox="1",
        log_level="info",  # access logs on: they must not hold preview tokens
    ) as gw:
        yield gw


def test_a_running_service_keeps_its_sandbox_from_being_reaped(own: Gateway) -> None:
    with own.client() as c, preview_client() as pc:
        sid = c.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": 2}).json()["id"]
        service = start_ready(c, sid)
        url = service["preview_url"].replace("http://gw.test:1234", own.url)
        time.sleep(5)  # 2.5 TTLs, 10 reaper rounds
        listed = c.get("/v1/sandboxes").json()["sandboxes"]
        assert sid in [s["id"] for s in listed]
        assert pc.get(url).status_code == 200
        assert c.delete(f"/v1/sandboxes/{sid}/services/{service['id']}").status_code == 204
        deadline = time.monotonic() + 20
        while sid in [s["id"] for s in c.get("/v1/sandboxes").json()["sandboxes"]]:
            assert time.monotonic() < deadline, "the sandbox was not reaped once idle"
            time.sleep(0.25)


def test_host_based_previews_and_the_public_url(own: Gateway) -> None:
    with own.client() as c, preview_client() as pc:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            service = start_ready(c, sid)
            token = TOKEN.search(service["preview_url"]).group(1)  # type: ignore[union-attr]
            assert service["preview_url"] == f"http://gw.test:1234/preview/{token}/"
            assert service["preview_host_url"] == f"http://{token}.preview.test:1234/"
            host = f"{token}.preview.test:1234"
            # The whole host is the app's: absolute paths, even ones that look like the API.
            for path in ("/", "/v1/sandboxes?x=1", "/preview/abc"):
                r = pc.get(own.url + path, headers={"Host": host})
                assert r.json() == {"method": "GET", "path": path}, (path, r.text)
            r = pc.get(own.url + "/headers", headers={"Host": host.upper()})
            assert r.json()["target"] == "/headers"  # host names ignore case
            _error(pc.get(own.url + "/", headers={"Host": "a" * 52 + ".preview.test"}), 404,
                   "preview_not_found")
            # The API is still the API on the gateway's own host name, and on any name under
            # the preview domain that cannot be a token (`api.preview.test`, say).
            assert c.get(f"/v1/sandboxes/{sid}").status_code == 200
            api = pc.get(f"{own.url}/v1/sandboxes/{sid}", headers={"Host": "api.preview.test"})
            assert api.status_code == 200 and api.json()["id"] == sid
            # Path-based URLs work on the same gateway; no token reaches its logs.
            r = pc.get(f"{own.url}/preview/{token}/logged?q=1")
            assert r.json() == {"method": "GET", "path": "/logged?q=1"}
            assert own.log_path is not None
            logged = own.log_path.read_text()
            assert "/preview/…/logged?q=1" in logged and token not in logged
            # One service per sandbox on this gateway.
            r = c.post(f"/v1/sandboxes/{sid}/services", json={"command": "true", "port": 1})
            _error(r, 429, "too_many_services")
        finally:
            c.delete(f"/v1/sandboxes/{sid}")


def test_after_a_restart_services_show_exited_and_their_processes_are_gone(own: Gateway) -> None:
    with own.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        service = start_ready(c, sid)
    url = service["preview_url"].replace("http://gw.test:1234", own.url)
    assert own.stop(signal.SIGKILL) is not None  # a crash: nothing is cleaned up on the way
    own.start()
    with own.client() as c, preview_client() as pc:
        found = get(c, service)
        assert found["status"] == "exited" and found["ended_at"], found
        assert found["preview_url"] is None  # the token lived in the old process only
        _error(pc.get(url), 502, "service_unavailable")
        r = run(c, sid, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
        assert "app.py" not in r["stdout"] and "socat" not in r["stdout"], r
        got = events(c, service)
        assert got[-1].type == "error" and got[-1].data["code"] == "interrupted"
        c.delete(f"/v1/sandboxes/{sid}")


def test_a_caller_that_leaves_an_endless_response_stops_it_at_the_service(
    client: httpx.Client, new_sandbox: MakeSandbox, pc: httpx.Client
) -> None:
    service = start_ready(client, new_sandbox()["id"])
    with pc.stream("GET", service["preview_url"] + f"bytes?n={10**11}") as r:
        assert r.status_code == 200
        got = 0
        for chunk in r.iter_raw():
            got += len(chunk)
            if got >= 4 * MB:
                break
    # The gateway stops reading: the app's write fails (its server logs the broken pipe).
    deadline = time.monotonic() + 30
    while True:
        seen = _stderr_so_far(client, service)
        if "BrokenPipeError" in seen or "ConnectionResetError" in seen:
            break
        assert time.monotonic() < deadline, f"the app kept writing: {seen[-500:]}"
        time.sleep(0.3)
    assert pc.get(service["preview_url"] + "still-fine").status_code == 200


def _stderr_so_far(client: httpx.Client, service: dict[str, Any]) -> str:
    """The service's stderr up to now (it still runs: read the stream for a moment)."""
    url = f"/v1/sandboxes/{service['sandbox_id']}/executions/{service['execution_id']}/events"
    out = []
    try:
        with client.stream("GET", url, headers={"Accept": "text/event-stream"}, timeout=2) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"text"' in line:
                    out.append(json.loads(line[6:])["text"])
    except httpx.ReadTimeout:
        pass
    return "".join(out)


def test_a_graceful_stop_ends_services_at_once_and_cleanly(own: Gateway) -> None:
    with own.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        service = start_ready(c, sid)
    assert own.log_path is not None
    log_start = own.log_path.stat().st_size
    started = time.monotonic()
    assert own.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises it
    took = time.monotonic() - started
    assert took < 4.5, f"shutdown waited {took:.1f} s for a service (the grace is 5 s)"
    logged = own.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in logged and "never retrieved" not in logged, logged[-3000:]
    own.start()
    with own.client() as c:
        found = get(c, service)
        assert found["status"] == "exited" and found["ended_at"], found
        got = events(c, service)
        check_sequence(got)
        assert got[-1].type == "error" and got[-1].data["code"] == "interrupted"
        c.delete(f"/v1/sandboxes/{sid}")
