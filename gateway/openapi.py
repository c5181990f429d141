"""The OpenAPI 3.1 document of API v1, built from the route table's models: request bodies,
response bodies and event data are the pydantic models of `models.py`, so the document says
what the code parses and sends (tests check real responses and events against it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .models import (
    EVENT_DATA,
    Accepted,
    AuditPage,
    CreateSandbox,
    Error,
    ExecBody,
    ExecResult,
    ExecutionList,
    ExecutionOut,
    ExtractedFiles,
    FileListing,
    Health,
    Packages,
    Ready,
    SandboxOut,
    SandboxPage,
    SecretList,
    SecretWritten,
    ServiceBody,
    ServiceList,
    ServiceOut,
    WrittenFile,
    WrittenFiles,
    schema,
)

MODELS: tuple[type[BaseModel], ...] = (
    CreateSandbox,
    ExecBody,
    Error,
    SandboxOut,
    SandboxPage,
    FileListing,
    WrittenFile,
    WrittenFiles,
    ExtractedFiles,
    ExecResult,
    Accepted,
    ExecutionOut,
    ExecutionList,
    Packages,
    Health,
    Ready,
    SecretWritten,
    SecretList,
    AuditPage,
    ServiceBody,
    ServiceOut,
    ServiceList,
    *EVENT_DATA.values(),
)
MAX_ID = 2**63 - 1  # event ids and other counters are SQLite integers
REASONS = {
    400: "bad input (malformed JSON, a bad query parameter, header or path)",
    401: "no API key, or an unknown or revoked one (`Authorization: Bearer <key>`)",
    403: "an admin key is needed",
    404: "no such sandbox, execution, file or route",
    409: "conflict (e.g. the execution is not running)",
    413: "the body, file or zip is too large, or the workspace quota is full",
    415: "the body is not JSON (send `Content-Type: application/json`)",
    422: "invalid or unknown field, or a value over a limit",
    429: "over a limit (e.g. `PETRI_MAX_SANDBOXES`, `PETRI_MAX_SERVICES_PER_SANDBOX`)",
    502: "Docker answered, but not as needed (e.g. a runtime image is missing)",
    503: "Docker is unavailable, or the gateway is shutting down",
}
STREAM = """Server-Sent Events. Each event has an `id:` (1, 2, 3, ... per execution), an \
`event:` (its type) and one `data:` line holding a JSON object (schemas: components):

| event | data | meaning |
|---|---|---|
| `start` | `StartData` | first event |
| `install` | `TextData` | dependency-install output, never program output |
| `stdout` | `TextData` | program stdout, a chunk as it arrived |
| `stderr` | `TextData` | program stderr |
| `truncated` | `TruncatedData` | the output budget was reached; the tail is kept |
| `exit` | `ExitData` | terminal: the program ended |
| `error` | `ErrorDetail` | terminal: the gateway could not run it |
| `ready` | `ReadyData` | a service (serve mode) or the app under test (test mode) answers |
| `app` | `AppData` | test mode: output of the app under test, never program output |
| `report` | `ReportData` | test mode: the parsed test results |

Exactly one terminal event (`exit` or `error`) ends the stream. While nothing is sent, a \
keep-alive comment line (`: keep-alive`, no blank line after it) comes every \
`PETRI_KEEPALIVE_SECONDS`. Clients ignore event types they do not know. Reconnect with \
`Last-Event-ID` (or `?after=`) to get every later event exactly once, in order."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model.__name__)}}


def _sse() -> dict[str, Any]:
    return {"text/event-stream": {"schema": {"type": "string", "description": STREAM}}}


EXECUTION_ID = {
    "X-Execution-Id": {"description": "the execution's id", "schema": {"type": "string"}}
}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    """`ok`: status -> response; `errors`: the error statuses this route gives on purpose."""
    error = {"content": _json(Error)}
    out: dict[str, Any] = dict(ok)
    for code in errors:
        out[str(code)] = {"description": REASONS[code], **error}
    # Any other failure (413 over the body limit, 503 Docker unavailable, ...): the same shape.
    out["default"] = {"description": "any other error", **error}
    return out


def _ok(
    description: str, model: type[BaseModel] | None = None, **extra: Any
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if model is not None:
        response["content"] = _json(model)
    response.update(extra)
    return response


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": _json(model)}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _limit(default: int, most: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "description": "page size (ASCII digits)",
        "schema": {"type": "integer", "minimum": 1, "maximum": most, "default": default},
    }


