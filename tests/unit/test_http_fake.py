"""The HTTP layer in-process (Starlette's TestClient) over an app built with the in-memory
backend: request hygiene, the error JSON shape, SSE framing and OpenAPI parity, no Docker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from starlette.testclient import TestClient

from gateway.routes import create_app
from tests.fake_backend import FakeBackend
from tests.sse import check_sequence, parse_wire, text
from tests.unit.test_domain_fake import fake_settings


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory, fake: FakeBackend) -> Iterator[TestClient]:
    settings = fake_settings(tmp_path_factory.mktemp("http"), max_body_bytes=64 * 1024)
    with TestClient(
        create_app(settings, fake), base_url="http://localhost", raise_server_exceptions=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def sid(c: TestClient) -> str:
    r = c.post("/v1/sandboxes", json={"language": "python"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def spec(c: TestClient) -> dict[str, Any]:
    r = c.get("/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def error_of(r: Any, status: int) -> str:
    """The response is the JSON error shape with this status; its code."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text
    return str(body["error"]["code"])


def conforms(spec: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """`body` is valid against the schema the OpenAPI document gives that response."""
    response = spec["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    root = {**schema, "components": spec["components"]}
    jsonschema.Draft202012Validator(root).validate(body)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"language": "python"', 400, "malformed_json"),
        (b"\x00\x00", 400, "malformed_json"),
        (b'{"language": "python", "limits": {"cpus": NaN}}', 400, "malformed_json"),
        (b'{"language": "\xff"}', 400, "invalid_utf8"),
        (b"[" * 5000 + b"]" * 5000, 400, "json_too_deep"),
        (b'{"language": "python", "surprise": 1}', 422, "unknown_field"),
        (b'"a string"', 422, "invalid_body"),
        (b'{"language": "cobol"}', 422, "unknown_language"),
    ],
    ids=["truncated", "nul", "nan", "utf8", "deep", "unknown-field", "not-object", "language"],
)
def test_hostile_json_is_a_clear_error(
    c: TestClient, fake: FakeBackend, body: bytes, status: int, code: str
) -> None:
    before = len(fake.containers)
    r = c.post("/v1/sandboxes", content=body, headers={"content-type": "application/json"})
    assert error_of(r, status) == code
    assert len(fake.containers) == before  # a refused create starts nothing


def test_a_wrong_content_type_is_415(c: TestClient) -> None:
    r = c.post("/v1/sandboxes", content=b"<x/>", headers={"content-type": "application/xml"})
    assert error_of(r, 415) == "unsupported_media_type"


def test_a_huge_body_is_413_declared_or_streamed(c: TestClient, sid: str) -> None:
    big = b'{"command": "' + b"x" * (70 * 1024) + b'"}'
    r = c.post(f"/v1/sandboxes/{sid}/exec", content=big,
               headers={"content-type": "application/json"})
    assert error_of(r, 413) == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it streams in
        yield b'{"command": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    r = c.post(f"/v1/sandboxes/{sid}/exec", content=chunks(),
               headers={"content-type": "application/json"})
    assert error_of(r, 413) == "too_large"


def test_unknown_exec_fields_and_missing_things(c: TestClient, sid: str) -> None:
    r = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo", "shell": "zsh"})
    assert error_of(r, 422) == "unknown_field"
    assert error_of(c.get("/v1/sandboxes/sb-nope"), 404) == "sandbox_not_found"
    assert error_of(c.get(f"/v1/sandboxes/{sid}/executions/ex-nope"), 404) == (
        "execution_not_found"
    )
    assert error_of(c.get("/v1/nothing-here"), 404)
    assert error_of(c.request("PATCH", "/v1/sandboxes"), 405)


def test_responses_match_the_openapi_document(
    c: TestClient, sid: str, spec: dict[str, Any]
) -> None:
    r = c.get(f"/v1/sandboxes/{sid}")
    conforms(spec, "/v1/sandboxes/{sid}", "get", 200, r.json())
    r = c.get("/v1/sandboxes/sb-nope")
    conforms(spec, "/v1/sandboxes/{sid}", "get", 404, r.json())
    r = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo hi; err no; exit 2"})
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["stdout"], result["stderr"], result["exit_code"]) == ("hi\n", "no\n", 2)
    conforms(spec, "/v1/sandboxes/{sid}/exec", "post", 200, result)
    r = c.get(f"/v1/sandboxes/{sid}/executions/{result['execution_id']}")
    conforms(spec, "/v1/sandboxes/{sid}/executions/{eid}", "get", 200, r.json())
    with pytest.raises(jsonschema.ValidationError):  # the check itself can fail
        conforms(spec, "/v1/sandboxes/{sid}/exec", "post", 200, {"exit_code": "two"})


def test_an_exec_streams_typed_events_over_sse(c: TestClient, sid: str) -> None:
    headers = {"accept": "text/event-stream"}
    body = {"command": "echo one; err two; exit 1"}
    with c.stream("POST", f"/v1/sandboxes/{sid}/exec", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        eid = r.headers["x-execution-id"]
        events = list(parse_wire(r.iter_lines()))
    check_sequence(events)
    assert [e.type for e in events] == ["start", "stdout", "stderr", "exit"]
    assert (text(events, "stdout"), text(events, "stderr")) == ("one\n", "two\n")
    assert events[-1].data["exit_code"] == 1
    # a reconnect after id 2 gets the rest, exactly once
    url = f"/v1/sandboxes/{sid}/executions/{eid}/events"
    with c.stream("GET", url, headers={**headers, "last-event-id": "2"}) as r:
        rest = list(parse_wire(r.iter_lines()))
    assert [e.id for e in rest] == [3, 4]


def test_kill_over_http(c: TestClient, sid: str) -> None:
    r = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "hang", "wait": False})
    assert r.status_code == 202, r.text
    eid = r.json()["execution_id"]
    r = c.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "killed"
    assert error_of(c.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill"), 409) == "not_running"


def test_readyz_asks_the_backend(c: TestClient, fake: FakeBackend) -> None:
    assert c.get("/readyz").status_code == 200
    fake.up = False
    try:
        assert error_of(c.get("/readyz"), 503) == "docker_unavailable"
    finally:
        fake.up = True


def test_no_file_of_the_gateway_is_reachable_by_path(c: TestClient, sid: str) -> None:
    for path in ("../../etc/passwd", "%2e%2e/x", "a/%00b"):
        r = c.get(f"/v1/sandboxes/{sid}/files/{path}")
        assert r.status_code in (400, 404), (path, r.status_code)
        error_of(r, r.status_code)


def test_the_app_ran_on_the_fake_backend(fake: FakeBackend) -> None:
    assert any(call == "start_container" for call, _ in fake.calls)
