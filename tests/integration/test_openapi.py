"""/openapi.json is a valid OpenAPI 3.1 document, complete (a schema for every success
response, one Error schema for every error, SSE described as such), and true: real responses
of a real gateway, and every event of real streams, match the schemas it gives, and name no
field it leaves out."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.models import EVENT_DATA
from tests.conftest import Gateway
from tests.sse import parse_wire, stream_events

pytestmark = pytest.mark.docker

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def doc(gateway: Gateway) -> dict[str, Any]:
    served = httpx.get(f"{gateway.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    document: dict[str, Any] = served.json()
    return document


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on the first violation


def test_every_response_is_described(doc: dict[str, Any]) -> None:
    for path, method, op in _operations(doc):
        if path == "/mcp":  # JSON-RPC, the MCP SDK's transport: test_mcp_is_described
            continue
        for status, response in op["responses"].items():
            where = (path, method, status)
            if status == "204":
                assert "content" not in response, where
            elif status.startswith("2"):
                assert response.get("content"), f"{where}: a success without a schema"
                for media in response["content"].values():
                    assert media.get("schema"), where
            else:  # 4xx, 5xx, default: the one Error schema
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                }, where
        assert "default" in op["responses"], (path, method)
    streams = [
        (path, media)
        for path, _, op in _operations(doc)
        for response in op["responses"].values()
        for ctype, media in response.get("content", {}).items()
        if ctype == "text/event-stream" and path.startswith("/v1/sandboxes/")
    ]
    assert {p for p, _ in streams} == {
        "/v1/sandboxes/{sid}/exec",
        "/v1/sandboxes/{sid}/executions/{eid}/events",
    }
    for _, media in streams:
        description = media["schema"]["description"]
        for kind, model in EVENT_DATA.items():
            assert f"`{kind}`" in description and model.__name__ in description, kind
        assert "keep-alive" in description and "Last-Event-ID" in description


def test_mcp_is_described(doc: dict[str, Any]) -> None:
    post = doc["paths"]["/mcp"]["post"]
    assert set(post["responses"]) == {"200", "202", "default"}
    assert set(post["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "JSON-RPC" in post["summary"]


# --- real responses against the document -----------------------------------------------------


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _undocumented(value: Any, schema: dict[str, Any], doc: dict[str, Any], at: str) -> list[str]:
    """Fields of `value` its schema does not name (the schemas allow more, for evolution:
    this is the check that the document is complete)."""
    schema = _resolve(schema, doc)
    for option in schema.get("anyOf", []):
        if Draft202012Validator({**option, "components": doc["components"]}).is_valid(value):
            return _undocumented(value, option, doc, at)
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{at}.{key}")
            else:
                found += _undocumented(item, schema["properties"][key], doc, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += _undocumented(item, schema["items"], doc, f"{at}[{i}]")
    return found


class Checker:
    """Sends requests and checks each response against the document."""

    def __init__(self, client: httpx.Client, doc: dict[str, Any]) -> None:
        self.client, self.doc = client, doc
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(self, method: str, template: str, status: int, **kw: Any) -> httpx.Response:
        url = template.format(**kw.pop("path", {}))
        r = self.client.request(method, url, **kw)
        assert r.status_code == status, (method, url, r.status_code, r.text[:300])
        op = self.doc["paths"][template][method.lower()]
        response = op["responses"].get(str(status)) or op["responses"]["default"]
        self.seen.add((template, method.lower(), str(status)))
        if status == 204:
            assert r.content == b""
            return r
        ctype = r.headers["content-type"].split(";")[0]
        assert ctype in response["content"], (method, template, status, ctype)
        schema = response["content"][ctype]["schema"]
        if ctype == "application/json":
            body = r.json()
            errors = list(
                Draft202012Validator({**schema, "components": self.doc["components"]}).iter_errors(
                    body
                )
            )
            assert not errors, (method, template, status, [e.message for e in errors], body)
            missing = _undocumented(body, schema, self.doc, "body")
            assert not missing, (method, template, status, missing)
        for name in response.get("headers", {}):
            assert name.lower() in r.headers, (method, template, status, name)
        return r


def test_real_responses_match_the_document(
    gateway: Gateway, client: httpx.Client, doc: dict[str, Any]
) -> None:
    check = Checker(client, doc)
    check("GET", "/healthz", 200)
    check("GET", "/readyz", 200)
    check("GET", "/openapi.json", 200)
    check("GET", "/", 200)
    check("GET", "/dashboard/{path}", 200, path={"path": "app.js"})
    sb = check("POST", "/v1/sandboxes", 201, json={"language": "python"}).json()
    p = {"sid": sb["id"]}
    try:
        check("GET", "/v1/sandboxes", 200, params={"limit": 1})
        check("GET", "/v1/sandboxes/{sid}", 200, path=p)
        check(
            "POST", "/v1/sandboxes/{sid}/files", 201, path=p,
            files=[("file", ("dir/a.txt", b"a")), ("file", ("b.txt", b"bb"))],
        )
        check("PUT", "/v1/sandboxes/{sid}/files/{path}", 201, path={**p, "path": "c.txt"},
              content=b"ccc")
        check("GET", "/v1/sandboxes/{sid}/files", 200, path=p)
        check("GET", "/v1/sandboxes/{sid}/files/{path}", 200, path={**p, "path": "c.txt"})
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as z:
            z.writestr("pkg/main.py", "print('zipped')\n")
        check("POST", "/v1/sandboxes/{sid}/upload", 201, path=p, content=zipped.getvalue(),
              headers={"content-type": "application/zip"})
        check("DELETE", "/v1/sandboxes/{sid}/files/{path}", 204, path={**p, "path": "dir"})
        exec_ = "/v1/sandboxes/{sid}/exec"
        result = check("POST", exec_, 200, path=p, json={"filename": "pkg/main.py"}).json()
        assert result["stdout"] == "zipped\n"
        check("POST", exec_, 200, path=p, json={"command": "python -c 'import nope'"})
        check("POST", exec_, 200, path=p, json={"command": "sleep 5", "idle_timeout_seconds": 1})
        with client.stream(
            "POST", exec_.format(**p), json={"command": "echo s"},
            headers={"Accept": "text/event-stream"},
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-execution-id"]
            assert [e.type for e in parse_wire(r.iter_lines())][-1] == "exit"
        started = check(
            "POST", exec_, 202, path=p, json={"command": "sleep 300", "wait": False}
        ).json()
        q = {**p, "eid": started["execution_id"]}
        check("GET", "/v1/sandboxes/{sid}/executions/{eid}", 200, path=q)
        check("POST", "/v1/sandboxes/{sid}/executions/{eid}/kill", 202, path=q)
        check("POST", "/v1/sandboxes/{sid}/executions/{eid}/kill", 409, path=q)
        check("GET", "/v1/sandboxes/{sid}/executions", 200, path=p)
        check("GET", "/v1/sandboxes/{sid}/packages", 200, path=p)
        events = "/v1/sandboxes/{sid}/executions/{eid}/events"
        check("GET", events, 200, path=q)
        check("GET", events, 400, path=q, params={"after": "x"})
        services = "/v1/sandboxes/{sid}/services"
        idle = {"command": "exec sleep 600", "port": 8000, "ready_timeout_seconds": 600}
        service = check("POST", services, 201, path=p, json=idle).json()
        sv = {**p, "svid": service["id"]}
        check("GET", services, 200, path=p)
        check("GET", services + "/{svid}", 200, path=sv)
        check("DELETE", services + "/{svid}", 204, path=sv)
        check("GET", services + "/{svid}", 200, path=sv)  # stopped: no preview URL any more
        check("POST", services, 422, path=p, json={"command": "x", "port": 0})
        # Errors: the one Error schema, whatever the route.
        check("GET", "/v1/sandboxes/{sid}", 404, path={"sid": "sb-nope"})
        check("POST", "/v1/sandboxes", 422, json={"language": "python", "x": 1})
        check("POST", "/v1/sandboxes", 415, content=b"{}", headers={"content-type": "text/plain"})
        json_type = {"content-type": "application/json"}
        check("POST", "/v1/sandboxes", 400, content=b"{", headers=json_type)
        check("GET", "/v1/sandboxes", 400, params={"limit": "0"})
    finally:
        check("DELETE", "/v1/sandboxes/{sid}", 204, path=p)
    # Teams (§11): secrets, the ledger, metrics (this gateway is open: loopback, no key).
    name = {"name": "openapi-check"}
    check("PUT", "/v1/secrets/{name}", 201, path=name, json={"value": "a-value"})
    check("PUT", "/v1/secrets/{name}", 200, path=name, json={"value": "b-value"})
    check("GET", "/v1/secrets", 200)
    check("DELETE", "/v1/secrets/{name}", 204, path=name)
    check("DELETE", "/v1/secrets/{name}", 404, path=name)
    check("GET", "/v1/audit", 200, params={"limit": 5})
    check("GET", "/metrics", 200)
    with client.stream("GET", "/v1/audit/events", params={"after": 0}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        first = next(e for e in parse_wire(r.iter_lines()))
        record = first.data
        schema = doc["components"]["schemas"]["AuditRecord"]
        assert not list(Draft202012Validator(schema).iter_errors(record)), record
        check.seen.add(("/v1/audit/events", "get", "200"))
    # /mcp: an initialize request, answered with a JSON-RPC result.
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "openapi-check", "version": "0"},
        },
    }
    r = check(
        "POST", "/mcp", 200, json=init,
        headers={"accept": "application/json, text/event-stream"},
    )
    assert b'"serverInfo"' in r.content and b'"jsonrpc":"2.0"' in r.content.replace(b" ", b"")
    # Every operation was exercised with a success status.
    ok = {(t, m) for t, m, s in check.seen if s.startswith("2")}
    assert ok == {(t, m) for t, m, _ in _operations(doc)}, {
        (t, m) for t, m, _ in _operations(doc)
    } - ok


def test_every_event_matches_its_documented_data(
    client: httpx.Client, sandbox: dict[str, Any], doc: dict[str, Any]
) -> None:
    url = f"/v1/sandboxes/{sandbox['id']}/exec"
    commands = [
        "echo out; echo err >&2",
        "python -c 'import nope'",
        "kill -9 $$",
        "head -c 9000000 /dev/zero | tr '\\0' x",  # past the 8 MiB budget: `truncated`
    ]
    seen: set[str] = set()
    for command in commands:
        for event in stream_events(client, "POST", url, json={"command": command}):
            name = EVENT_DATA[event.type].__name__
            schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(event.data)]
            assert not errors, (event.type, errors, event.data)
            missing = _undocumented(event.data, schema, doc, event.type)
            assert not missing, missing
            seen.add(event.type)
    assert {"start", "stdout", "stderr", "truncated", "exit"} <= seen


def test_test_mode_events_and_answer_match_the_document(
    client: httpx.Client, sandbox: dict[str, Any], doc: dict[str, Any]
) -> None:
    """Test mode's `app`, `ready`, `report`, `exit.tests` and the JSON answer's `tests` and
    `app`: as documented, nothing left out (a failing and a passing test, a chatty app)."""
    sid = sandbox["id"]
    tests = b"def test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2, 'no'\n"
    assert client.put(f"/v1/sandboxes/{sid}/files/test_x.py", content=tests).status_code == 201
    app = {"command": "python3 -m http.server --bind 127.0.0.1 5000", "port": 5000,
           "ready_path": "/"}
    url = f"/v1/sandboxes/{sid}/exec"
    seen: set[str] = set()
    for event in stream_events(client, "POST", url, json={"test": True, "app": app}):
        name = EVENT_DATA[event.type].__name__
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(event.data)]
        assert not errors, (event.type, errors, event.data)
        assert not _undocumented(event.data, schema, doc, event.type)
        seen.add(event.type)
    assert {"app", "ready", "report", "exit"} <= seen
    r = client.post(url, json={"test": True, "app": app})
    response = doc["paths"]["/v1/sandboxes/{sid}/exec"]["post"]["responses"]["200"]
    schema = {**response["content"]["application/json"]["schema"],
              "components": doc["components"]}
    body = r.json()
    assert body["tests"]["failed"] == 1 and body["app"]["stderr"]
    assert not [e.message for e in Draft202012Validator(schema).iter_errors(body)]
    assert not _undocumented(body, schema, doc, "body")
