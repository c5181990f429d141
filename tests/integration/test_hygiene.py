"""Request hygiene: body size limits on every endpoint, JSON depth and number limits, path
length limits, invalid UTF-8 and NUL bytes wherever a client can put them, and an OpenAPI
document that matches the real routes. Every hostile request gets a clear JSON error (never a
500, never a traceback) and loses nothing that was already stored.

Runs against its own gateway with small body limits, so the limits are cheap to hit.
"""

from __future__ import annotations

import io
import socket
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway import openapi
from gateway.routes import ROUTES
from tests.conftest import Gateway, running_gateway

pytestmark = pytest.mark.docker

MAX_BODY = 64 * 1024
MAX_UPLOAD = 1024 * 1024
UPLOAD_SLACK = 1024 * 1024  # multipart framing allowed on top of the upload limit


@pytest.fixture(scope="module")
def small_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway(
        "hygiene", max_body_bytes=str(MAX_BODY), max_upload_bytes=str(MAX_UPLOAD)
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def c(small_gateway: Gateway) -> Iterator[httpx.Client]:
    with small_gateway.client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sid(c: httpx.Client) -> Iterator[str]:
    r = c.post("/v1/sandboxes", json={"language": "python"})
    assert r.status_code == 201, r.text
    sandbox_id = str(r.json()["id"])
    yield sandbox_id
    c.delete(f"/v1/sandboxes/{sandbox_id}")


def error_of(r: httpx.Response, status: int) -> str:
    """The response is the JSON error shape with this status; its code."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in r.text
    code: str = body["error"]["code"]
    return code


def _raw(gw: Gateway, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send bytes as they are (no client fixes the request line or headers first)."""
    address = urlsplit(gw.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as s:
        s.sendall(head + b"\r\n\r\n" + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            # The server refused the request and closed with bytes of it unread, so the kernel
            # sent a reset, which may overtake its plain-text 400.
            if not data:
                return 0, b"", b"connection reset"
    headers, _, payload = data.partition(b"\r\n\r\n")
    return int(headers.split(b" ", 2)[1]), headers, payload


# --- every route, every method: documented, and limited -------------------------------------


def _route_methods() -> list[tuple[str, str]]:
    found = []
    for route in ROUTES:
        path = route.path.replace("{path:path}", "{path}")  # type: ignore[attr-defined]
        for method in sorted(route.methods or {"GET"}):  # type: ignore[attr-defined]
            if method != "HEAD":
                found.append((path, method))
    return found


def test_openapi_describes_every_route_and_only_real_ones(c: httpx.Client) -> None:
    served = c.get("/openapi.json")
    assert served.status_code == 200
    doc = served.json()
    assert doc == openapi.document()
    assert doc["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    # /mcp is added by create_app, outside ROUTES (tests/unit/test_openapi_routes.py checks
    # the whole app, /mcp included).
    assert documented - {("/mcp", "POST")} == set(_route_methods())
    for path, item in doc["paths"].items():
        names = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["responses"], (path, method)
    # The request schemas are the real, strict models.
    schemas = doc["components"]["schemas"]
    assert schemas["ExecBody"]["additionalProperties"] is False
    assert "idle_timeout_seconds" in schemas["ExecBody"]["properties"]
    assert schemas["CreateSandbox"]["additionalProperties"] is False


def _url(path: str, sid: str) -> str:
    return path.format(
        sid=sid, eid="ex-0000000000000000", path="f.txt", svid="sv-0000000000000000", name="db"
    )


@pytest.mark.parametrize(("path", "method"), _route_methods())
def test_every_endpoint_refuses_an_oversized_declared_body(
    small_gateway: Gateway, sid: str, path: str, method: str
) -> None:
    uploads = path.endswith(("/files", "/files/{path}", "/upload"))
    limit = MAX_UPLOAD + UPLOAD_SLACK if uploads else MAX_BODY
    head = (
        f"{method} {_url(path, sid)} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {limit + 1}"
    ).encode()
    # Refused on the declared length alone, before a byte of the body is read.
    status, headers, payload = _raw(small_gateway, head)
    assert status == 413, (status, payload)
    assert b"application/json" in headers and payload.startswith(b'{"error":{"code":"too_large"')


BODY_READERS = [p for p in _route_methods() if p[1] in ("POST", "PUT") and "kill" not in p[0]]


@pytest.mark.parametrize(("path", "method"), BODY_READERS)
def test_every_endpoint_that_reads_a_body_stops_a_streamed_one(
    c: httpx.Client, sid: str, path: str, method: str
) -> None:
    """No Content-Length (chunked): the limit holds while the body streams in."""

    multipart = path.endswith("/files")

    def chunks() -> Iterator[bytes]:
        if multipart:  # a well-formed start, then a file part that never ends
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
        for _ in range(3 * (MAX_UPLOAD + UPLOAD_SLACK) // (256 * 1024)):
            yield b" " * (256 * 1024)

    ctype = "multipart/form-data; boundary=b" if multipart else "application/json"
    r = c.request(method, _url(path, sid), content=chunks(), headers={"content-type": ctype})
    assert error_of(r, 413) in ("too_large",), r.text
    assert c.get("/healthz").status_code == 200


def test_a_refused_write_loses_nothing(c: httpx.Client, sid: str) -> None:
    url = f"/v1/sandboxes/{sid}/files/keep.txt"
    assert c.put(url, content=b"version 1").status_code == 201

    def too_big() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * (512 * 1024)

    error_of(c.put(url, content=too_big()), 413)
    assert c.get(url).content == b"version 1"
    # No half-written temporary file is left behind either.
    paths = [f["path"] for f in c.get(f"/v1/sandboxes/{sid}/files").json()["files"]]
    assert not any(".petri-tmp" in p for p in paths), paths
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("keep.txt", b"from the zip")
        z.writestr("../escape.txt", b"x")
    r = c.post(
        f"/v1/sandboxes/{sid}/upload",
        content=zipped.getvalue(),
        headers={"content-type": "application/zip"},
    )
    assert error_of(r, 400) == "zip_unsafe_path"
    assert c.get(url).content == b"version 1"


# --- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[" * 5000 + b"]" * 5000, 400, "json_too_deep"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, 400, "json_too_deep"),
        (b'{"language": "python", "env": ' + b'{"a":' * 40 + b'"x"' + b"}" * 41, 400, None),
        (b'{"language": "python", "ttl_seconds": 1' + b"0" * 5000 + b"}", 400, "malformed_json"),
        (b'{"language": "python", "limits": {"cpus": NaN}}', 400, "malformed_json"),
        (b'{"language": "python", "limits": {"cpus": Infinity}}', 400, "malformed_json"),
        (b'{"language": "python", "ttl_seconds": 1e999}', 422, "invalid_field"),
        (b'{"language": "\xff\xfe"}', 400, "invalid_utf8"),
        (b'{"language": "\\ud800"}', 422, "invalid_field"),
        (b'{"language": "py\\u0000thon"}', 422, "unknown_language"),
        (b'{"language": "python", "env": {"A": "\\ud800"}}', 422, "invalid_field"),
        (b'{"language": "python", "env": {"A": "a\\u0000b"}}', 422, "invalid_field"),
        (b'{"language": "python", "env": {"A=B": "x"}}', 422, "invalid_field"),
        (b'{"language": "python", "limits": {"cpus": 0.001}}', 422, "invalid_field"),
        (b'{"language": "python", "surprise": 1}', 422, "unknown_field"),
        (b'{"language": "python"', 400, "malformed_json"),
        (b"\x00\x00\x00", 400, "malformed_json"),
        (b'"just a string"', 422, "invalid_body"),
    ],
    ids=[
        "deep-array",
        "deep-object",
        "deep-env",
        "huge-integer",
        "nan",
        "infinity",
        "float-overflow",
        "invalid-utf8",
        "lone-surrogate",
        "nul-in-language",
        "surrogate-in-env",
        "nul-in-env",
        "bad-env-name",
        "tiny-cpus",
        "unknown-field",
        "truncated",
        "nul-bytes",
        "not-an-object",
    ],
)
def test_hostile_json_is_a_clear_error(
    c: httpx.Client, body: bytes, status: int, code: str | None
) -> None:
    r = c.post("/v1/sandboxes", content=body, headers={"content-type": "application/json"})
    got = error_of(r, status)
    if code is not None:
        assert got == code
    assert c.get("/v1/sandboxes").json()["sandboxes"] == [] or r.status_code != 201


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"command": "echo \x00"}, "invalid_field"),
        ({"code": "print(1)\x00"}, "invalid_field"),
        ({"filename": "a\x00.py"}, "invalid_field"),
        ({"command": "cat", "stdin": "a\x00b"}, "invalid_field"),
        ({"command": "true", "env": {"X": "\x00"}}, "invalid_field"),
        ({"command": ""}, "invalid_field"),
        ({"command": "true", "timeout_seconds": 0}, "invalid_field"),
        ({"command": "true", "timeout_seconds": 10**9}, "limit_too_high"),
        ({"command": "true", "idle_timeout_seconds": 0}, "invalid_field"),
        ({"command": "true", "timeout_seconds": "5"}, "invalid_field"),
        ({"command": "true", "code": "x"}, "invalid_field"),
        ({}, "invalid_field"),
    ],
)
def test_hostile_exec_bodies_are_refused(
    c: httpx.Client, sid: str, body: dict[str, Any], code: str
) -> None:
    r = c.post(f"/v1/sandboxes/{sid}/exec", json=body)
    assert error_of(r, 422) == code
    assert c.get(f"/v1/sandboxes/{sid}/executions").json()["executions"] == []


