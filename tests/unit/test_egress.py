"""The egress proxy: allowlist parsing and host matching (pure), and the proxy itself on
127.0.0.1 against an upstream the test runs (CONNECT tunnels, plain-HTTP forwarding,
refusals, malformed and oversized requests). No Docker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway import egress
from gateway.config import DEFAULT_EGRESS_ALLOW, Settings, SettingsError
from gateway.egress import EgressProxy, Rule, allowed, parse_allowlist, split_host_port

# --- allowlist ------------------------------------------------------------------------------


def test_parse_allowlist_entries() -> None:
    rules = parse_allowlist(["PyPI.org", "*.pythonhosted.org", ".example.com", "10.0.0.5:3141"])
    assert rules == (
        Rule("pypi.org"),
        Rule("pythonhosted.org", suffix=True),
        Rule("example.com", suffix=True, apex=True),
        Rule("10.0.0.5", 3141),
    )
    assert parse_allowlist(["[::1]:8080", "  ", "host.corp:8443"]) == (
        Rule("::1", 8080),
        Rule("host.corp", 8443),
    )


@pytest.mark.parametrize(
    "entry",
    [
        "http://pypi.org",
        "pypi.org:http",
        "pypi.org:0",
        "pypi.org:70000",
        "*",
        "*.",
        "a b",
        "*.1.2.3.4",
    ],
)
def test_bad_allowlist_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allowlist([entry])


@pytest.mark.parametrize(
    ("host", "port", "ok"),
    [
        ("pypi.org", 443, True),
        ("PYPI.ORG.", 443, True),  # case and a trailing dot do not matter
        ("pypi.org", 80, True),
        ("pypi.org", 22, False),  # a bare host allows 80 and 443 only
        ("evil-pypi.org", 443, False),
        ("pypi.org.evil.com", 443, False),
        ("files.pythonhosted.org", 443, True),
        ("pythonhosted.org", 443, False),  # `*.suffix` is subdomains only
        ("a.b.example.com", 443, True),
        ("example.com", 443, True),  # `.suffix` is the apex too
        ("notexample.com", 443, False),
        ("10.0.0.5", 3141, True),
        ("10.0.0.5", 443, False),  # an explicit port is that port only
        ("127.0.0.1", 443, False),
        ("", 443, False),
        ("pypi.org\r\nx", 443, False),
    ],
)
def test_host_matching(host: str, port: int, ok: bool) -> None:
    rules = parse_allowlist(["pypi.org", "*.pythonhosted.org", ".example.com", "10.0.0.5:3141"])
    assert allowed(rules, host, port) is ok


def test_split_host_port() -> None:
    assert split_host_port("a.b:8080") == ("a.b", 8080)
    assert split_host_port("a.b") == ("a.b", None)
    assert split_host_port("a.b", 80) == ("a.b", 80)
    assert split_host_port("[2001:db8::1]:443") == ("2001:db8::1", 443)
    with pytest.raises(ValueError):
        split_host_port("a.b:x")


def test_default_allowlist_and_settings_validation() -> None:
    rules = parse_allowlist(DEFAULT_EGRESS_ALLOW.split(","))
    for host in ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "proxy.golang.org"):
        assert allowed(rules, host, 443)
    assert allowed(rules, "repo1.maven.org", 443)
    assert not allowed(rules, "github.com", 443)
    with pytest.raises(SettingsError, match="PETRI_EGRESS_ALLOW"):
        Settings.from_env({"PETRI_EGRESS_ALLOW": "pypi.org,http://x"})
    assert Settings.from_env({"PETRI_EGRESS_ALLOW": "a.b:1, *.c.d"}).egress_hosts == (
        "a.b:1",
        "*.c.d",
    )


# --- the proxy ------------------------------------------------------------------------------


class Upstream:
    """A plain TCP server: echoes what it gets (for CONNECT), or answers one HTTP request."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            first = await reader.readuntil(b"\n")
            if first.startswith(b"ECHO"):
                writer.write(first)
                while data := await reader.read(1024):
                    writer.write(data)
            else:
                head = first + await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                body = b"hello from upstream"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    yield server
    await server.close()


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short directory for sockets (a Unix socket path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="petri-egress-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def proxy(upstream: Upstream, folder: Path) -> AsyncIterator[EgressProxy]:
    p = EgressProxy([f"127.0.0.1:{upstream.port}", "localhost:1"])
    await p.listen("sb-a", folder / "sb-a.sock")
    yield p
    await p.close()


async def ask(
    proxy: EgressProxy, request: bytes, source: str = "sb-a"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    path = proxy.path(source)
    assert path is not None
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def test_connect_to_an_allowed_host_is_tunnelled(
    proxy: EgressProxy, upstream: Upstream
) -> None:
    target = f"127.0.0.1:{upstream.port}".encode()
    reader, writer, head = await ask(
        proxy, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)
    )
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.write(b"ECHO ping\nbytes \x00\xff pass untouched")
    await writer.drain()
    got = await asyncio.wait_for(
        reader.readexactly(len(b"ECHO ping\nbytes \x00\xff pass untouched")), 5
    )
    assert got == b"ECHO ping\nbytes \x00\xff pass untouched"
    writer.close()


async def test_connect_to_another_host_or_port_is_refused(
    proxy: EgressProxy, upstream: Upstream
) -> None:
    for target in (b"example.com:443", b"127.0.0.1:%d" % (upstream.port + 1), b"localhost:2"):
        reader, writer, head = await ask(proxy, b"CONNECT %s HTTP/1.1\r\n\r\n" % target)
        assert head.startswith(b"HTTP/1.1 403 Forbidden"), head
        body = await asyncio.wait_for(reader.read(), 5)
        assert b"not on the egress allowlist" in body and target in body
        writer.close()
    assert proxy.refused == 3


async def test_plain_http_is_forwarded_in_origin_form(
    proxy: EgressProxy, upstream: Upstream
) -> None:
    request = (
        b"GET http://127.0.0.1:%d/simple/six/?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\n"
        % upstream.port
    )
    reader, writer, head = await ask(proxy, request)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert await asyncio.wait_for(reader.read(), 5) == b"hello from upstream"
    writer.close()
    sent = upstream.requests[0]
    assert sent.startswith(b"GET /simple/six/?x=1 HTTP/1.1\r\n")
    assert b"Accept: */*" in sent and b"Connection: close" in sent
    assert b"Proxy-" not in sent


async def test_plain_http_to_another_host_is_refused(proxy: EgressProxy) -> None:
    _, writer, head = await ask(
        proxy, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 403 ")
    writer.close()


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),  # not a proxy request
        (b"GET https://pypi.org/ HTTP/1.1\r\n\r\n", b"400"),  # https must use CONNECT
        (b"CONNECT pypi.org HTTP/1.1\r\n\r\n", b"400"),  # no port
        (b"garbage\r\n\r\n", b"400"),
    ],
)
async def test_malformed_requests_get_400(
    proxy: EgressProxy, request_: bytes, status: bytes
) -> None:
    _, writer, head = await ask(proxy, request_)
    assert head.split()[1] == status, head
    writer.close()


