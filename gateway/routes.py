"""HTTP API v1: the one importer of starlette and sse-starlette.

Handlers parse and validate, call the domain (`Sandboxes`) and shape responses. Errors are
mapped to `{"error": {"code", "message"}}` in one place: `EXCEPTION_HANDLERS` (one handler per
exception class) and `Internal` (anything else: one logged 500).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, cast

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import auth, files, mcp, openapi
from .audit import RequestRecorder
from .backend import Backend
from .config import Settings
from .errors import (
    BadRequest,
    Forbidden,
    Invalid,
    NotFound,
    PetriError,
    TooLarge,
    UnsupportedMediaType,
)
from .events import Event, keepalive
from .hosts import HostCheck
from .logs import RequestIds, printable, target
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import RequestMetrics
from .models import CreateSandbox, ExecBody, Service, ServiceBody, iso, parse
from .preview import PreviewRouter, RedactTokens
from .runs import Run
from .sandboxes import Sandboxes
from .service import open_gateway
from .services import Services, open_services
from .teams import Teams
from .vault import check_name

log = logging.getLogger("petri.routes")
MAX_JSON_DEPTH = 32
UPLOAD_PATHS = ("/files", "/upload")
FORM_TYPE = "application/x-www-form-urlencoded"


# --- errors, in one place: one handler per exception class, one catch-all for the rest ------

INTERNAL_MESSAGE = "the gateway failed; the error is logged under this response's X-Request-Id"
_HTTP_CODES = {404: "route_not_found", 405: "method_not_allowed", 400: "bad_request"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


async def _petri_error(request: Request, exc: Exception) -> Response:
    """Every error the gateway raises on purpose: its own status, code and headers."""
    error = cast(PetriError, exc)
    return _error(error.status, error.code, error.message, error.headers() or None)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own: no such route, no such method, a malformed multipart body."""
    error = cast(HTTPException, exc)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    return _error(error.status_code, code, str(error.detail), dict(error.headers or {}))


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    return _error(400, "client_disconnected", "the client went away mid-request")


async def _outermost_error(request: Request, exc: Exception) -> Response:
    """Starlette's ServerErrorMiddleware, outside every middleware, for a failure in one of the
    outer middlewares themselves (`Internal` answers everything inside CORS). It re-raises
    after answering and uvicorn logs the traceback, so this one does not log."""
    return _error(500, "internal_error", INTERNAL_MESSAGE)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    PetriError: _petri_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_disconnected,
    Exception: _outermost_error,
}


class Internal:
    """Any other exception (a bug): logged once, with the request id `logs.RequestIds` set,
    and answered 500 `{"error": {"code": "internal_error", ...}}` with no traceback. It sits just
    inside CORS, so a browser of an allowed origin can read that answer, and inside the
    request id, so the answer carries `X-Request-Id`. A failure after the response started
    (a stream) can only be logged; the connection is then closed mid-response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception(
                "unhandled error on %s %s",
                printable(scope["method"]),
                target(scope["path"], b""),
            )
            if not started:
                await _error(500, "internal_error", INTERNAL_MESSAGE)(scope, receive, send)


# --- request parsing --------------------------------------------------------------------------


async def _json(request: Request) -> Any:
    """The body as JSON. Accepted: `application/json`, any `application/...+json`, and
    `application/x-www-form-urlencoded` holding JSON (what `curl -d '{...}'` sends), the last
    not from a web page of a foreign origin (browsers send it cross-site without a CORS
    preflight). Anything else is 415, an empty body without a Content-Type is `{}`."""
    header = request.headers.get("content-type")
    if header is None:
        raw = await request.body()
        if raw.strip():
            raise UnsupportedMediaType("send JSON with Content-Type: application/json")
        return {}
    ctype = header.split(";")[0].strip().lower()
    json_type = ctype == "application/json" or (
        ctype.startswith("application/") and ctype.endswith("+json")
    )
    if not json_type and ctype != FORM_TYPE:
        raise UnsupportedMediaType(
            f"send JSON (Content-Type: application/json), not {ctype[:60] or 'nothing'}"
        )
    if ctype == FORM_TYPE and _foreign_origin(request):
        raise UnsupportedMediaType(
            "a form post from a web page of another origin: send application/json",
            code="cross_origin_form",
        )
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8", code="invalid_utf8") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="malformed_json",
        ) from None
    except RecursionError:
        raise BadRequest("JSON nested too deeply", code="json_too_deep") from None
    except ValueError as exc:  # an integer of more than 4300 digits, NaN, Infinity
        raise BadRequest(f"malformed JSON: {str(exc)[:120]}", code="malformed_json") from None
    _check_depth(data, 0)
    return data


def _foreign_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not a browser (curl, SDKs), or a same-origin GET
        return False
    settings: Settings = request.app.state.settings
    allowed = {o.strip() for o in settings.cors_origins.split(",") if o.strip()}
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return not ("*" in allowed or origin in allowed or origin == own)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


# Event ids and other counters are SQLite integers: a larger number is refused, never clamped.
MAX_INT = 2**63 - 1
_ASCII_INT = re.compile(r"[0-9]{1,19}")


def _strict_int(raw: str, low: int, high: int) -> int | None:
    """`raw` as an integer in low..high, or None. ASCII digits only: `str.isdigit` also takes
    superscripts, and `int` other scripts' digits, signs, spaces and underscores."""
    if _ASCII_INT.fullmatch(raw) is None:
        return None
    value = int(raw)
    return value if low <= value <= high else None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = _strict_int(raw, low, high)
    if value is None:
        raise BadRequest(
            f"query parameter {name} must be an integer in {low}..{high}", code="invalid_query"
        )
    return value


