"""The egress allowlist: a small HTTP proxy that install containers use to reach registries.

Install containers sit on an internal Docker network with no route out; the only thing they
can reach is this proxy, listening on that network's gateway address on the host. It serves
`CONNECT host:port` (HTTPS, tunnelled as opaque bytes: no TLS interception) and plain-HTTP
requests in absolute-URI form (`GET http://host/path`), and only to hosts on the allowlist
(`PETRI_EGRESS_ALLOW`); anything else is answered `403`.

Allowlist entries: `host` (ports 80 and 443), `host:port` (that port only), `*.suffix`
(subdomains of suffix), `.suffix` (suffix and its subdomains), and IP literals (`[v6]:port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("petri.egress")

DEFAULT_PORTS = frozenset({80, 443})
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0
IDLE_TIMEOUT = 120.0
MAX_CONNECTIONS = 256
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
    """An allowlisting HTTP proxy on plain asyncio streams."""

    def __init__(self, allow: Iterable[str], *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.rules = parse_allowlist(allow)
        self.idle_timeout = idle_timeout
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, host: str, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=HEAD_LIMIT)
        self.host, self.port = host, int(self._server.sockets[0].getsockname()[1])
        log.info("egress proxy on %s allows %d host rule(s)", self.url, len(self.rules))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._slots.locked():
                await _reply(writer, 503, "too many proxy connections")
                return
            async with self._slots:
                await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError):
                await _reply(writer, 431, "request head too large")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)
            if task is not None:
                self._tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        peer = writer.get_extra_info("peername")
        if not allowed(self.rules, host, port):
            self.refused += 1
            log.warning("egress refused: %s:%d (from %s)", host, port, peer[0] if peer else "?")
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
