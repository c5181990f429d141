"""The client side of the preview proxy: HTTP through `http1` (h11, connections kept alive
per service), WebSockets through the one importer of websockets.

A service is reached only through the Unix socket its relay listens on inside the sandbox's
workspace (`socat UNIX-LISTEN:… TCP:127.0.0.1:<port>`): the sandbox keeps network mode
`none`. The workspace belongs to the sandbox, so the socket is opened by `open_socket` (an
`O_PATH` fd, reached without following any symlink and checked to be a socket) and every
connection goes to `/proc/self/fd/<fd>`: the very inode that was checked, never a file a
link points at (the Docker socket, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from .errors import PetriError, UpstreamError, UpstreamProtocolError
from .http1 import Connection

Headers = list[tuple[bytes, bytes]]
# No read or write timeout: a response may stream for as long as the service likes (SSE,
# long polls); the client's disconnect ends it. Connecting must be quick.
CONNECT_TIMEOUT = 10.0
KEEP_IDLE = 32  # idle connections kept per service
MAX_CONNECTIONS = 256  # open at once per service; a request past them waits (CONNECT_TIMEOUT)
WS_MAX_BYTES = 16 * 1024 * 1024  # uvicorn's own limit on the client side
_STATUS_LINE = re.compile(rb"^HTTP/\d\.\d [1-5]\d\d")




@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: Headers
    _conn: Connection
    _done: Callable[[Connection], None]
    _finished: bool = False
    _released: bool = False

    async def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, as sent (no decoding of any content-encoding)."""
        try:
            async for chunk in self._conn.body():
                yield chunk
        except UpstreamProtocolError as exc:
            raise UpstreamError(f"the service broke off its response: {exc}") from None
        self._finished = True

    async def aclose(self) -> None:
        """Back to the pool if the response was read to its end; else the connection closes
        (a service still streaming to a caller who left stops there)."""
        if self._released:
            return
        self._released = True
        if not self._finished:
            self._conn.close()
        self._done(self._conn)


@dataclass(slots=True)
class Refused:
    """The service answered a WebSocket handshake with a plain HTTP response."""

    status: int
    headers: Headers
    body: bytes


@dataclass(slots=True)
class UpstreamSocket:
    conn: ClientConnection
    subprotocol: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.subprotocol = self.conn.subprotocol

    async def send(self, data: str | bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.conn.send(data)

    async def recv(self) -> str | bytes | None:
        """The next message; None once the service closed (see `close_code`)."""
        try:
            return await self.conn.recv()
        except ConnectionClosed:
            return None

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    @property
    def close_reason(self) -> str:
        return self.conn.close_reason or ""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(ConnectionClosed, OSError, ValueError):
            await self.conn.close(code, reason)


class Upstream:
    """One service's socket: a pool of HTTP connections and WebSocket dials through it."""

    def __init__(self, open_socket: Callable[[], int]) -> None:
        self._open_socket = open_socket
        self._fd: int | None = None
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._closed = False

    def _path(self) -> str:
        """`/proc/self/fd/<fd>` of the checked socket, opened on first use."""
        if self._closed:  # the service ended: an fd opened now would never be closed
            raise UpstreamError("the service has ended")
        if self._fd is None:
            self._fd = self._open(self._open_socket)
        return f"/proc/self/fd/{self._fd}"

    @staticmethod
    def _open(open_socket: Callable[[], int]) -> int:
        try:
            return open_socket()
        except PetriError as exc:
            raise UpstreamError(f"the service's socket is not there: {exc.message}") from None

    async def _connection(self, fresh: bool = False) -> Connection:
        """An idle kept-alive connection (unless `fresh`), or a new one to the checked socket."""
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        path = self._path()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await Connection.open(path)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"the service did not answer: {exc or 'timeout'}") from None

    def _release(self, conn: Connection) -> None:
        self._slots.release()
        self._busy.discard(conn)
        if conn.reusable and not self._closed and len(self._idle) < KEEP_IDLE:
            self._idle.append(conn)
        else:
            conn.close()

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Send a request (its body streamed) and return once the response's head is in."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamError("the service has too many requests open") from None
        try:
            return await self._request(method, target, headers, body)
        except BaseException:
            self._slots.release()
            raise

    async def _request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        for attempt in (1, 2):
            # The retry opens a new connection: another idle one may be just as stale (the
            # app closed several at once), and a second failure would be the caller's 502.
            conn = await self._connection(fresh=attempt == 2)
            reused = conn.used
            self._busy.add(conn)
            try:
                status, head = await conn.request(method, target, headers, body)
            except UpstreamProtocolError as exc:
                self._busy.discard(conn)
                conn.close()
                # A kept-alive connection the service closed meanwhile: once more on a new
                # one, if no body was taken from the caller.
                if reused and body is None and attempt == 1:
                    continue
                raise UpstreamError(f"the service did not answer: {exc}") from None
            except BaseException:
                self._busy.discard(conn)
                conn.close()
                raise
            return UpstreamResponse(status, head, conn, self._release)
        raise AssertionError("unreachable")

    async def websocket(
        self, target: bytes, host: str, headers: Headers, subprotocols: Sequence[str]
    ) -> UpstreamSocket | Refused:
        try:
            conn = await unix_connect(
                self._path(),
                uri=f"ws://{host}{target.decode('ascii', 'replace')}",
                additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                subprotocols=[Subprotocol(p) for p in subprotocols] or None,
                user_agent_header=None,
                compression=None,
                max_size=WS_MAX_BYTES,
                ping_interval=None,
                open_timeout=10,
                close_timeout=5,
            )
        except InvalidStatus as exc:
            r = exc.response
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.raw_items()]
            return Refused(r.status_code, raw, bytes(r.body or b""))
        except (WebSocketException, OSError, TimeoutError, ValueError) as exc:
            raise UpstreamError(f"the service did not accept the WebSocket: {exc}") from None
        return UpstreamSocket(conn)

    async def probe(self, path: str, seconds: float) -> bool:
        """Does an HTTP server answer `GET path` behind the socket? The socket is opened
        afresh each time (it appears only once the relay runs)."""
        try:
            fd = self._open(self._open_socket)
        except UpstreamError:
            return False
        try:
            async with asyncio.timeout(seconds):
                reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
                try:
                    writer.write(
                        f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
                        "Connection: close\r\nUser-Agent: petri-probe\r\n\r\n".encode()
                    )
                    await writer.drain()
                    head = await reader.read(16)
                    while len(head) < 12 and (more := await reader.read(16)):
                        head += more
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            return bool(_STATUS_LINE.match(head))
        except (OSError, TimeoutError):
            return False
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        self._closed = True
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
        self._busy.clear()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