async def test_an_oversized_head_gets_431(proxy: EgressProxy) -> None:
    _, writer, head = await ask(proxy, b"CONNECT x:1 HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
    assert head.split()[1] == b"431"
    writer.close()


async def test_an_unreachable_allowed_host_gets_502(upstream: Upstream, folder: Path) -> None:
    closed = await Upstream().start()
    await closed.close()
    await asyncio.sleep(0.05)
    proxy = EgressProxy([f"127.0.0.1:{closed.port}"])
    await proxy.listen("sb-a", folder / "a.sock")
    try:
        _, writer, head = await ask(proxy, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % closed.port)
        assert head.split()[1] == b"502"
        writer.close()
    finally:
        await proxy.close()


async def test_unlisten_ends_that_sources_tunnels_only(upstream: Upstream, folder: Path) -> None:
    proxy = EgressProxy([f"127.0.0.1:{upstream.port}"])
    await proxy.listen("sb-a", folder / "a.sock")
    await proxy.listen("sb-b", folder / "b.sock")
    connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % upstream.port
    a_reader, _, head = await ask(proxy, connect, "sb-a")
    assert head.startswith(b"HTTP/1.1 200 ")
    b_reader, b_writer, head = await ask(proxy, connect, "sb-b")
    assert head.startswith(b"HTTP/1.1 200 ")
    await asyncio.wait_for(proxy.unlisten("sb-a"), 5)
    assert await asyncio.wait_for(a_reader.read(), 5) == b""
    assert proxy.path("sb-a") is None and not (folder / "a.sock").exists()
    b_writer.write(b"ECHO still here\n")
    assert await asyncio.wait_for(b_reader.readline(), 5) == b"ECHO still here\n"
    await asyncio.wait_for(proxy.close(), 5)
    assert await asyncio.wait_for(b_reader.read(), 5) == b""
    assert not (folder / "b.sock").exists()


async def test_one_source_cannot_take_every_connection(upstream: Upstream, folder: Path) -> None:
    proxy = EgressProxy([f"127.0.0.1:{upstream.port}"], max_connections=5, per_source=3)
    for source in ("sb-a", "sb-b", "sb-c"):
        await proxy.listen(source, folder / f"{source}.sock")
    connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % upstream.port
    held = []  # the open tunnels (a dropped writer would close its connection)
    try:
        held += [await ask(proxy, connect, "sb-a") for _ in range(5)]
        assert [h.split()[1] for _, _, h in held] == [b"200", b"200", b"200", b"503", b"503"]
        assert proxy.connections("sb-a") == 3
        held += [await ask(proxy, connect, "sb-b") for _ in range(2)]
        assert [h.split()[1] for _, _, h in held[5:]] == [b"200", b"200"]
        # Five tunnels are open in all: the global cap answers 503 to everyone else.
        assert (await ask(proxy, connect, "sb-c"))[2].split()[1] == b"503"
    finally:
        await asyncio.wait_for(proxy.close(), 5)


async def test_socket_belongs_to_the_sandbox_user(folder: Path) -> None:
    proxy = EgressProxy(["pypi.org"])
    path = folder / "sb-a.sock"
    path.write_text("stale")  # a crashed gateway's leftover is replaced
    try:
        await proxy.listen("sb-a", path, (1000, 1000))
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1000, 0o600)
        with pytest.raises(OSError):
            await proxy.listen("sb-b", folder / ("x" * 120 + ".sock"))
        # Docker made the path a directory (a bind source missing at a container's create).
        (folder / "sb-c.sock").mkdir()
        await proxy.listen("sb-c", folder / "sb-c.sock")
        assert stat.S_ISSOCK((folder / "sb-c.sock").stat().st_mode)
    finally:
        await proxy.close()