def test_filename_exec_paths_are_checked(c: httpx.Client, sid: str) -> None:
    for name, status in (("../../etc/passwd", 400), ("/etc/passwd", 400), ("a" * 1025, 422)):
        error_of(c.post(f"/v1/sandboxes/{sid}/exec", json={"filename": name}), status)


def test_wrong_content_types(c: httpx.Client, sid: str) -> None:
    r = c.post("/v1/sandboxes", content=b"<xml/>", headers={"content-type": "application/xml"})
    assert error_of(r, 415) == "unsupported_media_type"
    r = c.post(f"/v1/sandboxes/{sid}/files", content=b"x", headers={"content-type": "text/plain"})
    assert error_of(r, 400) in ("no_files", "bad_request")
    r = c.post(
        f"/v1/sandboxes/{sid}/files",
        content=b"garbage",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert error_of(r, 400)
    r = c.post(
        f"/v1/sandboxes/{sid}/upload",
        content=b"\xff" * 100,
        headers={"content-type": "application/zip"},
    )
    assert error_of(r, 400) == "invalid_zip"


# --- paths, queries, headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("a" * 1025, 400, "invalid_path"),
        ("/".join(["d"] * 600), 400, "invalid_path"),
        ("c" * 256, 400, "invalid_path"),
        ("%ff%fe.txt", 400, "invalid_path"),
        ("ok/%c0%af", 400, "invalid_path"),
        ("nul%00.txt", 400, "invalid_path"),
        ("tab%09.txt", 400, "invalid_path"),
        ("%2e%2e/x", 400, "invalid_path"),
        ("x/%2e%2e/%2e%2e/y", 400, "invalid_path"),
        ("%ef%bf%bd", 400, "invalid_path"),
    ],
)
def test_hostile_file_paths(c: httpx.Client, sid: str, path: str, status: int, code: str) -> None:
    for method in ("PUT", "GET", "DELETE"):
        r = c.request(method, f"/v1/sandboxes/{sid}/files/{path}", content=b"x")
        assert error_of(r, status) == code, (method, path)


