"""Every error is JSON `{"error": {"code", "message"}}` with a fitting status; no tracebacks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, running_gateway

pytestmark = pytest.mark.docker


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in r.text
    code: str = body["error"]["code"]
    return code


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b"[1, 2", b"nul", b'{"language": "python",}'])
def test_malformed_json_is_400(client: httpx.Client, raw: bytes) -> None:
    r = client.post("/v1/sandboxes", content=raw, headers={"Content-Type": "application/json"})
    assert error_of(r, 400) == "malformed_json"


def test_invalid_utf8_and_deep_json_are_400(client: httpx.Client) -> None:
    r = client.post(
        "/v1/sandboxes",
        content=b'{"language": "py\xff"}',
        headers={"Content-Type": "application/json"},
    )
    assert error_of(r, 400) == "invalid_utf8"
    deep = b"[" * 100000 + b"]" * 100000
    r = client.post("/v1/sandboxes", content=deep, headers={"Content-Type": "application/json"})
    assert error_of(r, 400) == "json_too_deep"


@pytest.mark.parametrize(
    "body,code",
    [
        ({"language": "python", "colour": "red"}, "unknown_field"),
        ({"language": 7}, "invalid_field"),
        ({"language": "python", "ttl_seconds": "10"}, "invalid_field"),
        ({"language": "python", "env": {"1BAD": "x"}}, "invalid_field"),
        ({"language": "python", "limits": {"memory_mb": 256, "gpu": 1}}, "unknown_field"),
        ([1, 2], "invalid_body"),
    ],
)
def test_unknown_fields_and_wrong_types_are_422(client: httpx.Client, body: Any, code: str) -> None:
    assert error_of(client.post("/v1/sandboxes", json=body), 422) == code


def test_exec_body_is_validated(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    url = f"/v1/sandboxes/{sandbox['id']}/exec"
    assert error_of(client.post(url, json={}), 422) == "invalid_field"
    assert error_of(client.post(url, json={"command": "ls", "code": "x"}), 422) == "invalid_field"
    assert error_of(client.post(url, json={"command": "ls", "shell": 1}), 422) == "unknown_field"
    assert (
        error_of(client.post(url, json={"command": "ls", "timeout_seconds": 0}), 422)
        == "invalid_field"
    )
    assert error_of(client.post(url, json={"command": "a\u0000b"}), 422) == "invalid_field"
    r = client.post(url, content=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert error_of(r, 415) == "unsupported_media_type"


def test_unknown_sandbox_execution_and_route(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    assert error_of(client.get("/v1/sandboxes/sb-0000"), 404) == "sandbox_not_found"
    assert (
        error_of(client.post("/v1/sandboxes/sb-0000/exec", json={"command": "ls"}), 404)
        == "sandbox_not_found"
    )
    assert error_of(client.delete("/v1/sandboxes/" + "x" * 5000), 404) == "sandbox_not_found"
    sid = sandbox["id"]
    assert (
        error_of(client.get(f"/v1/sandboxes/{sid}/executions/ex-nope"), 404)
        == "execution_not_found"
    )
    assert error_of(client.get("/v2/anything"), 404) == "route_not_found"
    assert error_of(client.patch("/v1/sandboxes"), 405) == "method_not_allowed"
    assert error_of(client.get("/v1/sandboxes", params={"limit": "lots"}), 400) == "invalid_query"


def test_huge_bodies_are_413_and_nothing_is_lost(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    big = b'{"command": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = client.post(
        f"/v1/sandboxes/{sandbox['id']}/exec",
        content=big,
        headers={"Content-Type": "application/json"},
    )
    assert error_of(r, 413) == "too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(3):
            yield b" " * (1024 * 1024)

    r = client.post(
        "/v1/sandboxes", content=chunked(), headers={"Content-Type": "application/json"}
    )
    assert error_of(r, 413) == "too_large"
    assert client.get(f"/v1/sandboxes/{sandbox['id']}").status_code == 200


@pytest.fixture(scope="module")
def no_docker_gateway() -> Iterator[Gateway]:
    with running_gateway("nodocker", docker_url="unix:///nonexistent/docker.sock") as gw:
        yield gw


def test_docker_unreachable_is_503(no_docker_gateway: Gateway) -> None:
    with no_docker_gateway.client(timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        assert error_of(c.get("/readyz"), 503) == "docker_unavailable"
        r = c.post("/v1/sandboxes", json={"language": "python"})
        assert error_of(r, 503) == "docker_unavailable"
        assert c.get("/v1/sandboxes").json()["sandboxes"] == []


ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def faulty_gateway() -> Iterator[Gateway]:
    """A real gateway with one route that raises a plain exception (tests/faulty_gateway.py)."""
    with running_gateway(
        "faulty",
        module="tests.faulty_gateway",
        cors_origins=ORIGIN,
        log_format="json",
        log_level="info",
    ) as gw:
        yield gw


def test_an_internal_error_is_one_logged_json_500_with_cors(faulty_gateway: Gateway) -> None:
    """A bug answers 500 `internal` as JSON, with the CORS headers a page of an allowed origin
    needs to read it and the request id, no traceback or exception text; the log holds it
    exactly once, under that request id."""
    from tests.faulty_gateway import SECRET

    with faulty_gateway.client(timeout=30) as c:
        for method in ("GET", "POST"):
            r = c.request(method, "/v1/boom", headers={"Origin": ORIGIN}, json={})
            assert error_of(r, 500) == "internal_error"
            assert r.headers["access-control-allow-origin"] == ORIGIN
            assert SECRET not in r.text and "RuntimeError" not in r.text
            rid = r.headers["x-request-id"]
            assert faulty_gateway.log_path is not None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                lines = faulty_gateway.log_path.read_text().splitlines()
                mentions = [line for line in lines if SECRET in line]
                if mentions and any(rid in line for line in lines):
                    break
                time.sleep(0.1)
            errors = [json.loads(line) for line in lines if line.startswith("{")]
            logged = [e for e in errors if SECRET in e.get("error", "") + e["message"]]
            assert len(logged) == 1, lines[-20:]
            assert logged[0]["request_id"] == rid and logged[0]["level"] == "error"
            access = [e for e in errors if e.get("path") == "/v1/boom"]
            assert access[-1]["status"] == 500 and access[-1]["request_id"] == rid
            faulty_gateway.log_path.write_text("")  # the next request's lines alone
        # The gateway still answers, and a preflight from the same origin is allowed.
        assert c.get("/healthz").status_code == 200
