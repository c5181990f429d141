"""Serve mode: long-running services in a sandbox, reached through preview URLs.

A service is an execution of its own: a wrapper starts the relay, `socat UNIX-LISTEN:<socket>
TCP:127.0.0.1:<port>` (so the sandbox keeps network mode `none` and reaches nothing), then
`exec`s the command; its output is the execution's event stream. While it runs, the clean-up
after other execs spares its process group, and the reaper counts it as activity; it ends when
it exits, when it is stopped (`DELETE`), with its sandbox, or when its preview expires (its
wall-clock limit). A watcher task per service probes it until it answers HTTP (`ready`) and
records how it ended. No HTTP, no aiodocker.

The preview URL's token is a capability: 256 random bits, kept only as a sha256 hash (and in
this process's memory, to show the URL again while the gateway runs). After a restart the
gateway has lost the services' execs (their processes are killed with the interrupted
executions): they are marked `exited`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import events as ev
from .errors import BadGateway, DockerUnavailable, Gone, Invalid, NotFound, OverLimit, PetriError
from .executions import ExecutionLog
from .models import ExecBody, Execution, Service, ServiceBody, now
from .runs import Run
from .sandboxes import Sandboxes
from .upstream import Upstream
from .workspace import Workspace

log = logging.getLogger("petri.services")
SOCKET_DIR = ".petri/services"
READY = "ready"
TOKEN = re.compile(r"^[a-z2-7]{52}$")  # base32 of 32 random bytes, lower case
TOUCH_SECONDS = 1.0  # preview traffic renews the sandbox's TTL at most this often
STOP_WAIT_SECONDS = 15.0
PRUNE_AT = 1000  # known tokens past which those of deleted sandboxes are forgotten
# $1 socket path, $2 port, $3 command. The relay's own messages go nowhere: they are not the
# service's output. It is in the exec's process group, so it ends with the service. Large
# blocks and TCP_NODELAY: with socat's 8 KiB default, Nagle's algorithm and delayed ACKs held
# an upload to the app at ~3 MB/s.
_RELAY = (
    'mkdir -p "${1%/*}" 2>/dev/null; '
    'socat -b 262144 UNIX-LISTEN:"$1",fork,unlink-early,mode=600 TCP:127.0.0.1:"$2",nodelay '
    "</dev/null >/dev/null 2>&1 & "
    'exec /bin/bash -c "$3"'
)


def new_token() -> str:
    """256 random bits as 52 lower-case base32 characters: one DNS label, so the same token
    works in a path and as `{token}.{PETRI_PREVIEW_DOMAIN}` (host names ignore case)."""
    return base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class _Live:
    """A service this gateway runs: its record, its run and the way to its socket."""

    service: Service
    run: Run
    upstream: Upstream
    workspace: Workspace
    socket: str  # the relay's socket, relative to the workspace
    stopping: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Services:
    def __init__(self, sandboxes: Sandboxes) -> None:
        self.sandboxes = sandboxes
        self.settings = sandboxes.settings
        self.registry = sandboxes.registry
        self._live: dict[str, _Live] = {}
        self._tokens: dict[str, str] = {}  # service id -> token, for this process's lifetime
        self._touched: dict[str, float] = {}

    # --- lifecycle of the gateway ------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: services that were running lost their exec (and were killed with
        the interrupted executions)."""
        for service in self.registry.live_services():
            service.status, service.ended_at = "exited", now()
            self.registry.update_service(service)

    async def close(self) -> None:
        for live in list(self._live.values()):
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task

    # --- the API -----------------------------------------------------------------------------

    def create(self, sandbox_id: str, body: ServiceBody) -> Service:
        if self.sandboxes._closing:
            raise DockerUnavailable("the gateway is shutting down", code="shutting_down")
        s = self.settings
        sandbox = self.sandboxes.get(sandbox_id)
        ttl = body.preview_ttl_seconds or s.preview_ttl_seconds
        if ttl > s.max_ttl_seconds:
            raise Invalid(
                f"preview_ttl_seconds may be at most {s.max_ttl_seconds}", code="limit_too_high"
            )
        running = [v for v in self.registry.list_services(sandbox.id) if v.live]
        if len(running) >= s.max_services_per_sandbox:
            raise OverLimit(
                f"at most {s.max_services_per_sandbox} services may run in one sandbox",
                code="too_many_services",
            )
        runtime = self.sandboxes.runtimes[sandbox.language]
        service_id, execution_id = f"sv-{secrets.token_hex(8)}", f"ex-{secrets.token_hex(8)}"
        socket = f"{SOCKET_DIR}/{service_id}.sock"
        argv = ["/bin/sh", "-c", _RELAY, "petri-service", f"/sandbox/{socket}", str(body.port)]
        execution = Execution(execution_id, sandbox.id, [*argv, body.command])
        token = new_token()
        service = Service(
            service_id,
            sandbox.id,
            execution_id,
            body.command,
            body.port,
            body.ready_path,
            now() + ttl,
            token_hash(token),
        )
        # No await from the count above to here: two creates cannot both take the last place.
        self._prune()
        self.registry.put_execution(execution)
        self.registry.put_service(service)
        run_log = ExecutionLog(
            execution_id,
            self.registry,
            budget=s.output_budget_bytes,
            tail_bytes=s.output_tail_bytes,
            persist=s.persist_events,
        )
        run = Run(execution, run_log, service=True)
        run_log.emit(ev.START, {"execution_id": execution_id, "sandbox_id": sandbox.id})
        workspace = self.sandboxes.workspaces.get(sandbox.id)
        upstream = Upstream(lambda: workspace.open_socket(socket))
        live = _Live(service, run, upstream, workspace, socket)
        self._live[service_id] = live
        self._tokens[service_id] = token
        self.sandboxes.runs.start(run, sandbox, runtime, ExecBody(command=body.command), ttl)
        live.task = asyncio.create_task(self._watch(live, body.ready_timeout_seconds))
        return service

    def in_sandbox(self, sandbox_id: str) -> list[Service]:
        sandbox = self.sandboxes.get(sandbox_id)
        return [self._current(v) for v in self.registry.list_services(sandbox.id)]

    def get(self, sandbox_id: str, service_id: str) -> Service:
        sandbox = self.sandboxes.get(sandbox_id)
        service = self.registry.get_service(sandbox.id, service_id[:64])
        if service is None:
            raise NotFound(f"no service {service_id[:64]!r}", code="service_not_found")
        return self._current(service)

    async def stop(self, sandbox_id: str, service_id: str) -> None:
        """Revoke the preview URL at once, then end the service's processes."""
        service = self.get(sandbox_id, service_id)
        self.registry.revoke_service(service.id)
        self._tokens.pop(service.id, None)
        live = self._live.get(service.id)
        if live is not None:
            live.stopping = True
            live.run.killed = True
            await self.sandboxes.runs.stop(live.run)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), STOP_WAIT_SECONDS)
        elif service.live:  # not ours (a restart): nothing runs it any more
            service.status, service.ended_at = "stopped", now()
            self.registry.update_service(service)

    def preview_urls(self, service: Service, base: str) -> tuple[str | None, str | None]:
        """(path URL, host URL) of a service's preview while this gateway knows its token."""
        token = self._tokens.get(service.id)
        if token is None or not service.token_hash:
            return None, None
        base = (self.settings.public_url or base).rstrip("/")
        url = f"{base}/preview/{token}/"
        domain = self.settings.preview_domain
        if not domain:
            return url, None
        parts = urlsplit(base)
        port = f":{parts.port}" if parts.port else ""
        return url, f"{parts.scheme}://{token}.{domain}{port}/"

    # --- the preview ---------------------------------------------------------------------------

    def resolve(self, token: str) -> tuple[Service, Upstream]:
        """The running service a preview token opens: 404 unknown or revoked, 410 expired,
        502 no longer running. Preview traffic renews the sandbox's TTL."""
        token = token.lower()
        digest = token_hash(token) if TOKEN.match(token) else ""
        service = self.registry.service_by_token(digest) if digest else None
        if service is None or not hmac.compare_digest(service.token_hash, digest):
            raise NotFound("no preview at this address", code="preview_not_found")
        if service.expires_at <= now():
            raise Gone("this preview URL has expired", code="preview_expired")
        live = self._live.get(service.id)
        if live is None or not live.service.live:
            status = live.service.status if live else service.status
            raise BadGateway(f"the service is not running ({status})", code="service_unavailable")
        self._touch(service.sandbox_id)
        return live.service, live.upstream

    def _prune(self) -> None:
        """Forget tokens of services whose sandbox was deleted since (memory stays bounded)."""
        if len(self._tokens) < PRUNE_AT:
            return
        for service_id in list(self._tokens):
            if service_id not in self._live and not self.registry.service_exists(service_id):
                self._tokens.pop(service_id, None)
        known = {v.service.sandbox_id for v in self._live.values()}
        self._touched = {k: v for k, v in self._touched.items() if k in known}

    def _touch(self, sandbox_id: str) -> None:
        at = time.monotonic()
        if at - self._touched.get(sandbox_id, 0.0) >= TOUCH_SECONDS:
            self._touched[sandbox_id] = at
            self.registry.touch_sandbox(sandbox_id, now())

    # --- one service's life ------------------------------------------------------------------

    def _current(self, service: Service) -> Service:
        live = self._live.get(service.id)
        return live.service if live is not None else service

    async def _watch(self, live: _Live, ready_timeout: float) -> None:
        service, run = live.service, live.run
        try:
            try:
                await self._until_ready(live, ready_timeout)
            except Exception:  # a probe must never leave a service unwatched
                log.exception("probing service %s failed", service.id)
            await run.stopped.wait()
        finally:
            killed = live.stopping or run.killed or run.execution.timed_out
            service.status = "stopped" if killed else "exited"
            service.ended_at = now()
            self.registry.update_service(service)
            await live.upstream.aclose()
            with contextlib.suppress(PetriError):  # the relay's socket file, if still one
                os.close(live.workspace.open_socket(live.socket))
                live.workspace.delete(live.socket)
            self._live.pop(service.id, None)
            if self.registry.get_service(service.sandbox_id, service.id) is None:
                self._tokens.pop(service.id, None)  # its sandbox was deleted
                self._touched.pop(service.sandbox_id, None)
            live.done.set()

    async def _until_ready(self, live: _Live, seconds: float) -> None:
        """Probe the service until it answers HTTP on its `ready_path` (a `ready` event), it
        ends, or `seconds` pass after its program started (it is stopped, with an error that
        carries the tail of its output). Never a fixed sleep: probes back off from 20 ms."""
        service, run = live.service, live.run
        loop = asyncio.get_running_loop()
        ended = asyncio.create_task(run.stopped.wait())
        try:
            while not run.container_id:  # dependencies are still installing
                await asyncio.wait({ended}, timeout=0.05)
                if ended.done():
                    return
            started = loop.time()
            deadline, delay = started + seconds, 0.02
            while not ended.done():
                left = deadline - loop.time()
                if await live.upstream.probe(service.ready_path, max(0.1, min(5.0, left))):
                    if run.log.terminal is None and not ended.done():
                        after_ms = int((loop.time() - started) * 1000)
                        run.log.emit(READY, {"port": service.port, "after_ms": after_ms})
                        service.status, service.ready_at = "ready", now()
                        self.registry.update_service(service)
                    return
                if loop.time() >= deadline:
                    await self._not_ready(live, seconds)
                    return
                await asyncio.wait({ended}, timeout=min(delay, max(0.0, left)))
                delay = min(delay * 1.5, 0.5)
        finally:
            ended.cancel()

    async def _not_ready(self, live: _Live, seconds: float) -> None:
        service, run = live.service, live.run
        tail = run.log.recent_output()
        run.failure = {
            "code": "service_not_ready",
            "message": f"nothing answered HTTP on port {service.port} ({service.ready_path}) "
            f"within {seconds:g} s; the last output:\n{tail}",
        }
        log.info("service %s was not ready in %g s; stopping it", service.id, seconds)
        await self.sandboxes.runs.stop(run)


@contextlib.asynccontextmanager
async def open_services(sandboxes: Sandboxes) -> AsyncIterator[Services]:
    services = Services(sandboxes)
    services.recover()
    try:
        yield services
    finally:
        await services.close()