def test_hostile_ids_queries_and_headers(small_gateway: Gateway, c: httpx.Client, sid: str) -> None:
    assert error_of(c.get("/v1/sandboxes/" + "a" * 5000), 404) == "sandbox_not_found"
    assert error_of(c.get("/v1/sandboxes/%ff%00"), 404) == "sandbox_not_found"
    assert error_of(c.get(f"/v1/sandboxes/{sid}/executions/%ff"), 404) == "execution_not_found"
    assert error_of(c.get(f"/v1/sandboxes/{sid}/executions/" + "e" * 5000), 404)
    for query in ("limit=%ff", "limit=-1", "limit=99999999999999999999", "limit=1e3"):
        assert error_of(c.get(f"/v1/sandboxes?{query}"), 400) == "invalid_query"
    assert c.get("/v1/sandboxes?after=%ff%00" + "z" * 5000).status_code == 200
    events = f"/v1/sandboxes/{sid}/executions/ex-0000000000000000/events"
    assert error_of(c.get(events + "?after=%ff"), 400) == "invalid_query"
    assert error_of(c.get(events, headers={"Last-Event-ID": "x" * 1000}), 400) == "invalid_header"
    # Past the SQLite integer range: refused before the execution is looked up.
    assert error_of(c.get(events, headers={"Last-Event-ID": "9" * 100}), 400) == "invalid_header"
    r = c.post(
        f"/v1/sandboxes/{sid}/exec",
        json={"command": "true"},
        headers={"Idempotency-Key": "k" * 201},
    )
    assert error_of(r, 400) == "invalid_header"
    # Bytes no client would send: the HTTP parser refuses them before the app (a plain-text
    # 400 from uvicorn), or the app answers with a JSON error.
    for head in (
        b"GET /v1/sandboxes/\xff\xfe HTTP/1.1\r\nHost: localhost\r\nConnection: close",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x00b\r\nConnection: close",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close",
        b"POST /v1/sandboxes HTTP/1.1\r\nHost: [::1]\r\nContent-Length: -1\r\nConnection: close",
    ):
        status, _, payload = _raw(small_gateway, head)
        oversized = len(head) > 65536  # unread bytes left behind: a reset may come first
        assert 400 <= status < 500 or (oversized and status == 0), (head[:60], status, payload)
    assert c.get("/healthz").status_code == 200


