"""What `petri serve` and `petri images build` do (the CLI is `cli.py`): the one importer of
uvicorn."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import socket
import sys
from types import FrameType

import h11
import uvicorn
from sse_starlette.sse import AppStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import logs
from .auth import is_loopback
from .config import Settings, SettingsError
from .images import ImageBuildError, build_images, user_mismatches
from .registry import Registry
from .runtimes import load_runtimes
from .teams import Teams


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT, first let running executions end with a terminal event (so every
    open stream ends cleanly), then let uvicorn close connections and stop."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)
        sandboxes = getattr(state, "sandboxes", None)
        if sandboxes is not None and not getattr(self, "_draining", False):
            self._draining = True
            task = asyncio.get_event_loop().create_task(sandboxes.shutdown())
            task.add_done_callback(lambda _: super(_Server, self).handle_exit(sig, frame))
            return
        super().handle_exit(sig, frame)


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request head, which uvicorn lacks
    (slowloris): a connection whose request line and headers are not complete `header_timeout`
    seconds after it opened, or after its previous response, is closed. A request whose head
    is complete is the app's, however long it streams (SSE) or uploads."""

    header_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = None
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_deadline)

    def _head_deadline(self) -> None:
        self._head_timer = None
        # The client is still IDLE in h11's terms: no complete request head since the timer
        # was armed (a head followed by a response in progress is never cut).
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def _http_protocol(header_timeout: float) -> type[HeadTimeoutProtocol]:
    return type("PetriHTTPProtocol", (HeadTimeoutProtocol,), {"header_timeout": header_timeout})


# glibc's malloc: buffers of 128 KiB-4 MiB (socket reads, stream chunks, event rows) come
# from the heap, and up to 32 MiB of freed heap is kept for the next ones. Left dynamic, the
# heap's top was given back and taken again on nearly every 256 KiB buffer in some
# processes (a `brk` pair per read, then a page fault per 4 KiB touched): the same upload
# through a preview cost the gateway twice the CPU in those. glibc's own dynamic limits reach
# these values; they only stop them from moving. docs/benchmarks.md has the measurement.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_malloc() -> bool:
    """Fix glibc's malloc thresholds (above); False where there is no glibc (musl, macOS)."""
    try:  # the process's own symbols: no `find_library`, which runs `ldconfig`
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )


def serve(host: str | None, port: int) -> int:
    from .routes import create_app

    try:
        settings = Settings.from_env(None, host=host) if host else Settings.from_env()
    except SettingsError as exc:
        print(f"petri: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    try:
        for line in user_mismatches(load_runtimes(settings.runtimes_dir), settings.sandbox_user):
            print(f"petri: warning: {line}", file=sys.stderr)
    except (ValueError, ImageBuildError):
        pass  # no runtimes or no docker CLI: creates will say so with a clear error
    if not is_loopback(settings.host):  # refuse before binding (the app checks again)
        registry = Registry(settings.data_dir)
        try:
            Teams.open(settings, registry).check_exposure()
        except SettingsError as exc:
            print(f"petri: {exc}", file=sys.stderr)
            return 2
        finally:
            registry.close()
    if not settings.public_url:
        settings = dataclasses.replace(settings, public_url=public_url(settings.host, port))
    tune_malloc()
    # Streams end by their own terminal event on shutdown; sse-starlette must not cut them.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=port,
        log_level=settings.log_level,
        log_config=logs.uvicorn_log_config(),
        access_log=False,  # logs.RequestIds writes one line per request, without query strings
        timeout_graceful_shutdown=15,
        proxy_headers=False,
        http=_http_protocol(settings.header_timeout_seconds),
        # libuv's loop (C) instead of asyncio's selector loop: every socket read and write
        # (previews, Docker's streams, SSE) costs less; docs/benchmarks.md has the numbers.
        loop="uvloop",
        # A service's own `Server` header passes through its preview unchanged.
        server_header=False,
    )
    _Server(config).run()
    return 0


def public_url(host: str, port: int) -> str:
    """Where clients reach `petri serve --host H --port P` (the default `PETRI_PUBLIC_URL`)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def images(names: list[str], force: bool) -> int:
    try:
        settings = Settings.from_env()
        runtimes = load_runtimes(settings.runtimes_dir)
        unknown = sorted(set(names) - set(runtimes))
        if unknown:
            print(f"petri: unknown runtime(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        for result in build_images(
            runtimes,
            names or None,
            force=force,
            base_image=settings.base_image,
            sandbox_user=settings.sandbox_user,
        ):
            print(f"{result.name}: {result.status} ({result.image}, {result.seconds:.1f}s)")
    except (SettingsError, ValueError, ImageBuildError) as exc:
        print(f"petri: {exc}", file=sys.stderr)
        return 1
    return 0
