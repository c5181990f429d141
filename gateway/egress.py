"""The egress allowlist: a small HTTP proxy that install containers use to reach registries.

Install containers have no network but loopback (`NetworkMode: none`); the only thing they
can reach is this proxy, through a Unix socket of their own that is bind-mounted into them
(a relay inside turns it into `127.0.0.1:<port>` for HTTP(S)_PROXY). It serves
`CONNECT host:port` (HTTPS, tunnelled as opaque bytes: no TLS interception) and plain-HTTP
requests in absolute-URI form (`GET http://host/path`), and only to hosts on the allowlist
(`PETRI_EGRESS_ALLOW`); anything else is answered `403`. Connections are capped per source
(`SOURCE_CONNECTIONS`) and in all (`MAX_CONNECTIONS`): past either, `503`.

Allowlist entries: `host` (ports 80 and 443), `host:port` (that port only), `*.suffix`
(subdomains of suffix), `.suffix` (suffix and its subdomains), and IP literals (`[v6]:port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("petri.egress")

DEFAULT_PORTS = frozenset({80, 443})
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0
IDLE_TIMEOUT = 120.0
MAX_CONNECTIONS = 256  # at once, every source together
SOURCE_CONNECTIONS = 32  # at once, from one source (one sandbox's install)
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the NUL
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_HOP_HEADERS = frozenset(
    {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One allowlist entry. `suffix` rules match subdomains (and the apex when `apex`)."""

    host: str
    port: int | None = None
    suffix: bool = False
    apex: bool = False

    def matches(self, host: str, port: int) -> bool:
        if (port not in DEFAULT_PORTS) if self.port is None else (port != self.port):
            return False
        if not self.suffix:
            return host == self.host
        return host.endswith("." + self.host) or (self.apex and host == self.host)


def parse_allowlist(entries: Iterable[str]) -> tuple[Rule, ...]:
    """Parse allowlist entries; ValueError names the first bad one."""
    return tuple(_rule(entry) for entry in entries if entry.strip())


def _rule(entry: str) -> Rule:
    raw = entry.strip().lower()
    host, port = split_host_port(raw)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in egress entry {entry!r}")
    suffix = apex = False
    if host.startswith("*."):
        host, suffix = host[2:], True
    elif host.startswith("."):
        host, suffix, apex = host[1:], True, True
    if not valid_host(host) or (suffix and _is_ip(host)):
        raise ValueError(f"egress entry {entry!r} is not a host, *.suffix, .suffix or IP[:port]")
    return Rule(host, port, suffix, apex)


def split_host_port(raw: str, default: int | None = None) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, or a bare host/IPv6 literal. ValueError on a bad port."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {raw!r}")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after ']' in {raw!r}")
        port_text = rest[1:] if rest else ""
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    else:
        host, port_text = raw, ""
    if not port_text:
        return host.rstrip("."), default
    if not port_text.isdigit():
        raise ValueError(f"bad port in {raw!r}")
    return host.rstrip("."), int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def valid_host(host: str) -> bool:
    if _is_ip(host):
        return True
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(_LABEL.match(label) for label in labels)


def allowed(rules: Iterable[Rule], host: str, port: int) -> bool:
    host = host.lower().rstrip(".")
    return valid_host(host) and any(rule.matches(host, port) for rule in rules)


