"""DNS rebinding against an open gateway (loopback bind, no API key): a web page whose name
resolves to 127.0.0.1 sends its requests with its own name as `Host`. The gateway answers only
its own names (gateway/hosts.py) until a key exists; then keys decide."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway, running_gateway
from tests.teams import new_key

pytestmark = pytest.mark.docker

FOREIGN = ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil", "x"]
PATHS = ["/healthz", "/v1/sandboxes", "/openapi.json", "/mcp", "/preview/abc/", "/", "/metrics"]


def raw(gw: Gateway, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def refused(r: httpx.Response) -> bool:
    return (
        r.status_code == 421
        and r.headers["content-type"] == "application/json"
        and r.json()["error"]["code"] == "host_not_allowed"
    )


@pytest.fixture(scope="module")
def named(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway(
        "hosts",
        allowed_hosts="localhost,127.0.0.1,[::1],my.dev,*.corp.example",
        preview_domain="preview.test",
        public_url="http://gw.test:1234",
    ) as gw:
        yield gw


def test_an_open_gateway_refuses_foreign_host_names(named: Gateway) -> None:
    with named.client(timeout=30) as c:
        for host in FOREIGN:
            for path in PATHS:
                r = c.get(path, headers={"Host": host})
                assert refused(r), (host, path, r.status_code, r.text[:200])
        r = c.post("/v1/sandboxes", json={"language": "python"}, headers={"Host": "evil.example"})
        assert refused(r)
        assert c.get("/v1/sandboxes").json()["sandboxes"] == []  # nothing was made


@pytest.mark.parametrize(
    "host",
    [
        "localhost", "LOCALHOST:1", "localhost.", "127.0.0.1:9", "[::1]:8000", "[::1]",
        "my.dev", "my.dev:443", "a.corp.example", "gw.test:1234",  # PETRI_ALLOWED_HOSTS, public
        "preview.test", "api.preview.test",  # the preview domain and its names
    ],
)
def test_its_own_names_pass(named: Gateway, host: str) -> None:
    r = httpx.get(f"{named.url}/v1/sandboxes", headers={"Host": host}, timeout=30)
    assert r.status_code == 200, (host, r.text)


def test_preview_hosts_still_reach_the_preview_router(named: Gateway) -> None:
    token = "a" * 52
    r = httpx.get(f"{named.url}/x", headers={"Host": f"{token}.preview.test"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "preview_not_found", r.text


def test_odd_host_bytes_and_websockets_are_refused(named: Gateway) -> None:
    for host in (b"ev\xffil.example", b"local\xc3\xa9host", b"localhost\x00.evil", b"[::1"):
        answer = raw(named, b"GET /v1/sandboxes HTTP/1.1\r\nHost: " + host +
                     b"\r\nConnection: close\r\n\r\n")
        status = answer.split(b" ", 2)[1]
        assert status in (b"400", b"421"), (host, answer[:300])
    upgrade = (
        b"GET /preview/abc/ HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert raw(named, upgrade).startswith(b"HTTP/1.1 403"), "the upgrade was not refused"


def test_a_key_closes_the_gateway_and_then_keys_decide(docker_ready: None) -> None:
    with running_gateway("hosts-key") as gw, gw.client(timeout=30) as c:
        assert refused(c.get("/v1/sandboxes", headers={"Host": "evil.example"}))
        key = new_key(gw, "alpha")
        r = c.get("/v1/sandboxes", headers={"Host": "evil.example"})
        assert r.status_code == 401, r.text  # no longer open: the key is what counts
        r = c.get(
            "/v1/sandboxes", headers={"Host": "evil.example", "Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200, r.text


def test_star_turns_the_check_off(docker_ready: None) -> None:
    with running_gateway("hosts-any", allowed_hosts="*") as gw:
        r = httpx.get(f"{gw.url}/v1/sandboxes", headers={"Host": "evil.example"}, timeout=30)
        assert r.status_code == 200, r.text
