"""The preview listener: `PETRI_PREVIEW_PORT`, a port of its own that serves previews only,
on a lean HTTP/1.1 server (h11 on asyncio streams) instead of uvicorn's.

Why: through uvicorn, a request cost ~2 ms before the proxy did anything, and uvicorn paced
request bodies at 64 KiB per round trip (docs/benchmarks.md, "Preview proxy"). Here the
request's head is parsed by h11 and handed, as an ASGI `http` scope, to the very same
`PreviewRouter` the main port uses (token check, header rules, errors, streaming both ways);
bodies are read in blocks of up to 1 MiB. Everything that is not preview traffic is 404: the
API is never reachable on this port.

HTTP/1.1 only. What h11 refuses is 400 (or 501), and so is any framing a server and an app
could read differently (request smuggling): Content-Length beside Transfer-Encoding, two
different Content-Lengths, a Transfer-Encoding other than `chunked`, obs-fold continuation
lines, bad chunk sizes. A request head must be complete `PETRI_HEADER_TIMEOUT_SECONDS` after
the connection opened or after the previous response (slowloris), and at most 16 KiB.
A WebSocket handshake (`Upgrade: websocket`) goes to the app with the same header rules; after
its `101` the proxy splices bytes both ways until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import h11

from .preview import (
    DROPPED,
    RESPONSE_DROPPED,
    Message,
    PreviewRouter,
    Receive,
    Scope,
    Send,
    answer_error,
    end_to_end,
    forwarded,
    relay_response,
)
from .services import Services
from .upstream import UpstreamError

log = logging.getLogger("petri.preview")

READ_SIZE = 1024 * 1024
READ_AHEAD = 512 * 1024  # the stream reader pauses the socket past twice this
MAX_HEAD = 16 * 1024  # h11's (and uvicorn's) default
DISCARD_LIMIT = 4 * 1024 * 1024  # an unread request body read and dropped before closing
DISCARD_SECONDS = 2.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await answer_error(scope, send, 404, "preview_not_found", "no preview at this address")


class PreviewServer:
    """The listener; each connection is a `_Connection`."""

    def __init__(
        self, services: Callable[[], Services], domain: str, header_timeout: float
    ) -> None:
        self.router = PreviewRouter(_not_found, services, domain)
        self.header_timeout = header_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._connected, host, port, limit=READ_AHEAD, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except (OSError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("preview connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()


class _Connection:
    def __init__(
        self, server: PreviewServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        peer = writer.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        sock = writer.get_extra_info("sockname")
        self.sockname = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
        self.body_done = False
        self.continued = False

    async def run(self) -> None:
        while True:
            try:
                request = await self._head()
            except _BadRequest as exc:
                await self._refuse(exc.status, str(exc))
                return
            if request is None:
                return
            scope = self._scope(request)
            self.body_done = self.continued = False
            if _is_upgrade(request):
                await self._upgrade(scope)
                return
            await self.server.router(scope, self._receive, self._send)
            if not await self._next_cycle():
                return

    # --- the request head -----------------------------------------------------------------

    async def _head(self) -> h11.Request | None:
        """The next request's head; None when the connection ends (closed, timed out)."""
        raw = bytes(self.h11.trailing_data[0])
        try:
            async with asyncio.timeout(self.server.header_timeout):
                while True:
                    event = self.h11.next_event()
                    if event is h11.NEED_DATA:
                        data = await self.reader.read(READ_SIZE)
                        if len(raw) <= MAX_HEAD:
                            raw += data
                        self.h11.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        break
                    return None  # ConnectionClosed
        except TimeoutError:
            return None
        except h11.RemoteProtocolError as exc:
            raise _BadRequest(exc.error_status_hint, str(exc)) from None
        end = _HEAD_END.search(raw)
        if _OBS_FOLD.search(raw[: end.start() if end else len(raw)]):
            raise _BadRequest(400, "obsolete line folding in the request head")
        names = [name for name, _ in event.headers]
        if b"transfer-encoding" in names and b"content-length" in names:
            raise _BadRequest(400, "both Content-Length and Transfer-Encoding")
        return event

    def _scope(self, request: h11.Request) -> Scope:
        path, _, query = bytes(request.target).partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": path.decode("latin-1"),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(bytes(k), bytes(v)) for k, v in request.headers],
            "client": self.client,
            "server": self.sockname,
            "extensions": {},
        }

    # --- ASGI receive and send --------------------------------------------------------------

    async def _receive(self) -> Message:
        if self.body_done:
            return await self._disconnect()
        if self.h11.client_is_waiting_for_100_continue and not self.continued:
            self.continued = True
            self._write(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.reader.read(READ_SIZE))
                    continue
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data), "more_body": True}
                if isinstance(event, h11.EndOfMessage):
                    self.body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                return {"type": "http.disconnect"}  # closed before its body's end
        except (h11.RemoteProtocolError, OSError):  # a bad chunk, a reset
            return {"type": "http.disconnect"}

    async def _disconnect(self) -> Message:
        """Waits until the caller goes away. What it sends meanwhile (a pipelined request)
        stays buffered for after this response, up to one request head's worth."""
        while len(self.h11.trailing_data[0]) <= MAX_HEAD:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return {"type": "http.disconnect"}
            self.h11.receive_data(data)
        await asyncio.Future()  # never: the connection is not read further meanwhile
        raise AssertionError("unreachable")

    async def _send(self, message: Message) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the caller went away")
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            headers = [*message.get("headers", []), (b"date", _date())]
            self._write(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        elif kind == "http.response.body":
            if body := message.get("body", b""):
                self._write(h11.Data(data=body))
            if not message.get("more_body", False):
                self._write(h11.EndOfMessage())
            await self.writer.drain()

    def _write(self, event: h11.Event) -> None:
        data = self.h11.send_with_data_passthrough(event)
        if data:
            self.writer.writelines(data)

    async def _next_cycle(self) -> bool:
        """Ready for the next request on this connection? An unread rest of the request body
        (an early answer) is read and dropped first, within limits; else the connection
        closes."""
        if self.h11.our_state is not h11.DONE:
            return False
        if self.h11.their_state is h11.SEND_BODY:
            with contextlib.suppress(TimeoutError, h11.RemoteProtocolError, OSError):
                async with asyncio.timeout(DISCARD_SECONDS):
                    dropped = 0
                    while dropped <= DISCARD_LIMIT:
                        event = self.h11.next_event()
                        if event is h11.NEED_DATA:
                            data = await self.reader.read(READ_SIZE)
                            self.h11.receive_data(data)
                            if not data:
                                break
                        elif isinstance(event, h11.Data):
                            dropped += len(event.data)
                        else:
                            break
        if self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True

    async def _refuse(self, status: int, message: str) -> None:
        """A plain JSON error, then the connection closes (used before any response)."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = status if 400 <= status < 600 else 400
        body = json.dumps({"error": {"code": "bad_request", "message": message}}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"date", _date()),
        ]
        with contextlib.suppress(h11.LocalProtocolError, OSError):
            self._write(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            self._write(h11.Data(data=body))
            self._write(h11.EndOfMessage())
            await self.writer.drain()

    # --- WebSockets (and any upgrade the app accepts) -----------------------------------------

    async def _upgrade(self, scope: Scope) -> None:
        """The handshake goes to the app like any request (same header rules, plus the
        upgrade's own); a 101 is relayed and then bytes are spliced both ways."""
        route = self.server.router.route(scope)
        if route is None:
            await _not_found(scope, self._receive, self._send)
            return
        found = await self.server.router.open(route, scope, self._send)
        if found is None:
            return
        _, upstream = found
        upgrade = _header(scope, b"upgrade")
        headers = forwarded(scope, route, DROPPED)
        headers += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
        try:
            response = await upstream.request(scope["method"], route.target, headers, None)
        except UpstreamError as exc:
            await answer_error(scope, self._send, 502, "service_unavailable", str(exc))
            return
        if response.status != 101:
            try:
                if response.status < 200:
                    message = f"the service answered {response.status} to the handshake"
                    await answer_error(scope, self._send, 502, "service_unavailable", message)
                else:
                    await relay_response(response, self._receive, self._send, watch=True)
            finally:
                await response.aclose()
            return
        ahead, up_reader, up_writer = response.detach()
        try:
            while not isinstance(self.h11.next_event(), h11.EndOfMessage):
                pass  # the handshake has no body: its end is already in
            kept = end_to_end(response.headers, RESPONSE_DROPPED)
            kept += [(b"connection", b"Upgrade"), (b"upgrade", upgrade)]
            self._write(h11.InformationalResponse(status_code=101, headers=kept))
            behind = bytes(self.h11.trailing_data[0])
            if ahead:
                self.writer.write(ahead)
            await self.writer.drain()
            await _splice(self.reader, self.writer, up_reader, up_writer, behind)
        finally:
            up_writer.close()


def _is_upgrade(request: h11.Request) -> bool:
    """A WebSocket handshake: GET, `Upgrade: websocket`, `Connection: upgrade`, no body."""
    if request.method != b"GET":
        return False
    upgrade = connection = False
    for name, value in request.headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in value.lower()
        elif name == b"connection":
            connection = connection or b"upgrade" in {t.strip() for t in value.lower().split(b",")}
        elif name in (b"content-length", b"transfer-encoding") and value != b"0":
            return False
    return upgrade and connection


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    first: bytes,
) -> None:
    """Bytes both ways until either side closes; then both close."""

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, head: bytes) -> None:
        if head:
            dst.write(head)
        while data := await src.read(READ_SIZE):
            dst.write(data)
            await dst.drain()

    tasks = {
        asyncio.ensure_future(pipe(reader, up_writer, first)),
        asyncio.ensure_future(pipe(up_reader, writer, b"")),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task


def _header(scope: Scope, name: bytes) -> bytes:
    return next((bytes(v) for k, v in scope["headers"] if k == name), b"")


def _reason(status: int) -> bytes:
    return _PHRASES.get(status, b"")


_date_cache: list[Any] = [0.0, b""]


def _date() -> bytes:
    now = asyncio.get_running_loop().time()
    if now - _date_cache[0] >= 1.0:
        _date_cache[:] = [now, formatdate(usegmt=True).encode()]
    return bytes(_date_cache[1])
