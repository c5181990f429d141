"""The preview proxy: `/preview/{token}/…`, and `{token}.{PETRI_PREVIEW_DOMAIN}` when set, to a
sandbox's service: every method, bodies streamed both ways, WebSockets too.

Plain ASGI (the API's framework is not needed here). `routes` puts it in front of the API's
middleware: no body limit, no CORS, errors in the API's JSON shape. The request's path, query
and headers are kept; hop-by-hop headers are dropped both ways, and the caller's
`Authorization` never reaches the app (a preview URL is its own credential). Unknown or
revoked token 404, expired 410, a service that does not answer 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .errors import PetriError, UpstreamError
from .services import TOKEN, Services
from .upstream import Headers, Refused, Upstream, UpstreamResponse, UpstreamSocket

log = logging.getLogger("petri.preview")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = b"/preview/"
SMALL_BODY = 256 * 1024  # relayed without watching for the caller's disconnect
READ_AHEAD = 16  # request body messages taken from the server ahead of the service
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never sent to the app: the caller's credentials, and what the proxy sets itself.
DROPPED = HOP_BY_HOP | {
    b"authorization",
    b"expect",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-prefix",
}
WS_HANDSHAKE = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
# The gateway's server adds its own `date`; the app's would be a second one.
RESPONSE_DROPPED = HOP_BY_HOP | {b"date"}
# Close codes an endpoint may send (RFC 6455 7.4); others become 1000 (or 1011).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})


_TOKEN_IN_PATH = re.compile(r"/preview/[^/?\s\"]+")


class RedactTokens(logging.Filter):
    """Keeps preview tokens (capabilities) out of the server's logs: uvicorn logs each
    request's path, `/preview/{token}/…`, and that line may end up in a log store."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_PATH.sub("/preview/…", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


class _ClientGone(Exception):
    """The caller disconnected while its request body was being forwarded."""


@dataclass(frozen=True, slots=True)
class _Route:
    token: str
    target: bytes  # the request target the app sees: path (as sent) and query
    prefix: bytes  # what the proxy took off the path (`/preview/{token}`), or b""
    redirect: bool = False  # `/preview/{token}` without the slash


class PreviewRouter:
    """ASGI middleware: preview requests go to their service, everything else to `app`."""

    def __init__(self, app: ASGIApp, services: Callable[[], Services], domain: str = "") -> None:
        self.app = app
        self.services = services
        self.domain = domain.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] in ("http", "websocket") else None
        if route is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and (await receive())["type"] != "websocket.connect":
            return
        if route.redirect:
            location = route.prefix + b"/" + _query(scope)
            await _answer(scope, send, 307, {"location": location.decode("latin-1")}, b"")
            return
        try:
            service, upstream = self.services().resolve(route.token)
        except PetriError as exc:
            await _error(scope, send, exc.status, exc.code, exc.message)
            return
        if scope["type"] == "http":
            await _proxy_http(upstream, route, scope, receive, send)
        else:
            await _proxy_websocket(upstream, route, scope, receive, send, service.port)

    def _route(self, scope: Scope) -> _Route | None:
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if self.domain:
            host = _header(scope, b"host").decode("latin-1").lower().rsplit(":", 1)[0]
            label, dot, domain = host.partition(".")
            # Only a token's shape: `api.{domain}` may well be the gateway's own name.
            if dot and domain == self.domain and TOKEN.match(label):
                return _Route(label, path + _query(scope), b"")
        if not (path.startswith(PREFIX) or path == PREFIX[:-1]):
            return None
        token, slash, rest = path[len(PREFIX) :].partition(b"/")
        text = token.decode("ascii", "replace")
        if not slash and scope["type"] == "websocket":
            return _Route(text, b"/" + _query(scope), PREFIX + token)
        if not slash:
            return _Route(text, b"", PREFIX + token, redirect=bool(token))
        return _Route(text, b"/" + rest + _query(scope), PREFIX + token)


# --- HTTP -------------------------------------------------------------------------------------