def test_invalid_utf8_in_a_multipart_filename_never_fails_the_request(
    c: httpx.Client, sid: str
) -> None:
    for name, ok in ((b"bad\xff\xfename.txt", True), (b"nul\x00.txt", False)):
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
            b"\r\ndata\r\n--b--\r\n"
        )
        r = c.post(
            f"/v1/sandboxes/{sid}/files",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        if ok:  # read as Latin-1 by the multipart parser: stored under that name
            assert r.status_code == 201, r.text
        else:
            assert error_of(r, 400) == "invalid_path"


def test_unknown_routes_and_methods_are_json(c: httpx.Client) -> None:
    assert error_of(c.get("/nope"), 404) == "route_not_found"
    assert error_of(c.get("/v1/sandboxes/x/nope/y"), 404) == "route_not_found"
    assert error_of(c.delete("/healthz"), 405) == "method_not_allowed"
    assert error_of(c.put("/v1/sandboxes"), 405) == "method_not_allowed"


# --- odd numbers, wherever a body holds a number ------------------------------------------------

ODD_NUMBERS = [True, False, 1.5, 1.0, -0.0, 0, -1, 2**63, 2**64, -(2**63) - 1, 10**30, "5", [5]]
NUMBER_FIELDS = [
    ("sandbox", "ttl_seconds"),
    ("limits", "memory_mb"),
    ("limits", "pids"),
    ("limits", "disk_mb"),
    ("exec", "timeout_seconds"),
    ("exec", "idle_timeout_seconds"),
    ("service", "port"),
    ("service", "ready_timeout_seconds"),
    ("service", "preview_ttl_seconds"),
    ("app", "port"),
    ("app", "ready_timeout_seconds"),
]


def _numbered(sid: str, kind: str, field: str, value: Any) -> tuple[str, dict[str, Any]]:
    if kind == "sandbox":
        return "/v1/sandboxes", {"language": "python", field: value}
    if kind == "limits":
        return "/v1/sandboxes", {"language": "python", "limits": {field: value}}
    if kind == "exec":
        return f"/v1/sandboxes/{sid}/exec", {"command": "true", field: value}
    if kind == "service":
        return f"/v1/sandboxes/{sid}/services", {"command": "true", "port": 8000, field: value}
    app = {"command": "true", "port": 5000, field: value}
    return f"/v1/sandboxes/{sid}/exec", {"test": True, "command": "true", "app": app}


@pytest.mark.parametrize(("kind", "field"), NUMBER_FIELDS)
def test_odd_numbers_are_refused_where_integers_are_expected(
    c: httpx.Client, sid: str, kind: str, field: str
) -> None:
    """Booleans, floats (even 1.0 and -0.0), strings, lists, 0, negatives and integers past
    SQLite's range are a 4xx JSON error naming the field, never a 500, never clamped;
    nothing is made."""
    before = len(c.get("/v1/sandboxes").json()["sandboxes"])
    for value in ODD_NUMBERS:
        url, body = _numbered(sid, kind, field, value)
        r = c.post(url, json=body)
        assert 400 <= r.status_code < 500, (field, value, r.status_code, r.text)
        error_of(r, r.status_code)
        assert field in r.json()["error"]["message"], (field, value, r.text)
    assert len(c.get("/v1/sandboxes").json()["sandboxes"]) == before
    assert c.get(f"/v1/sandboxes/{sid}/executions").json()["executions"] == []


def test_float_literals_past_the_double_range_and_minus_zero(c: httpx.Client, sid: str) -> None:
    for raw in (b"1e309", b"-1e309", b"-0", b"1E400", b"0.0000001e-400"):
        body = b'{"command": "true", "timeout_seconds": ' + raw + b"}"
        r = c.post(
            f"/v1/sandboxes/{sid}/exec", content=body, headers={"content-type": "application/json"}
        )
        assert error_of(r, 422) == "invalid_field", raw


# --- the audit stream, secrets, /mcp, previews ------------------------------------------------


def test_a_bad_cursor_is_refused_before_a_stream_starts(c: httpx.Client) -> None:
    """`after` / `Last-Event-ID` of the audit stream are checked before the response starts:
    a 400 JSON error, not a stream that breaks off (it used to start, then fail)."""
    for query in ("after=%ff", "after=-1", "after=1.0", f"after={2**63}", "after=true"):
        assert error_of(c.get(f"/v1/audit/events?{query}"), 400) == "invalid_query", query
    r = c.get("/v1/audit/events", headers={"Last-Event-ID": "-0"})
    assert error_of(r, 400) == "invalid_header"


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"value": "\xff\xfe-secret"}',
        b'{"value": "abcd", "extra": 1}',
        b'{"value": 12345}',
        b'{"value": true}',
        b'{"value": null}',
        b'{"value": "\\ud800abc"}',
        b'{"value": "ab\\u0000cd"}',
        b"[" * 5000 + b"]" * 5000,
        b'"abcd"',
    ],
)
def test_hostile_secret_bodies(c: httpx.Client, body: bytes) -> None:
    r = c.put("/v1/secrets/HOSTILE", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    error_of(r, r.status_code)
    assert all(s["name"] != "HOSTILE" for s in c.get("/v1/secrets").json()["secrets"])


@pytest.mark.parametrize(
    "name", ["%ff", "%00", "a%2fb", "..%2f..%2fx", "x" * 300, "a%20b", "%e2%80%ae"]
)
def test_hostile_secret_names(c: httpx.Client, name: str) -> None:
    r = c.put(f"/v1/secrets/{name}", json={"value": "abcdefgh"})
    assert r.status_code in (404, 422), r.text
    error_of(r, r.status_code)


MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"\xff\xfe",
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}, "x": 1}',
        b'{"jsonrpc": "2.0", "id": 1e309, "method": "tools/list"}',
        b'{"jsonrpc": "2.0", "id": NaN, "method": "tools/list"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
        b'"create_sandbox", "arguments": {"language": "python", "ttl_seconds": 1e400}}}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
        b'"create_sandbox", "arguments": {"language": "python", "ttl_seconds": true}}}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
        b'"read_file", "arguments": {"sandbox_id": "sb-x", "path": "../../etc/passwd"}}}',
    ],
)
def test_hostile_mcp_bodies_are_never_a_500(c: httpx.Client, body: bytes) -> None:
    r = c.post("/mcp", content=body, headers=MCP_HEADERS)
    assert r.status_code < 500 and "Traceback" not in r.text, r.text[:300]
    assert "root:x:0:0" not in r.text