# Not an API route (no key, any method, the service's own answers): described, not listed.
PREVIEW = (
    "A service's `preview_url` (`/preview/{token}/...`, and `{token}.{PETRI_PREVIEW_DOMAIN}` "
    "when set) proxies every method and WebSockets to the service: 404 unknown or revoked "
    "token, 410 expired, 502 not answering."
)
SID = _path("sid", "sandbox id")
EID = _path("eid", "execution id")
SVID = _path("svid", "service id")
PATH = _path("path", "a relative path in the workspace")
AFTER_ID = {"type": "integer", "minimum": 0, "maximum": MAX_ID}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in MODELS:
        s = schema(model)
        schemas.update(s.pop("$defs", {}))
        schemas[model.__name__] = s
    binary = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    multipart = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                    }
                },
            }
        }
    }
    page = {"description": "a dashboard file", "content": {
        media: {"schema": {"type": "string"}}
        for media in ("text/html", "text/javascript", "text/css", "image/svg+xml")
    }}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "the dashboard (HTML; not part of the JSON API)",
                "responses": _responses({"200": {**page, "description": "the dashboard page"}}),
            }
        },
        "/dashboard/{path}": {
            "parameters": [PATH],
            "get": {
                "summary": "the dashboard's scripts, styles and icon",
                "responses": _responses({"200": page}, 404),
            },
        },
        "/healthz": {
            "get": {"summary": "liveness", "responses": _responses({"200": _ok("alive", Health)})}
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": _responses(
                    {
                        "200": {
                            "description": "the OpenAPI document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    }
                ),
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness (Docker reachable)",
                "responses": _responses({"200": _ok("ready", Ready)}, 503),
            }
        },
        "/v1/sandboxes": {
            "post": {
                "summary": "create a sandbox",
                "requestBody": _json_body(CreateSandbox),
                "responses": _responses(
                    {
                        "201": _ok(
                            "the new sandbox",
                            SandboxOut,
                            headers={
                                "Location": {
                                    "description": "its URL",
                                    "schema": {"type": "string"},
                                }
                            },
                        )
                    },
                    400, 413, 415, 422, 429, 502, 503,
                ),
            },
            "get": {
                "summary": "list sandboxes, oldest id first, paged",
                "parameters": [
                    _limit(50, 500),
                    {
                        "name": "after",
                        "in": "query",
                        "description": "the `next` of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _responses({"200": _ok("a page of sandboxes", SandboxPage)}, 400),
            },
        },
        "/v1/sandboxes/{sid}": {
            "parameters": [SID],
            "get": {
                "summary": "one sandbox (renews its TTL)",
                "responses": _responses({"200": _ok("the sandbox", SandboxOut)}, 404),
            },
            "delete": {
                "summary": "delete a sandbox: its container, workspace and executions",
                "responses": _responses({"204": _ok("deleted")}, 404, 503),
            },
        },
        "/v1/sandboxes/{sid}/files": {
            "parameters": [SID],
            "post": {
                "summary": "upload files (multipart, field `file`, repeatable; a filename may "
                "carry a relative path)",
                "requestBody": {"required": True, "content": multipart},
                "responses": _responses(
                    {"201": _ok("the files written", WrittenFiles)}, 400, 404, 413
                ),
            },
            "get": {
                "summary": "list the workspace's files, recursively",
                "responses": _responses({"200": _ok("the files", FileListing)}, 404),
            },
        },
        "/v1/sandboxes/{sid}/files/{path}": {
            "parameters": [SID, PATH],
            "put": {
                "summary": "write one file (the raw body)",
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": binary},
                },
                "responses": _responses(
                    {"201": _ok("the file written", WrittenFile)}, 400, 404, 409, 413
                ),
            },
            "get": {
                "summary": "read one file",
                "responses": _responses(
                    {
                        "200": {
                            "description": "the file's bytes",
                            "content": {"application/octet-stream": binary},
                        }
                    },
                    400, 404,
                ),
            },
            "delete": {
                "summary": "delete a file (a folder with its contents)",
                "responses": _responses({"204": _ok("deleted")}, 400, 404),
            },
        },
        "/v1/sandboxes/{sid}/upload": {
            "parameters": [SID],
            "post": {
                "summary": "upload a zip, extracted preserving folders",
                "requestBody": {
                    "required": True,
                    "content": {"application/zip": binary, **multipart},
                },
                "responses": _responses(
                    {"201": _ok("the files extracted", ExtractedFiles)}, 400, 404, 413
                ),
            },
        },
        "/v1/sandboxes/{sid}/exec": {
            "parameters": [
                SID,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "description": "a repeated key returns the execution it started",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                },
            ],
            "post": {
                "summary": "run a command, code or file: the event stream (with `Accept: "
                "text/event-stream`), 202 at once (`wait: false`), or the JSON result",
                "requestBody": _json_body(ExecBody),
                "responses": _responses(
                    {
                        "200": {
                            "description": "the run's events (`Accept: text/event-stream`), "
                            "or its result once it ended",
                            "headers": EXECUTION_ID,
                            "content": {**_sse(), **_json(ExecResult)},
                        },
                        "202": _ok("started (`wait: false`)", Accepted, headers=EXECUTION_ID),
                    },
                    400, 404, 413, 415, 422, 503,
                ),
            },
        },
        "/v1/sandboxes/{sid}/packages": {
            "parameters": [SID],
            "get": {
                "summary": "installed dependencies (bill of materials)",
                "responses": _responses({"200": _ok("the packages", Packages)}, 404),
            },
        },
        "/v1/sandboxes/{sid}/executions": {
            "parameters": [SID],
            "get": {
                "summary": "executions of a sandbox, newest first",
                "parameters": [_limit(100, 1000)],
                "responses": _responses(
                    {"200": _ok("the executions", ExecutionList)}, 400, 404
                ),
            },
        },
        "/v1/sandboxes/{sid}/executions/{eid}": {
            "parameters": [SID, EID],
            "get": {
                "summary": "one execution: status, exit code, timings",
                "responses": _responses({"200": _ok("the execution", ExecutionOut)}, 404),
            },
        },
        "/v1/sandboxes/{sid}/executions/{eid}/events": {
            "parameters": [
                SID,
                EID,
                {
                    "name": "after",
                    "in": "query",
                    "description": "replay events after this id (ASCII digits)",
                    "schema": AFTER_ID,
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "description": "as `after`; wins over it",
                    "schema": AFTER_ID,
                },
            ],
            "get": {
                "summary": "SSE: replay after `Last-Event-ID` (or `?after=`), then follow live",
                "responses": _responses(
                    {
                        "200": {
                            "description": "the execution's events",
                            "headers": EXECUTION_ID,
                            "content": _sse(),
                        }
                    },
                    400, 404,
                ),
            },
        },
        "/v1/sandboxes/{sid}/executions/{eid}/kill": {
            "parameters": [SID, EID],
            "post": {
                "summary": "kill a running execution (SIGKILL to its process group)",
                "responses": _responses(
                    {"202": _ok("killed: the execution record", ExecutionOut)}, 404, 409
                ),
            },
        },
    }
    paths.update(
        {
            "/v1/sandboxes/{sid}/services": {
                "parameters": [SID],
                "post": {
                    "summary": "start a service (serve mode): 201 at once, `status` "
                    "`starting`; its output is the event stream of `execution_id`",
                    "requestBody": _json_body(ServiceBody),
                    "responses": _responses(
                        {
                            "201": _ok(
                                "the new service, with its preview URL",
                                ServiceOut,
                                headers={
                                    "Location": {
                                        "description": "its URL",
                                        "schema": {"type": "string"},
                                    },
                                    **EXECUTION_ID,
                                },
                            )
                        },
                        400, 404, 413, 415, 422, 429, 503,
                    ),
                },
                "get": {
                    "summary": "services of a sandbox, oldest first",
                    "responses": _responses({"200": _ok("the services", ServiceList)}, 404),
                },
            },
            "/v1/sandboxes/{sid}/services/{svid}": {
                "parameters": [SID, SVID],
                "get": {
                    "summary": "one service",
                    "responses": _responses({"200": _ok("the service", ServiceOut)}, 404),
                },
                "delete": {
                    "summary": "stop a service (its processes end) and revoke its preview URL",
                    "responses": _responses({"204": _ok("stopped")}, 404),
                },
            },
        }
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Petri gateway",
            "version": "1",
            "description": "Runs untrusted code in hardened containers and streams its output "
            "as Server-Sent Events. Errors are `{\"error\": {\"code\", \"message\"}}`. "
            + PREVIEW,
        },
        "paths": _public({**paths, **_teams_paths()}),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`petri keys create --tenant NAME`; not needed on a "
                    "loopback bind while no key exists",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def _public(paths: dict[str, Any]) -> dict[str, Any]:
    """Probes need no key (auth.PUBLIC_PATHS)."""
    for path in ("/healthz", "/readyz"):
        for op in paths[path].values():
            op["security"] = []
    return paths