def test_limits_are_sane() -> None:
    assert egress.HEAD_LIMIT >= 8 * 1024 and egress.IDLE_TIMEOUT >= 60
    assert 0 < egress.SOURCE_CONNECTIONS < egress.MAX_CONNECTIONS


def test_socket_directory_settings(tmp_path: Path) -> None:
    s = Settings.from_env({"PETRI_WORKSPACE_ROOT": "/srv/ws"})
    assert s.egress_sockets == Path("/srv/ws/.egress") and s.egress_port == 3128
    long_root = "/srv/" + "w" * 100
    fallback = Settings.from_env({"PETRI_WORKSPACE_ROOT": long_root}).egress_sockets
    assert fallback.name.startswith("petri-egress-") and len(str(fallback)) <= 82
    assert Settings.from_env({"PETRI_EGRESS_SOCKET_DIR": "/run/p"}).egress_sockets == Path("/run/p")
    for bad in ({"PETRI_EGRESS_SOCKET_DIR": "/" + "s" * 90}, {"PETRI_EGRESS_SOCKET_DIR": "rel"}):
        with pytest.raises(SettingsError, match="PETRI_EGRESS_SOCKET_DIR"):
            Settings.from_env(bad)
    with pytest.raises(SettingsError, match="PETRI_EGRESS_PORT"):
        Settings.from_env({"PETRI_EGRESS_PORT": "0"})