def test_mcp_bodies_are_bounded(small_gateway: Gateway, c: httpx.Client) -> None:
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"p": "' + b"a" * MAX_BODY + b'"}}'
    assert error_of(c.post("/mcp", content=big, headers=MCP_HEADERS), 413) == "too_large"

    def chunked() -> Iterator[bytes]:
        yield b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"p": "'
        for _ in range(4):
            yield b"a" * MAX_BODY
        yield b'"}}'

    r = c.post("/mcp", content=chunked(), headers=MCP_HEADERS)
    assert r.status_code == 413, r.text[:200]


def test_preview_paths_cannot_escape_to_the_api(small_gateway: Gateway) -> None:
    token = b"a" * 52
    for target in (
        b"/preview/" + token + b"/../../v1/sandboxes",
        b"/preview/" + token + b"/%2e%2e/%2e%2e/v1/sandboxes",
        b"/preview/..%2f..%2fv1/sandboxes",
        b"/preview/%2e%2e/v1/sandboxes",
        b"/preview/" + token + b"%00/x",
        b"/preview/" + b"a" * 5000 + b"/x",
    ):
        status, _, payload = _raw(small_gateway, b"GET " + target + b" HTTP/1.1\r\nHost: "
                                  b"localhost\r\nConnection: close")
        assert status in (400, 404), (target[:80], status, payload[:200])
        assert b'"sandboxes"' not in payload, target[:80]
    for head in (b"GET /preview/\xff\xfe/x HTTP/1.1", b"GET /preview/" + token + b"/\xff HTTP/1.1"):
        status, _, _ = _raw(small_gateway, head + b"\r\nHost: localhost\r\nConnection: close")
        assert status == 400, head


def test_invalid_utf8_in_headers_never_fails_a_request(small_gateway: Gateway, sid: str) -> None:
    """Header values are bytes (HTTP allows obs-text): read as Latin-1, refused or ignored,
    never a 500."""
    body = b'{"command": "true", "wait": false}'
    for header in (
        b"Idempotency-Key: \xff\xfe",
        b"X-Request-Id: \xff",
        b"Authorization: Bearer \xff\xfe",
        b"Last-Event-ID: \xff",
        b"Accept: text/event-stream\xff",
        b"Origin: http://\xff",
        b"Content-Type: application/json; charset=\xff",
    ):
        head = (
            b"POST /v1/sandboxes/" + sid.encode() + b"/exec HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + header
        )
        status, _, payload = _raw(small_gateway, head, body)
        assert status < 500, (header, status, payload[:200])
        assert b"Traceback" not in payload
