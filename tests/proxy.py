"""A TCP proxy in front of a gateway that cuts one request's connection on purpose, so clients'
resume paths run against real drops: mid-stream (after some events went through) or before
any answer (the request reached the gateway, the response never reached the client)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field

from tests.conftest import free_port

HEAD = re.compile(rb"(?m)^(?:GET|POST|PUT|DELETE) [^\r\n]*\r\n(?:[^\r\n]+\r\n)*")
State = dict[str, bool]


@dataclass
class DroppingProxy:
    """Forwards 127.0.0.1:<port> to `target_port`. The first request whose head matches `cut`
    (a regex on bytes) has its connection closed: after `after_events` events of the
    response went through (`marker` counts them), or at once with `before_response`. Every
    request head seen is kept in `requests`."""

    target_port: int
    cut: bytes = rb"^POST /v1/sandboxes/[^/ ]+/exec "
    marker: bytes = b"\nevent: stdout\n"
    after_events: int = 2
    before_response: bool = False
    port: int = field(default_factory=free_port)
    requests: list[bytes] = field(default_factory=list)
    cuts: int = 0
    _armed_once: bool = False
    _server: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DroppingProxy:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"armed": False, "closed": False}
            threading.Thread(
                target=self._upward, args=(client, upstream, state), daemon=True
            ).start()
            threading.Thread(
                target=self._downward, args=(client, upstream, state), daemon=True
            ).start()

    def _upward(self, client: socket.socket, upstream: socket.socket, state: State) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                _close(client, upstream)
                return
            for head in HEAD.findall(data):
                with self._lock:
                    self.requests.append(head)
                    if not self._armed_once and re.search(self.cut, head):
                        self._armed_once = state["armed"] = True
            try:
                upstream.sendall(data)
            except OSError:
                _close(client, upstream)
                return

    def _downward(self, client: socket.socket, upstream: socket.socket, state: State) -> None:
        seen = b""
        while True:
            try:
                data = upstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                _close(client, upstream)
                return
            if state["armed"] and self.before_response:
                self._cut(client, upstream)
                return
            if state["armed"]:
                seen += data
                if seen.count(self.marker) >= self.after_events:
                    # forward up to the end of the counted event's data line, then cut
                    end = _nth(seen, self.marker, self.after_events)
                    line_end = seen.find(b"\n", seen.find(b"data:", end))
                    keep = len(data) - (len(seen) - (line_end + 1)) if line_end >= 0 else len(data)
                    with contextlib.suppress(OSError):
                        client.sendall(data[: max(0, keep)])
                    self._cut(client, upstream)
                    return
            try:
                client.sendall(data)
            except OSError:
                _close(client, upstream)
                return

    def _cut(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            self.cuts += 1
        _close(client, upstream)


def _nth(data: bytes, marker: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.find(marker, at + 1)
    return at


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