NAME = _path("name", "a secret's name (A-Z, a-z, 0-9, `_`, `.`, `-`)")
AFTER_SEQ = {
    "name": "after",
    "in": "query",
    "description": "records after this seq (ASCII digits)",
    "schema": AFTER_ID,
}
AUDIT_STREAM = """Server-Sent Events: one `audit` event per ledger record (`id:` its seq, \
`data:` the record as `AuditRecord`), the existing ones after `Last-Event-ID` (or `?after=`) \
first, then each new one as it is appended. Keep-alive comment lines while nothing happens."""


# One event of the stream, as SSE parsers (and schemathesis) read it: its fields as strings.
AUDIT_EVENT = {
    "type": "object",
    "description": AUDIT_STREAM,
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"const": "audit"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["id", "event", "data"],
}


MCP_MESSAGE = {
    "type": "object",
    "description": "a JSON-RPC 2.0 message (MCP: initialize, tools/list, tools/call, ...)",
    "properties": {"jsonrpc": {"const": "2.0"}},
    "required": ["jsonrpc"],
}


def _teams_paths() -> dict[str, Any]:
    """Secrets, the audit ledger, metrics (DESIGN §11)."""
    return {
        "/v1/secrets": {
            "get": {
                "summary": "names of the tenant's secrets (every tenant's for an admin key)",
                "responses": _responses({"200": _ok("the names", SecretList)}, 401),
            }
        },
        "/v1/secrets/{name}": {
            "parameters": [NAME],
            "put": {
                "summary": "store a secret (encrypted at rest; never returned)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "value": {"type": "string", "minLength": 4, "maxLength": 8192}
                                },
                                "required": ["value"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": _responses(
                    {"201": _ok("stored", SecretWritten), "200": _ok("replaced", SecretWritten)},
                    400, 401, 415, 422,
                ),
            },
            "delete": {
                "summary": "delete a secret",
                "responses": _responses({"204": _ok("deleted")}, 401, 404),
            },
        },
        "/v1/audit": {
            "get": {
                "summary": "the hash-chained audit ledger, paged (the tenant's records; all for "
                "an admin key)",
                "parameters": [AFTER_SEQ, _limit(100, 1000)],
                "responses": _responses({"200": _ok("a page of records", AuditPage)}, 400, 401),
            }
        },
        "/v1/audit/events": {
            "get": {
                "summary": "SSE: the ledger's records after `Last-Event-ID` (or `?after=`), "
                "then live",
                "parameters": [
                    AFTER_SEQ,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "as `after`; wins over it",
                        "schema": AFTER_ID,
                    },
                ],
                "responses": _responses(
                    {
                        "200": {
                            "description": "the records",
                            "content": {"text/event-stream": {"schema": AUDIT_EVENT}},
                        }
                    },
                    400, 401,
                ),
            }
        },
        "/mcp": {
            "post": {
                "summary": "the MCP tools over streamable HTTP (stateless; JSON-RPC 2.0 "
                "messages, see docs/mcp.md). Not this API's JSON: its errors are JSON-RPC "
                "error objects, or plain text for a refused Host/Origin (421/403)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": MCP_MESSAGE}},
                },
                "responses": {
                    "200": {
                        "description": "the JSON-RPC answer, as JSON or as an SSE stream of "
                        "progress notifications ending with it",
                        "content": {
                            "application/json": {"schema": MCP_MESSAGE},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    "202": {"description": "a notification or response was accepted"},
                    "default": {
                        "description": "a transport error: a JSON-RPC error object (400, "
                        "406, 415) or plain text (403 Origin, 421 Host), some without a "
                        "Content-Type",
                        "content": {
                            "application/json": {"schema": MCP_MESSAGE},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (admin keys)",
                "responses": _responses(
                    {
                        "200": {
                            "description": "the Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                    401, 403,
                ),
            }
        },
    }
