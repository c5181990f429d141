"""The gateway's own logs: plain text, or (`PETRI_LOG_FORMAT=json`) one JSON object a line,
each carrying the id of the request it belongs to. That id is returned as `X-Request-Id`
(a caller's own id is kept when it is short and plain), so one failed call can be found in
the logs. An access line per request replaces uvicorn's: capabilities in a request target
(an events `?token=`, a `/preview/{token}` path) are logged as `…`, control characters
escaped."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from . import auth

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PREVIEW_TOKEN = re.compile(r"^/preview/[^/?\s\"]+")
_QUERY_TOKEN = re.compile(r"(^|&)(token=)[^&]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
PATH_CHARS = 512


def target(path: str, query: bytes) -> str:
    """The request target for a log line, its capabilities left out."""
    shown = _PREVIEW_TOKEN.sub("/preview/…", path)
    if query:
        shown += "?" + _QUERY_TOKEN.sub(r"\1\2…", query.decode("latin-1"))
    return printable(shown)


def printable(text: str) -> str:
    """`text` for one log line: control characters (a decoded `%0A` in a path) escaped, so
    a request can never forge a line of its own; long paths cut."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:PATH_CHARS])
_request_id: ContextVar[str | None] = ContextVar("petri_request_id", default=None)
access = logging.getLogger("petri.access")


def request_id() -> str | None:
    return _request_id.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or _request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for name in ("method", "path", "status", "duration_ms", "tenant", "key_id"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


def configure(fmt: str, level: str) -> None:
    """Root logging for `petri serve`: every logger (uvicorn's too) through one handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    access.setLevel(level.upper())


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's `log_config`: leave the handlers `configure` set up alone."""
    return {"version": 1, "disable_existing_loggers": False}


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestIds:
    """Gives each request an id (its `X-Request-Id`) and writes its access line when the
    response starts (as uvicorn does: a log reader never waits for a long stream to end)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        token = _request_id.set(rid)
        started = time.monotonic()
        logged = False

        async def stamp(message: Message) -> None:
            nonlocal logged
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(h[0].lower() == b"x-request-id" for h in headers):  # a preview app's
                    message["headers"] = [*headers, (b"x-request-id", rid.encode())]
                logged = True
                _access(scope, int(message["status"]), started)
            await send(message)

        try:
            await self.app(scope, receive, stamp)
        finally:
            if not logged:  # no response at all (the client left, or the app failed)
                _access(scope, 0, started)
            _request_id.reset(token)


def _access(scope: Scope, status: int, started: float) -> None:
    principal = scope.get("state", {}).get("principal")
    who = (
        {"tenant": principal.tenant, "key_id": principal.key_id}
        if isinstance(principal, auth.Principal)
        else {}
    )
    duration = round((time.monotonic() - started) * 1000, 1)
    method = printable(scope["method"])
    path = target(scope["path"], scope.get("query_string", b""))
    access.info(
        "%s %s %d %.1fms",
        method,
        path,
        status,
        duration,
        extra={"method": method, "path": path, "status": status, "duration_ms": duration, **who},
    )