async def _proxy_http(
    upstream: Upstream, route: _Route, scope: Scope, receive: Receive, send: Send
) -> None:
    chunked = bool(_header(scope, b"transfer-encoding"))
    # A chunked body is sent on chunked: a Content-Length beside it would not be its length.
    headers = _forwarded(scope, route, DROPPED | {b"content-length"} if chunked else DROPPED)
    length = _header(scope, b"content-length")
    has_body = chunked or length not in (b"", b"0")
    body_done = not has_body

    # The body is taken from the server eagerly, in a task of its own, up to READ_AHEAD
    # messages ahead of what the service has been sent: uvicorn stops reading a request body
    # past 64 KiB until the app asks for more, so asking only between writes to the service
    # would send the body in 64 KiB steps, a round trip each.
    ahead: asyncio.Queue[Message] = asyncio.Queue(READ_AHEAD)

    async def take() -> None:
        try:
            while True:
                message = await receive()
                await ahead.put(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
        except Exception:  # the server's receive failed: the caller is as good as gone
            await ahead.put({"type": "http.disconnect"})

    async def body() -> AsyncIterator[bytes]:
        nonlocal body_done
        while not body_done:
            message = await ahead.get()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            body_done = not message.get("more_body", False)
            if chunk := message.get("body", b""):
                yield chunk

    taker = asyncio.ensure_future(take()) if has_body else None
    try:
        response = await upstream.request(
            scope["method"], route.target, headers, body() if has_body else None
        )
    except _ClientGone:
        return
    except UpstreamError as exc:
        await _error(scope, send, 502, "service_unavailable", str(exc))
        return
    finally:
        if taker is not None:
            taker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await taker
    if response.status < 200:  # a 1xx as the final answer: not HTTP anyone can relay
        await response.aclose()
        message = f"the service answered {response.status} as its final response"
        await _error(scope, send, 502, "service_unavailable", message)
        return
    try:
        await _relay_response(response, receive, send, watch=body_done)
    finally:
        await response.aclose()


async def _relay_response(
    response: UpstreamResponse, receive: Receive, send: Send, *, watch: bool
) -> None:
    """Stream the response to the caller until it ends or the caller goes away (a service
    may stream forever). A response the service breaks off is left incomplete, as it was."""

    async def pump() -> None:
        async for chunk in response.body():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    dropped = RESPONSE_DROPPED
    if any(k.lower() == b"transfer-encoding" for k, _ in response.headers):
        dropped = dropped | {b"content-length"}  # the decoded body's length is not it
    headers = _end_to_end(response.headers, dropped)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    length = next((v for k, v in headers if k.lower() == b"content-length"), b"")
    if length.isdigit() and int(length) <= SMALL_BODY:  # soon done: no watcher needed
        with contextlib.suppress(UpstreamError):
            await pump()
        return
    pumping = asyncio.ensure_future(pump())
    tasks: set[asyncio.Future[None]] = {pumping}
    if watch:
        tasks.add(asyncio.ensure_future(gone()))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, UpstreamError, OSError):
                await task


# --- WebSockets -------------------------------------------------------------------------------


async def _proxy_websocket(
    upstream: Upstream, route: _Route, scope: Scope, receive: Receive, send: Send, port: int
) -> None:
    offered = _header(scope, b"sec-websocket-protocol").decode("latin-1")
    protocols = [p.strip() for p in offered.split(",") if p.strip()]
    host = _header(scope, b"host").decode("latin-1") or f"localhost:{port}"
    headers = _forwarded(scope, route, DROPPED | WS_HANDSHAKE)
    try:
        found = await upstream.websocket(route.target, host, headers, protocols)
    except UpstreamError as exc:
        await _error(scope, send, 502, "service_unavailable", str(exc))
        return
    if isinstance(found, Refused):  # the app said no (e.g. 404, 403): pass its answer on
        status = found.status if found.status in _STATUSES else 502
        kept = list(_end_to_end(found.headers, RESPONSE_DROPPED | {b"content-length"}))
        await _answer(scope, send, status, kept, found.body)
        return
    try:
        await send({"type": "websocket.accept", "subprotocol": found.subprotocol})
        await _relay_messages(found, receive, send)
    except OSError:  # the caller went away (uvicorn's ClientDisconnected)
        pass
    finally:
        await found.close()


async def _relay_messages(ws: UpstreamSocket, receive: Receive, send: Send) -> None:
    async def to_service() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1000)
                await ws.close(code if code in _SENDABLE else 1000, message.get("reason") or "")
                return
            if message.get("text") is not None:
                await ws.send(message["text"])
            elif message.get("bytes") is not None:
                await ws.send(message["bytes"])

    async def to_caller() -> None:
        while (data := await ws.recv()) is not None:
            key = "text" if isinstance(data, str) else "bytes"
            await send({"type": "websocket.send", key: data})
        code = ws.close_code or 1000
        code = code if code in _SENDABLE else (1000 if code == 1005 else 1011)
        await send({"type": "websocket.close", "code": code, "reason": ws.close_reason})

    tasks = {asyncio.ensure_future(to_service()), asyncio.ensure_future(to_caller())}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task


# --- headers and answers ----------------------------------------------------------------------


_STATUSES = frozenset(s.value for s in http.HTTPStatus)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def _query(scope: Scope) -> bytes:
    query: bytes = scope.get("query_string", b"")
    return b"?" + query if query else b""


def _end_to_end(headers: Headers, dropped: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """Headers less the hop-by-hop ones, and less those the `Connection` header names."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(k, v) for k, v in headers if k.lower() not in dropped and k.lower() not in named]


def _forwarded(scope: Scope, route: _Route, dropped: frozenset[bytes]) -> Headers:
    headers = _end_to_end(list(scope["headers"]), dropped)
    client = scope.get("client")
    if client:
        seen = _header(scope, b"x-forwarded-for")
        address = client[0].encode()
        headers = [(k, v) for k, v in headers if k != b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", seen + b", " + address if seen else address))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    if host := _header(scope, b"host"):
        headers.append((b"x-forwarded-host", host))
    if route.prefix:
        headers.append((b"x-forwarded-prefix", route.prefix))
    return headers


async def _error(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await _answer(scope, send, status, [(b"content-type", b"application/json")], body)


async def _answer(
    scope: Scope,
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]] | dict[str, str],
    body: bytes,
) -> None:
    """A plain HTTP response, also to a WebSocket handshake (ASGI's http.response extension;
    without it, the handshake is refused with a close)."""
    if isinstance(headers, dict):
        headers = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    kind = "http"
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            with contextlib.suppress(OSError):
                await send({"type": "websocket.close", "code": 1008})
            return
        kind = "websocket.http"
    with contextlib.suppress(OSError):
        await send({"type": f"{kind}.response.start", "status": status, "headers": headers})
        await send({"type": f"{kind}.response.body", "body": body})
