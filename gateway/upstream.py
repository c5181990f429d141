"""The client side of the preview proxy: the one importer of httpx and websockets.

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

import httpx
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from .errors import PetriError

Headers = list[tuple[bytes, bytes]]
# No read or write timeout: a response may stream for as long as the service likes (SSE,
# long polls); the client's disconnect ends it. Connecting must be quick.
TIMEOUT = {"connect": 10.0, "read": None, "write": None, "pool": 10.0}
WS_MAX_BYTES = 16 * 1024 * 1024  # uvicorn's own limit on the client side
_STATUS_LINE = re.compile(rb"^HTTP/\d\.\d [1-5]\d\d")


class UpstreamError(Exception):
    """The service did not answer: no socket yet, nobody listening behind the relay, a reset."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: Headers
    _response: httpx.Response

    async def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, as sent (no decoding of any content-encoding)."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the service broke off its response: {exc}") from None

    async def aclose(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._response.aclose()


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
        self._transport: httpx.AsyncHTTPTransport | None = None
        self._closed = False

    def _path(self) -> str:
        """`/proc/self/fd/<fd>` of the checked socket, opened on first use."""
        if self._closed:  # the service ended: an fd opened now would never be closed
            raise UpstreamError("the service has ended")
        if self._fd is None:
            self._fd = self._open(self._open_socket)
            self._transport = httpx.AsyncHTTPTransport(
                uds=f"/proc/self/fd/{self._fd}",
                verify=False,  # plain HTTP over a local socket: TLS is never used
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            )
        return f"/proc/self/fd/{self._fd}"

    @staticmethod
    def _open(open_socket: Callable[[], int]) -> int:
        try:
            return open_socket()
        except PetriError as exc:
            raise UpstreamError(f"the service's socket is not there: {exc.message}") from None

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Send a request (its body streamed) and return once the response's head is in."""
        self._path()
        assert self._transport is not None
        request = httpx.Request(
            method,
            "http://service/",
            headers=headers,
            content=body,
            extensions={"target": target, "timeout": TIMEOUT},
        )
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            why = str(exc) or type(exc).__name__
            raise UpstreamError(f"the service did not answer: {why}") from None
        return UpstreamResponse(response.status_code, list(response.headers.raw), response)

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
        transport, fd = self._transport, self._fd
        self._transport = self._fd = None
        if transport is not None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await transport.aclose()
        if fd is not None:
            os.close(fd)