def _int_header(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = _strict_int(raw, low, high)
    if value is None:
        raise BadRequest(f"{name} must be an integer in {low}..{high}", code="invalid_header")
    return value


def _gateway(request: Request) -> Sandboxes:
    sandboxes: Sandboxes = request.app.state.sandboxes
    return sandboxes


# --- sandboxes --------------------------------------------------------------------------------


async def create_sandbox(request: Request) -> Response:
    body = parse(CreateSandbox, await _json(request))
    sandbox = await _gateway(request).create(body)
    return JSONResponse(sandbox.public(), 201, headers={"Location": f"/v1/sandboxes/{sandbox.id}"})


async def list_sandboxes(request: Request) -> Response:
    limit = _int_param(request, "limit", 50, 1, 500)
    after = request.query_params.get("after", "")[:64]
    found = _gateway(request).page(limit=limit + 1, after=after)
    page = found[:limit]
    nxt = page[-1].id if len(found) > limit else None
    return JSONResponse({"sandboxes": [s.public() for s in page], "next": nxt})


async def get_sandbox(request: Request) -> Response:
    return JSONResponse(_gateway(request).get(request.path_params["sid"]).public())


async def delete_sandbox(request: Request) -> Response:
    await _gateway(request).delete(request.path_params["sid"])
    return Response(status_code=204)


# --- files ------------------------------------------------------------------------------------


async def upload_files(request: Request) -> Response:
    sandboxes = _gateway(request)
    workspace = sandboxes.workspace(request.path_params["sid"])
    limit = sandboxes.settings.max_upload_bytes
    async with request.form(max_files=10000, max_fields=100, max_part_size=1024 * 1024) as form:
        uploads = [v for k, v in form.multi_items() if k == "file"]
        if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
            raise BadRequest(
                "send multipart/form-data with one or more 'file' parts", code="no_files"
            )
        parts = [(u.filename or "", u.file) for u in uploads if isinstance(u, UploadFile)]
        written = await files.upload(workspace, parts, limit)
    return JSONResponse({"files": written}, 201)


async def put_file(request: Request) -> Response:
    sandboxes = _gateway(request)
    workspace = sandboxes.workspace(request.path_params["sid"])
    path = request.path_params["path"]
    limit = sandboxes.settings.max_upload_bytes
    size = await files.put(workspace, path, request.stream(), limit)
    return JSONResponse({"path": path, "size": size}, 201)


async def list_files(request: Request) -> Response:
    workspace = _gateway(request).workspace(request.path_params["sid"])
    found = await files.listing(workspace)
    body: dict[str, Any] = {
        "files": [
            {"path": f.path, "size": f.size, "modified_at": iso(f.modified_at)}
            for f in found.files
        ],
        "truncated": bool(found.cut),
    }
    if found.cut:
        body["note"] = f"part of the workspace is not listed: {found.cut}"
    return JSONResponse(body)


async def get_file(request: Request) -> Response:
    workspace = _gateway(request).workspace(request.path_params["sid"])
    download = await files.download(workspace, request.path_params["path"])
    if download.chunks is None:
        return Response(download.body, media_type="application/octet-stream")
    # No Content-Length: a file that shrinks while it is sent still ends a well-formed
    # (chunked) response; it never sends more than the size seen at open.
    return StreamingResponse(download.chunks, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    workspace = _gateway(request).workspace(request.path_params["sid"])
    await files.delete(workspace, request.path_params["path"])
    return Response(status_code=204)


async def upload_zip(request: Request) -> Response:
    sandboxes = _gateway(request)
    workspace = sandboxes.workspace(request.path_params["sid"])
    s = sandboxes.settings
    limits = {"max_members": s.zip_max_members, "max_bytes": s.zip_max_bytes}
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequest("send the zip as multipart field 'file'", code="no_files")
            written = await files.extract_zip(workspace, upload.file, **limits)
    else:
        with await files.spool(request.stream(), s.max_upload_bytes) as body:
            written = await files.extract_zip(workspace, body, **limits)
    return JSONResponse({"files": written}, 201)


# --- executions -------------------------------------------------------------------------------


async def exec_(request: Request) -> Response:
    sandboxes = _gateway(request)
    body = parse(ExecBody, await _json(request))
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 200:
        raise BadRequest("Idempotency-Key must hold 1 to 200 characters", code="invalid_header")
    run = await sandboxes.exec(request.path_params["sid"], body, key)
    headers = {"X-Execution-Id": run.execution.id}
    if "text/event-stream" in request.headers.get("accept", ""):
        return _sse(request, _follow(sandboxes, run, 0), headers)
    if not body.wait:
        return JSONResponse(
            {"execution_id": run.execution.id, "events_url": _events_url(sandboxes, run)},
            202,
            headers=headers,
        )
    await run.log.done.wait()
    return JSONResponse(await sandboxes.result(run), headers=headers)


def _events_url(sandboxes: Sandboxes, run: Run) -> str:
    """The run's stream, with a short-lived token that reads it alone (`EventSource` cannot
    send an Authorization header)."""
    e = run.execution
    seconds = sandboxes.settings.events_token_seconds
    token = sandboxes.teams.tokens.issue(auth.current(), e.id, seconds)
    return f"/v1/sandboxes/{e.sandbox_id}/executions/{e.id}/events?token={token}"


def _follow(sandboxes: Sandboxes, run: Run, after: int) -> AsyncIterator[Event]:
    return sandboxes.follow(run.execution.sandbox_id, run.execution.id, after)


class _KeepAlive(ServerSentEvent):
    """sse-starlette's ping, encoded as `events.keepalive()` (a comment line with no blank line
    after it). Its own ping ends with a blank line, which httpx-sse turns into an event."""

    def encode(self) -> bytes:
        return keepalive()


def _sse(request: Request, events: AsyncIterator[Event], headers: dict[str, str]) -> Response:
    metrics = _gateway(request).teams.metrics

    async def body() -> AsyncIterator[bytes]:
        async for event in events:
            chunk = event.sse()
            metrics.streamed(len(chunk))
            yield chunk  # one whole event per send: a keep-alive lands between events

    settings: Settings = _gateway(request).settings
    return EventSourceResponse(
        body(),
        ping=settings.keepalive_seconds,
        ping_message_factory=_KeepAlive,
        sep="\n",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def list_packages(request: Request) -> Response:
    return JSONResponse(_gateway(request).packages(request.path_params["sid"]))


async def list_executions(request: Request) -> Response:
    limit = _int_param(request, "limit", 100, 1, 1000)
    found = _gateway(request).executions(request.path_params["sid"], limit)
    return JSONResponse({"executions": [e.public() for e in found]})


async def get_execution(request: Request) -> Response:
    execution = _gateway(request).execution(request.path_params["sid"], request.path_params["eid"])
    return JSONResponse(execution.public())


async def execution_events(request: Request) -> Response:
    sandboxes = _gateway(request)
    sid, eid = request.path_params["sid"], request.path_params["eid"]
    after = _int_header(request, "Last-Event-ID", 0, MAX_INT)
    if after is None:
        after = _int_param(request, "after", 0, 0, MAX_INT)
    events = sandboxes.follow(sid, eid, after)
    return _sse(request, events, {"X-Execution-Id": eid})


async def kill_execution(request: Request) -> Response:
    execution = await _gateway(request).kill(request.path_params["sid"], request.path_params["eid"])
    return JSONResponse(execution.public(), 202)


# --- services (serve mode) --------------------------------------------------------------------


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _service(request: Request, service: Service) -> dict[str, Any]:
    url, host_url = _services(request).preview_urls(service, str(request.base_url))
    return service.public(url, host_url)


async def create_service(request: Request) -> Response:
    body = parse(ServiceBody, await _json(request))
    service = _services(request).create(request.path_params["sid"], body)
    headers = {
        "Location": f"/v1/sandboxes/{service.sandbox_id}/services/{service.id}",
        "X-Execution-Id": service.execution_id,
    }
    return JSONResponse(_service(request, service), 201, headers=headers)


async def list_services(request: Request) -> Response:
    found = _services(request).in_sandbox(request.path_params["sid"])
    return JSONResponse({"services": [_service(request, s) for s in found]})


async def get_service(request: Request) -> Response:
    service = _services(request).get(request.path_params["sid"], request.path_params["svid"])
    return JSONResponse(_service(request, service))


async def delete_service(request: Request) -> Response:
    await _services(request).stop(request.path_params["sid"], request.path_params["svid"])
    return Response(status_code=204)


# --- health -----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    if await _gateway(request).backend.ping():
        return JSONResponse({"status": "ready", "docker": "ok"})
    return _error(503, "docker_unavailable", "Docker is not reachable")


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.document())


# --- teams (DESIGN §11): secrets, the audit ledger, metrics ----------------------------------


def _teams(request: Request) -> Teams:
    return _gateway(request).teams


async def put_secret(request: Request) -> Response:
    name = check_name(request.path_params["name"])
    body = await _json(request)
    if not isinstance(body, dict) or set(body) != {"value"}:
        raise Invalid('send {"value": "..."} and nothing else', code="invalid_body")
    teams, principal = _teams(request), auth.current()
    with teams.registry.transaction():
        created = teams.vault.put(principal.tenant, name, body["value"])
        teams.ledger.append("secret.put", name, {"name": name, "created": created})
    return JSONResponse({"name": name, "created": created}, 201 if created else 200)


async def list_secrets(request: Request) -> Response:
    principal = auth.current()
    found = _teams(request).vault.names(None if principal.admin else principal.tenant)
    for entry in found:
        entry["created_at"] = iso(entry["created_at"])
        entry["updated_at"] = iso(entry["updated_at"])
    return JSONResponse({"secrets": found})


async def delete_secret(request: Request) -> Response:
    name = check_name(request.path_params["name"])
    teams = _teams(request)
    with teams.registry.transaction():
        teams.vault.delete(auth.current().tenant, name)
        teams.ledger.append("secret.delete", name, {"name": name})
    return Response(status_code=204)


def _after(request: Request) -> int:
    after = _int_header(request, "Last-Event-ID", 0, MAX_INT)
    return after if after is not None else _int_param(request, "after", 0, 0, MAX_INT)


async def list_audit(request: Request) -> Response:
    limit = _int_param(request, "limit", 100, 1, 1000)
    records = _teams(request).ledger.page(auth.current(), after=_after(request), limit=limit)
    nxt = records[-1]["seq"] if len(records) == limit else None
    return JSONResponse({"records": records, "next": nxt})


async def audit_events(request: Request) -> Response:
    """The ledger as SSE: `id` is the record's seq, so `Last-Event-ID` resumes after it."""
    ledger, principal = _teams(request).ledger, auth.current()
    after = _after(request)  # a bad `after` is a 400, before the stream starts

    async def records() -> AsyncIterator[Event]:
        async for record in ledger.follow(principal, after):
            yield Event(record["seq"], "audit", record)

    return _sse(request, records(), {})


async def metrics(request: Request) -> Response:
    if not auth.current().admin:
        raise Forbidden("metrics are for admin keys", code="admin_only")
    return Response(_teams(request).metrics.render(), media_type=METRICS_TYPE)


# --- the dashboard (DESIGN §12): static files shipped in the package, no build step -----------

DASHBOARD_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Scripts, styles and images from this origin only (no inline script, no eval, no CDN), requests
# to this origin only, and no framing: text a program prints can never run as script here.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def _dashboard_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, media type, ETag) of every file of gateway/dashboard/, read once."""
    found = {}
    for entry in (importlib.resources.files(__package__) / "dashboard").iterdir():
        media = DASHBOARD_TYPES.get("." + entry.name.rpartition(".")[2])
        if media is not None and entry.is_file():
            body = entry.read_bytes()
            found[entry.name] = (body, media, f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return found


async def dashboard(request: Request) -> Response:
    name = request.path_params.get("path", "index.html")
    found = _dashboard_files().get(name)
    if found is None:
        raise NotFound(f"no dashboard file {name[:64]!r}", code="asset_not_found")
    body, media, etag = found
    headers = {
        "Content-Security-Policy": DASHBOARD_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "ETag": etag,
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)


# --- body size limits, before any handler reads ---------------------------------------------


class BodyLimit:
    """Refuses bodies over the limit as they stream in (413), whatever Content-Length says."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        uploads = any(f"{p}" in path for p in UPLOAD_PATHS)
        limit = self.settings.max_upload_bytes if uploads else self.settings.max_body_bytes
        if uploads:
            limit += 1024 * 1024  # multipart framing
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > limit:
            await _error(413, "too_large", f"the body is larger than {limit} bytes")(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(f"the body is larger than {limit} bytes")
            return message

        await self.app(scope, limited, send)


ROUTES = [
    Route("/", dashboard),
    Route("/dashboard/{path}", dashboard),
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/openapi.json", openapi_json),
    Route("/v1/sandboxes", create_sandbox, methods=["POST"]),
    Route("/v1/sandboxes", list_sandboxes, methods=["GET"]),
    Route("/v1/sandboxes/{sid}", get_sandbox, methods=["GET"]),
    Route("/v1/sandboxes/{sid}", delete_sandbox, methods=["DELETE"]),
    Route("/v1/sandboxes/{sid}/files", upload_files, methods=["POST"]),
    Route("/v1/sandboxes/{sid}/files", list_files, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/files/{path:path}", put_file, methods=["PUT"]),
    Route("/v1/sandboxes/{sid}/files/{path:path}", get_file, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/files/{path:path}", delete_file, methods=["DELETE"]),
    Route("/v1/sandboxes/{sid}/upload", upload_zip, methods=["POST"]),
    Route("/v1/sandboxes/{sid}/exec", exec_, methods=["POST"]),
    Route("/v1/sandboxes/{sid}/packages", list_packages, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/executions", list_executions, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/executions/{eid}", get_execution, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/executions/{eid}/events", execution_events, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/executions/{eid}/kill", kill_execution, methods=["POST"]),
    Route("/v1/sandboxes/{sid}/services", create_service, methods=["POST"]),
    Route("/v1/sandboxes/{sid}/services", list_services, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/services/{svid}", get_service, methods=["GET"]),
    Route("/v1/sandboxes/{sid}/services/{svid}", delete_service, methods=["DELETE"]),
    Route("/v1/secrets", list_secrets, methods=["GET"]),
    Route("/v1/secrets/{name}", put_secret, methods=["PUT"]),
    Route("/v1/secrets/{name}", delete_secret, methods=["DELETE"]),
    Route("/v1/audit", list_audit, methods=["GET"]),
    Route("/v1/audit/events", audit_events, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Starlette:
    """The gateway's ASGI app; over Docker unless another `backend` is given (tests)."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            open_gateway(settings, backend) as sandboxes,
            open_services(sandboxes) as services,
            mcp_sessions(),
        ):
            app.state.sandboxes = sandboxes
            app.state.teams = sandboxes.teams
            app.state.services = services
            yield

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    # /mcp: the MCP tools, calling this app's own API in-process (auth applies as to any call)
    hosts = [h.strip() for h in settings.mcp_allowed_hosts.split(",") if h.strip()]
    mcp_endpoint, mcp_sessions = mcp.http_app(lambda: app, hosts)
    app.router.routes.append(Route("/mcp", mcp_endpoint))
    # Outermost last: request id, metrics, CORS (a preflight needs no key), the catch-all for
    # bugs, the gate (who is calling), the fallback audit record, the body limit, the routes.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(
        RequestRecorder, ledger=lambda scope: getattr(_state(scope, "teams"), "ledger", None)
    )
    app.add_middleware(auth.Gate, authority=_authority)
    app.add_middleware(Internal)  # inside CORS: a 500 carries the CORS headers too
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Execution-Id", "X-Request-Id"])
    app.add_middleware(
        RequestMetrics, metrics=lambda scope: getattr(_state(scope, "teams"), "metrics", None)
    )
    # Preview traffic (`/preview/…`, `{token}.{PETRI_PREVIEW_DOMAIN}`) goes to its service
    # with no body limit, no CORS of the API's and no key (its token is the capability).
    app.add_middleware(
        PreviewRouter, services=lambda: app.state.services, domain=settings.preview_domain
    )
    # An open gateway (loopback, no key) answers its own host names only (DNS rebinding).
    app.add_middleware(HostCheck, settings=settings, open_gateway=_open)
    app.add_middleware(RequestIds)  # outermost: every request has an id and an access line
    for name in ("uvicorn.access", "uvicorn.error"):
        if not any(isinstance(f, RedactTokens) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(RedactTokens())
    app.state.settings = settings
    _dashboard_files()  # read once here, never on the event loop of a request
    return app


def _state(scope: Scope, name: str) -> Any:
    return getattr(scope["app"].state, name, None)


def _open(scope: Scope) -> bool:
    teams: Teams | None = _state(scope, "teams")
    return teams is None or (teams.loopback and not teams.keys.exist())


def _authority(scope: Scope) -> tuple[auth.Keys, auth.Tokens, bool]:
    teams: Teams = _state(scope, "teams")
    return teams.keys, teams.tokens, teams.loopback