class EgressProxy:
    """An allowlisting HTTP proxy on plain asyncio streams, served on one Unix socket per
    source (a sandbox's install): a connection's socket says whose it is, so each source
    has its own cap beside the global one and its tunnels end with it."""

    def __init__(
        self,
        allow: Iterable[str],
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        per_source: int = SOURCE_CONNECTIONS,
    ) -> None:
        self.rules = parse_allowlist(allow)
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.per_source = per_source
        self.refused = 0
        self._servers: dict[str, tuple[asyncio.Server, Path]] = {}
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._open = 0

    def path(self, source: str) -> Path | None:
        """The socket `source` is served on, None when it is not."""
        entry = self._servers.get(source)
        return entry[1] if entry else None

    def connections(self, source: str) -> int:
        return len(self._tasks.get(source, ()))

    async def listen(self, source: str, path: Path, owner: tuple[int, int] | None = None) -> None:
        """Serve `source` on a Unix socket of its own at `path` (replacing a stale file there),
        connectable only by `owner` (uid, gid) when the gateway may chown, else by anyone
        who can reach its directory."""
        await self.unlisten(source)
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, f"socket path longer than {SOCKET_PATH_MAX} bytes")
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                path.rmdir()  # Docker makes a missing bind source a directory: never ours
            else:
                path.unlink()
        server = await asyncio.start_unix_server(
            functools.partial(self._serve, source), str(path), limit=HEAD_LIMIT
        )
        try:
            if owner is not None and os.geteuid() == 0:
                os.chown(path, *owner)
                os.chmod(path, 0o600)
            else:
                os.chmod(path, 0o666)
        except OSError:
            server.close()
            path.unlink(missing_ok=True)
            raise
        self._servers[source] = (server, path)
        log.debug("egress proxy for %s on %s", source, path)

    async def unlisten(self, source: str) -> None:
        """Stop serving `source`: its socket goes away and its open tunnels end."""
        entry = self._servers.pop(source, None)
        if entry is not None:
            server, path = entry
            server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        tasks = self._tasks.get(source, set())
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for source in list(self._servers) + list(self._tasks):
            await self.unlisten(source)

    async def _serve(
        self, source: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        mine = self._tasks.setdefault(source, set())
        mine.add(task)
        self._open += 1
        try:
            if len(mine) > self.per_source:
                await _reply(writer, 503, f"more than {self.per_source} proxy connections at once")
                return
            if self._open > self.max_connections:
                await _reply(writer, 503, "too many proxy connections")
                return
            await self._handle(source, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:  # unlisten/close: this connection ends here, quietly
            pass
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError):
                await _reply(writer, 431, "request head too large")
        finally:
            self._open -= 1
            mine.discard(task)
            if not mine and self._tasks.get(source) is mine:
                del self._tasks[source]
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _handle(
        self, source: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        line, _, rest = head.partition(b"\r\n")
        parts = line.split()
        if len(parts) != 3:
            await _reply(writer, 400, "malformed request line")
            return
        method, target, version = parts
        try:
            host, port, path = _target(method, target.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            await _reply(writer, 400, str(exc))
            return
        if not allowed(self.rules, host, port):
            self.refused += 1
            log.warning("egress refused: %s:%d (from %s)", host, port, source)
            await _reply(
                writer, 403, f"{host}:{port} is not on the egress allowlist (PETRI_EGRESS_ALLOW)"
            )
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=HEAD_LIMIT), CONNECT_TIMEOUT
            )
        except TimeoutError:
            await _reply(writer, 504, f"connecting to {host}:{port} timed out")
            return
        except OSError as exc:
            await _reply(writer, 502, f"cannot connect to {host}:{port}: {exc.strerror or exc}")
            return
        try:
            if method == b"CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(b" ".join((method, path.encode("ascii"), version)) + b"\r\n")
                up_writer.write(_forward_headers(rest))
            await writer.drain()
            await up_writer.drain()
            await _splice(reader, writer, up_reader, up_writer, self.idle_timeout)
        finally:
            up_writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(up_writer.wait_closed(), 5)


def _target(method: bytes, target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of a proxy request; ValueError when not proxyable."""
    if method == b"CONNECT":
        host, port = split_host_port(target)
        if port is None:
            raise ValueError("CONNECT needs host:port")
        return host, port, ""
    if not target.lower().startswith("http://"):
        raise ValueError("this is an egress proxy: send CONNECT or an absolute http:// URI")
    authority, slash, path = target[7:].partition("/")
    authority = authority.rpartition("@")[2]
    host, port = split_host_port(authority, 80)
    assert port is not None
    return host, port, slash + path if slash else "/"


def _forward_headers(raw: bytes) -> bytes:
    """The client's headers minus hop-by-hop ones, with `Connection: close` (one request per
    connection, so a kept-alive client cannot reach a second host through this tunnel)."""
    kept = []
    for line in raw.split(b"\r\n"):
        name = line.partition(b":")[0].strip().lower()
        if line and name not in _HOP_HEADERS:
            kept.append(line)
    kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n"


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    idle: float,
) -> None:
    """Copy both ways. The exchange ends when the upstream side ends (its answer is complete)
    or fails; a client's half-close is passed on and the answer still awaited."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while chunk := await asyncio.wait_for(src.read(64 * 1024), idle):
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()

    answer = asyncio.create_task(pump(b_reader, a_writer))
    request = asyncio.create_task(pump(a_reader, b_writer))
    try:
        done, _ = await asyncio.wait((answer, request), return_when=asyncio.FIRST_COMPLETED)
        if answer not in done and request.exception() is None:
            await answer
        elif answer in done:
            answer.result()
    finally:
        for task in (answer, request):
            task.cancel()
        await asyncio.gather(answer, request, return_exceptions=True)


async def _reply(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reasons = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    body = f"petri egress proxy: {message}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
