"""The OpenAPI document of API v1, built from the request models and the route table."""

from __future__ import annotations

from typing import Any

from .models import CreateSandbox, ExecBody, ServiceBody, schema

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _json_body(ref: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _responses(*codes: int, ok: str = "OK") -> dict[str, Any]:
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    out: dict[str, Any] = {}
    for code in codes:
        out[str(code)] = {"description": ok} if code < 300 else error
    # Any other failure (413 over the body limit, 503 Docker unavailable, ...) has the same shape.
    out["default"] = {**error, "description": "any other error"}
    return out


SID = {"name": "sid", "in": "path", "required": True, "schema": {"type": "string"}}
EID = {"name": "eid", "in": "path", "required": True, "schema": {"type": "string"}}
PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
SVID = {"name": "svid", "in": "path", "required": True, "schema": {"type": "string"}}
# Not an API route (no key, any method, the service's own answers): described, not listed.
PREVIEW = (
    "Each service's `preview_url` (`/preview/{token}/...`, and `{token}.{PETRI_PREVIEW_DOMAIN}` "
    "when set) proxies every method and WebSockets to the service: 404 unknown token, "
    "410 expired, 502 not answering."
)


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    for model in (CreateSandbox, ExecBody, ServiceBody):
        s = schema(model)
        schemas.update(s.pop("$defs", {}))
        schemas[model.__name__] = s
    binary = {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    }
    multipart = {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        }
    }
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "liveness", "responses": _responses(200)}},
        "/openapi.json": {"get": {"summary": "this document", "responses": _responses(200)}},
        "/readyz": {
            "get": {"summary": "readiness (Docker reachable)", "responses": _responses(200, 503)}
        },
        "/v1/sandboxes": {
            "post": {
                "summary": "create a sandbox",
                "requestBody": _json_body("CreateSandbox"),
                "responses": _responses(201, 400, 413, 415, 422, 429, 503),
            },
            "get": {
                "summary": "list sandboxes",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": _responses(200, 400),
            },
        },
        "/v1/sandboxes/{sid}": {
            "parameters": [SID],
            "get": {"summary": "one sandbox", "responses": _responses(200, 404)},
            "delete": {"summary": "delete a sandbox", "responses": _responses(204, 404, 503)},
        },
        "/v1/sandboxes/{sid}/files": {
            "parameters": [SID],
            "post": {
                "summary": "upload files (multipart, field `file`)",
                "requestBody": multipart,
                "responses": _responses(201, 400, 404, 413),
            },
            "get": {"summary": "list files", "responses": _responses(200, 404)},
        },
        "/v1/sandboxes/{sid}/files/{path}": {
            "parameters": [SID, PATH],
            "put": {
                "summary": "write one file",
                "requestBody": binary,
                "responses": _responses(201, 400, 404, 409, 413),
            },
            "get": {"summary": "read one file", "responses": _responses(200, 400, 404)},
            "delete": {"summary": "delete one file", "responses": _responses(204, 400, 404)},
        },
        "/v1/sandboxes/{sid}/upload": {
            "parameters": [SID],
            "post": {
                "summary": "upload a zip, extracted preserving folders",
                "requestBody": {
                    "content": {
                        "application/zip": binary["content"]["application/octet-stream"],
                        **multipart["content"],
                    }
                },
                "responses": _responses(201, 400, 404, 413),
            },
        },
        "/v1/sandboxes/{sid}/exec": {
            "parameters": [SID],
            "post": {
                "summary": "run a command, code or file (JSON result, 202, or SSE)",
                "requestBody": _json_body("ExecBody"),
                "responses": _responses(200, 202, 400, 404, 413, 415, 422, 503),
            },
        },
        "/v1/sandboxes/{sid}/packages": {
            "parameters": [SID],
            "get": {
                "summary": "installed dependencies: {packages: [{name, version, language}], "
                "manifest_hash}",
                "responses": _responses(200, 404),
            },
        },
        "/v1/sandboxes/{sid}/executions": {
            "parameters": [SID],
            "get": {"summary": "executions of a sandbox", "responses": _responses(200, 404)},
        },
        "/v1/sandboxes/{sid}/executions/{eid}": {
            "parameters": [SID, EID],
            "get": {"summary": "one execution", "responses": _responses(200, 404)},
        },
        "/v1/sandboxes/{sid}/executions/{eid}/events": {
            "parameters": [
                SID,
                EID,
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "get": {
                "summary": "SSE: replay after Last-Event-ID, then follow live",
                "responses": {
                    "200": {
                        "description": "event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_responses(400, 404),
                },
            },
        },
        "/v1/sandboxes/{sid}/executions/{eid}/kill": {
            "parameters": [SID, EID],
            "post": {"summary": "kill a running execution", "responses": _responses(202, 404, 409)},
        },
        "/v1/sandboxes/{sid}/services": {
            "parameters": [SID],
            "post": {
                "summary": "start a service: {id, status, preview_url, expires_at, execution_id}",
                "requestBody": _json_body("ServiceBody"),
                "responses": _responses(201, 400, 404, 413, 415, 422, 429, 503),
            },
            "get": {"summary": "services of a sandbox", "responses": _responses(200, 404)},
        },
        "/v1/sandboxes/{sid}/services/{svid}": {
            "parameters": [SID, SVID],
            "get": {"summary": "one service", "responses": _responses(200, 404)},
            "delete": {
                "summary": "stop a service and revoke its preview URL",
                "responses": _responses(204, 404),
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Petri gateway", "version": "1", "description": PREVIEW},
        "paths": paths,
        "components": {"schemas": schemas},
    }
