"""The domain: sandbox lifecycle and exec orchestration. No HTTP, no aiodocker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from . import events as ev
from .config import Settings
from .deps import Installer
from .errors import Conflict, DockerUnavailable, Invalid, NotFound, OverLimit, PetriError
from .events import Event
from .executions import ExecutionLog, replay
from .models import CreateSandbox, ExecBody, Execution, Limits, Sandbox, now
from .registry import Registry, instance_id
from .runner import ContainerSpec, Runner
from .runs import CODE_DIR, Run, Runs
from .runtimes import Runtime
from .workspace import Workspace, Workspaces, clean_path

log = logging.getLogger("petri.sandboxes")
KILL_ANSWER_SECONDS = 5.0


class Sandboxes:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        runner: Runner,
        workspaces: Workspaces,
        runtimes: dict[str, Runtime],
        installer: Installer | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.runner = runner
        self.workspaces = workspaces
        self.runtimes = runtimes
        self.installer = installer or Installer()
        self.instance = instance_id(settings.data_dir)
        self.labels = {"petri.managed": "1", "petri.instance": self.instance}
        self._locks: dict[str, asyncio.Lock] = {}
        self.runs = Runs(
            settings, registry, runner, workspaces, self.installer, self._ensure_container
        )
        self._closing = False
        self._creating: set[str] = set()  # sandboxes being created, not yet in the registry

    # --- lifecycle of the gateway ------------------------------------------------------------

    async def recover(self) -> None:
        """After a (crash) restart: interrupt what was running, sweep unknown containers."""
        interrupted = self.registry.running_executions()
        for execution in interrupted:
            execution.status, execution.error_code = "interrupted", "interrupted"
            execution.ended_at = now()
            self.registry.put_execution(execution)
            last = self.registry.last_event_id(execution.id)
            self.registry.append_events(
                execution.id,
                [
                    Event(
                        last + 1,
                        ev.ERROR,
                        {"code": "interrupted", "message": "the gateway restarted while this ran"},
                    )
                ],
            )
        await self.sweep_orphans()
        for sandbox in self.registry.list_sandboxes():
            with contextlib.suppress(OSError):
                await self.workspaces.remount(sandbox.id)
        # Their processes outlived the gateway in the sandbox containers: end them.
        for execution in interrupted:
            owner = self.registry.get_sandbox(execution.sandbox_id)
            if owner is not None and owner.container_id:
                with contextlib.suppress(PetriError):
                    user = self.settings.sandbox_user
                    await self.runner.kill_group(owner.container_id, execution.id, user)

    async def sweep_orphans(self) -> list[str]:
        known = {s.id for s in self.registry.list_sandboxes()}
        removed = []
        for container_id, labels in await self.runner.list_containers(self.labels):
            if labels.get("petri.sandbox") not in known or labels.get("petri.role") == "install":
                await self.runner.remove_container(container_id)
                removed.append(container_id)
        if removed:
            log.info("removed %d orphan container(s)", len(removed))
        return removed

    async def shutdown(self) -> None:
        """Let running execs finish within the grace period, then interrupt them."""
        self._closing = True
        runs = list(self.runs.live.values())
        # Services never finish by themselves: they are interrupted at once, below.
        finishing = [r for r in runs if not r.service]
        if finishing:
            done = asyncio.gather(*(r.stopped.wait() for r in finishing))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, self.settings.shutdown_grace_seconds)
        for run in list(self.runs.live.values()):
            run.interrupted = True
            await self.runs.stop(run)
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(run.task), 5)
        await self.runs.settle_all(5)

    # --- sandboxes ---------------------------------------------------------------------------

    async def create(self, body: CreateSandbox) -> Sandbox:
        s = self.settings
        runtime = self.runtimes.get(body.language)
        if runtime is None:
            known = ", ".join(sorted(self.runtimes))
            raise Invalid(
                f"unknown language {body.language[:32]!r}; one of: {known}", code="unknown_language"
            )
        ttl = body.ttl_seconds or s.default_ttl_seconds
        if ttl > s.max_ttl_seconds:
            raise Invalid(f"ttl_seconds may be at most {s.max_ttl_seconds}", code="limit_too_high")
        limits = _limits(s, body)
        at = now()
        sandbox = Sandbox(
            f"sb-{secrets.token_hex(8)}",
            runtime.name,
            "running",
            at,
            at,
            ttl,
            limits,
            dict(body.env or {}),
        )
        # The slot is taken before the first await: creates in flight count against the cap
        # until their row exists, so a burst cannot overshoot it.
        if self.registry.count_sandboxes() + len(self._creating) >= s.max_sandboxes:
            raise OverLimit(
                f"at most {s.max_sandboxes} sandboxes may exist", code="too_many_sandboxes"
            )
        self._creating.add(sandbox.id)
        try:
            await self.workspaces.create(sandbox.id, limits.disk_mb)
            self.registry.put_sandbox(sandbox)
        except BaseException:
            self._creating.discard(sandbox.id)
            with contextlib.suppress(Exception):
                await self.workspaces.remove(sandbox.id)
            raise
        self._creating.discard(sandbox.id)  # counted by the registry from here on
        try:
            await self._start_container(sandbox)
        except BaseException:
            self.registry.delete_sandbox(sandbox.id)
            await self.workspaces.remove(sandbox.id)
            raise
        return sandbox

    def get(self, sandbox_id: str, *, touch: bool = True) -> Sandbox:
        sandbox = self.registry.get_sandbox(sandbox_id) if len(sandbox_id) < 64 else None
        if sandbox is None:
            raise NotFound(f"no sandbox {sandbox_id[:64]!r}", code="sandbox_not_found")
        if touch:
            sandbox.last_active_at = now()
            self.registry.touch_sandbox(sandbox.id, sandbox.last_active_at)
        return sandbox

    def page(self, *, limit: int, after: str) -> list[Sandbox]:
        return self.registry.list_sandboxes(limit=limit, after=after)

    def workspace(self, sandbox_id: str) -> Workspace:
        return self.workspaces.get(self.get(sandbox_id).id)

    async def delete(self, sandbox_id: str, *, if_expired: bool = False) -> bool:
        """Remove a sandbox; with `if_expired`, only if it is still idle past its TTL when
        its turn comes (a request or an exec may have renewed it meanwhile)."""
        sandbox = self.get(sandbox_id, touch=False)
        async with self._lock(sandbox.id):
            if if_expired:
                fresh = self.registry.get_sandbox(sandbox.id)
                busy = bool(self.runs.in_sandbox(sandbox.id))
                if fresh is None or busy or fresh.expires_at > now():
                    return False
            for run in self.runs.in_sandbox(sandbox.id):
                run.interrupted = True
                await self.runs.stop(run)
            await self.runner.remove_container(self._container_name(sandbox.id))
            await self.installer.discard(sandbox)  # a running install ends with the sandbox
            await self.workspaces.remove(sandbox.id)
            self.registry.delete_sandbox(sandbox.id)
        self._locks.pop(sandbox.id, None)
        self.runs.forget(sandbox.id)
        return True

    async def reap_expired(self) -> list[str]:
        """Remove sandboxes idle past their TTL. A running execution counts as activity."""
        busy = self.runs.busy()
        at = now()
        reaped = []
        for sandbox in self.registry.list_sandboxes():
            if sandbox.id in busy:
                self.registry.touch_sandbox(sandbox.id, at)
            elif sandbox.expires_at <= at:
                with contextlib.suppress(NotFound):
                    if await self.delete(sandbox.id, if_expired=True):
                        reaped.append(sandbox.id)
        return reaped

    def _container_name(self, sandbox_id: str) -> str:
        return f"petri-{self.instance}-{sandbox_id}"

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def _start_container(self, sandbox: Sandbox) -> str:
        runtime = self.runtimes[sandbox.language]
        s = self.settings
        spec = ContainerSpec.for_sandbox(
            s,
            sandbox,
            name=self._container_name(sandbox.id),
            image=runtime.image,
            labels={**self.labels, "petri.sandbox": sandbox.id, "petri.role": "sandbox"},
            binds=[f"{self.workspaces.get(sandbox.id).root}:/sandbox:rw"],
            env={**runtime.env, **sandbox.env},
        )
        await self.runner.remove_container(spec.name)
        container_id = await self.runner.start_container(spec)  # within the runner's slots
        sandbox.container_id = container_id
        self.registry.put_sandbox(sandbox)
        self.runs.new_container(sandbox.id)
        return container_id

    async def _ensure_container(self, sandbox: Sandbox) -> str:
        """The sandbox's running container; a dead one is replaced, workspace intact."""
        async with self._lock(sandbox.id):
            fresh = self.registry.get_sandbox(sandbox.id)
            if fresh is None:
                raise NotFound(f"sandbox {sandbox.id} was deleted", code="sandbox_gone")
            if fresh.container_id and await self.runner.is_running(fresh.container_id):
                return fresh.container_id
            log.info("sandbox %s has no running container; starting a new one", sandbox.id)
            return await self._start_container(fresh)

    # --- executions --------------------------------------------------------------------------

    async def exec(self, sandbox_id: str, body: ExecBody, idempotency_key: str | None) -> Run:
        """Start an execution (or return the one this idempotency key started)."""
        if self._closing:
            raise DockerUnavailable("the gateway is shutting down", code="shutting_down")
        sandbox = self.get(sandbox_id)
        if idempotency_key is not None:
            for run in self.runs.live.values():
                if (run.execution.sandbox_id, run.execution.idempotency_key) == (
                    sandbox.id,
                    idempotency_key,
                ):
                    return run
            done = self.registry.find_idempotent(sandbox.id, idempotency_key)
            if done is not None:
                return Run(done, self._finished_log(done))
        runtime = self.runtimes[sandbox.language]
        execution_id = f"ex-{secrets.token_hex(8)}"
        # Everything is checked before anything is written: a refused exec changes nothing.
        timeout = body.timeout_seconds or self.settings.exec_timeout_seconds
        if max(timeout, body.idle_timeout_seconds or 0) > self.settings.max_exec_timeout_seconds:
            raise Invalid(
                "timeout_seconds and idle_timeout_seconds may be at most "
                f"{self.settings.max_exec_timeout_seconds}",
                code="limit_too_high",
            )
        argv = self._argv(sandbox, runtime, body, execution_id)  # the last check; writes `code`
        execution = Execution(
            execution_id, sandbox.id, argv, test=body.test, idempotency_key=idempotency_key
        )
        self.registry.put_execution(execution)
        run_log = ExecutionLog(
            execution_id,
            self.registry,
            budget=self.settings.output_budget_bytes,
            tail_bytes=self.settings.output_tail_bytes,
            persist=self.settings.persist_events,
        )
        run = Run(execution, run_log, idle_timeout=body.idle_timeout_seconds)
        run_log.emit(ev.START, {"execution_id": execution_id, "sandbox_id": sandbox.id})
        self.runs.start(run, sandbox, runtime, body, timeout)
        return run

    def _argv(self, sandbox: Sandbox, runtime: Runtime, body: ExecBody, eid: str) -> list[str]:
        return [*self._program(sandbox, runtime, body, eid), *(body.args or ())]

    def _program(self, sandbox: Sandbox, runtime: Runtime, body: ExecBody, eid: str) -> list[str]:
        if body.command is not None:
            # bash -c SCRIPT NAME ARGS...: NAME is $0, ARGS are $1, $2, ...
            return ["/bin/bash", "-c", body.command, *(["bash"] if body.args else [])]
        if body.code is not None:
            path = f"{CODE_DIR}/{eid}/{runtime.source_file}"
            workspace = self.workspaces.get(sandbox.id)
            try:
                workspace.write(path, body.code.encode(), len(body.code) * 4 + 1)
            except BaseException:  # e.g. the quota is full: leave no empty folder behind
                with contextlib.suppress(PetriError):
                    workspace.delete(f"{CODE_DIR}/{eid}")
                raise
            return runtime.run_argv(path)
        if body.filename is not None:
            path = "/".join(clean_path(body.filename))
            self.workspaces.get(sandbox.id).read(path)[0].close()  # 404 when it is not there
            return [*runtime.test, path] if body.test else runtime.run_argv(path)
        return list(runtime.test)

    async def kill(self, sandbox_id: str, execution_id: str) -> Execution:
        sandbox = self.get(sandbox_id)
        run = self.runs.live.get(execution_id)
        if run is None or run.execution.sandbox_id != sandbox.id:
            execution = self.execution(sandbox_id, execution_id)
            raise Conflict(
                f"execution {execution.id} is not running ({execution.status})", code="not_running"
            )
        run.killed = True
        await self.runs.stop(run)
        # Answer with the ended run (a second kill is then 409), unless its ending lags.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stopped.wait(), KILL_ANSWER_SECONDS)
        return run.execution

    def execution(self, sandbox_id: str, execution_id: str) -> Execution:
        sandbox = self.get(sandbox_id)
        run = self.runs.live.get(execution_id)
        if run is not None and run.execution.sandbox_id == sandbox.id:
            return run.execution
        execution = self.registry.get_execution(sandbox.id, execution_id[:64])
        if execution is None:
            raise NotFound(f"no execution {execution_id[:64]!r}", code="execution_not_found")
        return execution

    def packages(self, sandbox_id: str) -> dict[str, Any]:
        """The bill of materials of the sandbox's installed dependencies."""
        return self.installer.packages(self.get(sandbox_id))

    def executions(self, sandbox_id: str, limit: int = 100) -> list[Execution]:
        sandbox = self.get(sandbox_id)
        return self.registry.list_executions(sandbox.id, limit=limit)

    def follow(self, sandbox_id: str, execution_id: str, after: int = 0) -> AsyncIterator[Event]:
        execution = self.execution(sandbox_id, execution_id)
        run = self.runs.live.get(execution.id)
        if run is not None:
            return run.log.follow(after)
        return replay(self.registry, execution.id, after)

    def _finished_log(self, execution: Execution) -> ExecutionLog:
        run_log = ExecutionLog(
            execution.id,
            self.registry,
            budget=1,
            tail_bytes=0,
            first_id=self.registry.last_event_id(execution.id) + 1,
        )
        run_log.done.set()
        return run_log

    async def result(self, run: Run) -> dict[str, Any]:
        """The JSON result of a finished run, gathered from its events."""
        stdout: list[str] = []
        stderr: list[str] = []
        install: list[str] = []
        terminal: Event | None = None
        async for event in self.follow(run.execution.sandbox_id, run.execution.id):
            text = event.data.get("text", "")
            if event.type == ev.STDOUT:
                stdout.append(text)
            elif event.type == ev.STDERR:
                stderr.append(text)
            elif event.type == ev.INSTALL:
                install.append(text)
            elif event.terminal:
                terminal = event
        execution = self.execution(run.execution.sandbox_id, run.execution.id)
        result: dict[str, Any] = {
            "execution_id": execution.id,
            "status": execution.status,
            "exit_code": execution.exit_code,
            "stdout": "".join(stdout),
            "stderr": "".join(stderr),
            "duration_ms": execution.duration_ms,
            "timed_out": execution.timed_out,
            "truncated": execution.truncated,
            "oom_killed": execution.oom_killed,
            "killed": execution.killed,
        }
        inst = run.install.public() if run.install else {"status": "skipped", "packages": []}
        inst["log"] = "".join(install)
        result["install"] = inst
        if terminal is not None and terminal.type == ev.ERROR:
            result["error"] = terminal.data
        elif terminal is not None:
            result.update({k: v for k, v in terminal.data.items() if k not in result})
        return result


def _limits(s: Settings, body: CreateSandbox) -> Limits:
    asked = body.limits
    memory = (asked.memory_mb if asked else None) or s.memory_mb
    cpus = (asked.cpus if asked else None) or s.cpus
    pids = (asked.pids if asked else None) or s.pids_limit
    disk = (asked.disk_mb if asked else None) or s.disk_mb
    for name, value, most in (
        ("memory_mb", memory, s.max_memory_mb),
        ("cpus", cpus, s.max_cpus),
        ("pids", pids, s.max_pids_limit),
        ("disk_mb", disk, s.max_disk_mb),
    ):
        if value > most:
            raise Invalid(f"limits.{name} may be at most {most}", code="limit_too_high")
    return Limits(memory, cpus, pids, disk)
