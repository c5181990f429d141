"""A small HTTP/1.1 client connection on asyncio streams: the client side's importer
of h11 (cli.py uses it for the server's header timeout).

The preview proxy sends each request through one of these, kept alive and reused for the
next request to the same service (connecting costs a round trip through the relay). Bodies
stream both ways, read in large blocks; nothing is decoded but the transfer framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

import h11

from .errors import UpstreamProtocolError

Headers = list[tuple[bytes, bytes]]
READ_SIZE = 1024 * 1024
BUFFER = 4 * 1024 * 1024  # the stream reader's limit: how far it reads ahead




class Connection:
    """One HTTP/1.1 connection: requests one after another, each read to its end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.used = False  # has a request been sent on it (a reused one may be stale)

    @classmethod
    async def open(cls, path: str) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=BUFFER)
        return cls(reader, writer)

    @property
    def reusable(self) -> bool:
        """Idle, at a message boundary both ways, and not closed by the service meanwhile."""
        return (
            self._h11.our_state is h11.IDLE
            and self._h11.their_state is h11.IDLE
            and not self._reader.at_eof()
            and not self._writer.is_closing()
        )

    async def request(
        self, method: str, target: bytes, headers: Headers, body: AsyncIterable[bytes] | None
    ) -> tuple[int, Headers]:
        """Send the request (its body streamed) and return the response's status and head."""
        self.used = True
        if body is not None and not any(k.lower() == b"content-length" for k, _ in headers):
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        if not any(k.lower() == b"host" for k, _ in headers):
            headers = [(b"host", b"service"), *headers]
        try:
            self._write(h11.Request(method=method, target=target, headers=headers))
            if body is not None:
                async for chunk in body:
                    if chunk:
                        self._write(h11.Data(data=chunk))
                        await self._writer.drain()
            self._write(h11.EndOfMessage())
            await self._writer.drain()
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    break
                # other 1xx (100 Continue, 103 Early Hints) precede the real answer
            return event.status_code, list(event.headers.raw_items())
        except (h11.ProtocolError, OSError, ConnectionError) as exc:
            raise UpstreamProtocolError(str(exc) or type(exc).__name__) from None

    async def body(self) -> AsyncIterator[bytes]:
        """The response body's bytes as they arrive."""
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        except (h11.ProtocolError, OSError, ConnectionError) as exc:
            raise UpstreamProtocolError(str(exc) or type(exc).__name__) from None
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()

    def _write(self, event: h11.Event) -> None:
        data = self._h11.send_with_data_passthrough(event)
        if data:
            self._writer.writelines(data)

    async def _next_event(self) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._reader.read(READ_SIZE))
                continue
            if event is h11.PAUSED:
                raise h11.RemoteProtocolError("the service sent more than one response")
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the service closed the connection")
            assert not isinstance(event, type)  # NEED_DATA and PAUSED are sentinels
            return event
