"""The domain: sandbox lifecycle and exec orchestration. No HTTP, no aiodocker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .config import Settings
from .deps import Installer, InstallResult, missing_modules
from .errors import Conflict, DockerUnavailable, Invalid, NotFound, OverLimit, PetriError
from .events import Event
from .executions import ExecutionLog, replay
from .models import CreateSandbox, ExecBody, Execution, Limits, Sandbox, now
from .registry import Registry, instance_id
from .runner import STDOUT, ContainerSpec, Process, Runner
from .runtimes import Runtime
from .workspace import Workspace, Workspaces, clean_path

log = logging.getLogger("petri.sandboxes")
CODE_DIR = ".petri/code"
KILL_GRACE_SECONDS = 2.0
STDERR_TAIL_BYTES = 8192


@dataclass(slots=True)
class Run:
    """A live execution: its record, its event log and the task driving it."""

    execution: Execution
    log: ExecutionLog
    task: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None
    killed: bool = False
    interrupted: bool = False
    install: InstallResult | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    # set just before the program starts: the container it runs in
    container_id: str = ""
    idle_timeout: float | None = None
    idle: bool = False  # ended by the idle-output timeout
    stderr_tail: bytearray = field(default_factory=bytearray)  # for the missing-module hint


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
        self._runs: dict[str, Run] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._oom_seen: dict[str, int] = {}
        self._settling: dict[str, asyncio.Task[None]] = {}
        self._starts = asyncio.Semaphore(settings.max_concurrent_starts)
        self._closing = False

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
        runs = list(self._runs.values())
        if runs:
            done = asyncio.gather(*(r.stopped.wait() for r in runs))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, self.settings.shutdown_grace_seconds)
        for run in list(self._runs.values()):
            run.interrupted = True
            await self._stop(run)
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(run.task), 5)
        if self._settling:
            await asyncio.wait(list(self._settling.values()), timeout=5)

    # --- sandboxes ---------------------------------------------------------------------------

    async def create(self, body: CreateSandbox) -> Sandbox:
        s = self.settings
        runtime = self.runtimes.get(body.language)
        if runtime is None:
            known = ", ".join(sorted(self.runtimes))
            raise Invalid(
                f"unknown language {body.language[:32]!r}; one of: {known}", code="unknown_language"
            )
        if self.registry.count_sandboxes() >= s.max_sandboxes:
            raise OverLimit(
                f"at most {s.max_sandboxes} sandboxes may exist", code="too_many_sandboxes"
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
        await self.workspaces.create(sandbox.id, limits.disk_mb)
        self.registry.put_sandbox(sandbox)
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
                busy = any(r.execution.sandbox_id == sandbox.id for r in self._runs.values())
                if fresh is None or busy or fresh.expires_at > now():
                    return False
            for run in [r for r in self._runs.values() if r.execution.sandbox_id == sandbox.id]:
                run.interrupted = True
                await self._stop(run)
            await self.runner.remove_container(self._container_name(sandbox.id))
            await self.installer.discard(sandbox)  # a running install ends with the sandbox
            await self.workspaces.remove(sandbox.id)
            self.registry.delete_sandbox(sandbox.id)
        self._locks.pop(sandbox.id, None)
        self._oom_seen.pop(sandbox.id, None)
        return True

    async def reap_expired(self) -> list[str]:
        """Remove sandboxes idle past their TTL. A running execution counts as activity."""
        busy = {r.execution.sandbox_id for r in self._runs.values()}
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
        spec = ContainerSpec(
            name=self._container_name(sandbox.id),
            image=runtime.image,
            labels={**self.labels, "petri.sandbox": sandbox.id, "petri.role": "sandbox"},
            binds=[f"{self.workspaces.get(sandbox.id).root}:/sandbox:rw"],
            env={**runtime.env, **sandbox.env},
            user=s.sandbox_user,
            memory_mb=sandbox.limits.memory_mb,
            cpus=sandbox.limits.cpus,
            pids=sandbox.limits.pids,
            nofile=s.nofile,
            fsize_mb=s.fsize_mb,
            tmpfs_mb=s.tmpfs_mb,
            runtime=s.docker_runtime,
        )
        async with self._starts:
            await self.runner.remove_container(spec.name)
            container_id = await self.runner.start_container(spec)
        sandbox.container_id = container_id
        self.registry.put_sandbox(sandbox)
        self._oom_seen[sandbox.id] = 0
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
            for run in self._runs.values():
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
        argv = self._argv(sandbox, runtime, body, execution_id)
        timeout = body.timeout_seconds or self.settings.exec_timeout_seconds
        if max(timeout, body.idle_timeout_seconds or 0) > self.settings.max_exec_timeout_seconds:
            raise Invalid(
                "timeout_seconds and idle_timeout_seconds may be at most "
                f"{self.settings.max_exec_timeout_seconds}",
                code="limit_too_high",
            )
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
        self._runs[execution_id] = run
        run_log.emit(ev.START, {"execution_id": execution_id, "sandbox_id": sandbox.id})
        run.task = asyncio.create_task(self._drive(run, sandbox, runtime, body, timeout))
        return run

    def _argv(self, sandbox: Sandbox, runtime: Runtime, body: ExecBody, eid: str) -> list[str]:
        if body.command is not None:
            return ["/bin/bash", "-c", body.command]
        if body.code is not None:
            path = f"{CODE_DIR}/{eid}/{runtime.source_file}"
            self.workspaces.get(sandbox.id).write(path, body.code.encode(), len(body.code) * 4 + 1)
            return runtime.run_argv(path)
        if body.filename is not None:
            path = "/".join(clean_path(body.filename))
            self.workspaces.get(sandbox.id).read(path)[0].close()  # 404 when it is not there
            return [*runtime.test, path] if body.test else runtime.run_argv(path)
        return list(runtime.test)

    async def _drive(
        self, run: Run, sandbox: Sandbox, runtime: Runtime, body: ExecBody, seconds: float
    ) -> None:
        execution, out = run.execution, run.log
        try:
            container_id = await self._ensure_container(sandbox)
            run.install = await self.installer.prepare(sandbox, runtime, out)
            if run.install.status == "failed":
                self._end(
                    run,
                    "failed",
                    ev.ERROR,
                    {
                        "code": "install_failed",
                        "message": "dependency install failed:\n" + run.install.log[-4000:],
                    },
                )
                return
            if run.interrupted:
                raise asyncio.CancelledError
            if run.killed:  # killed before it started: as if SIGKILLed at once
                self._end(run, "killed", ev.EXIT, _killed_at_once(), exit_code=137)
                return
            env = {
                **runtime.env,
                **self.installer.exec_env(sandbox, runtime),
                **sandbox.env,
                **(body.env or {}),
            }
            stdin = body.stdin.encode() if body.stdin is not None else None
            await self._settled(sandbox.id)
            run.container_id = container_id
            proc = await self.runner.exec(
                container_id,
                execution.id,
                execution.argv,
                env=env,
                user=self.settings.sandbox_user,
                stdin=stdin,
            )
            timed_out = await self._pump(run, proc, seconds)
            exit_code = await proc.exit_code()
            oom = await self._oom_killed(sandbox.id, container_id, exit_code, run, timed_out)
            out.close_output()
            status = (
                "interrupted"
                if run.interrupted
                else "killed"
                if run.killed
                else "timed_out"
                if timed_out
                else "exited"
            )
            execution.timed_out, execution.oom_killed = timed_out, oom
            execution.truncated = out.budget.truncated
            if run.interrupted:
                self._end(
                    run,
                    status,
                    ev.ERROR,
                    {"code": "interrupted", "message": "the execution was stopped by the gateway"},
                )
                return
            data: dict[str, Any] = {
                "exit_code": exit_code,
                "timed_out": timed_out,
                "truncated": out.budget.truncated,
                "oom_killed": oom,
                "idle": run.idle,
            }
            if exit_code != 0:
                tail = run.stderr_tail.decode("utf-8", "replace")
                if missing := missing_modules(runtime, tail):
                    data["missing_modules"] = missing
            if exit_code > 128 or run.killed or timed_out:
                with contextlib.suppress(ValueError):
                    data["signal"] = signal.Signals(exit_code - 128).name
            self._end(run, status, ev.EXIT, data, exit_code=exit_code)
        except asyncio.CancelledError:
            self._end(
                run,
                "interrupted",
                ev.ERROR,
                {"code": "interrupted", "message": "the execution was stopped before it ran"},
            )
        except PetriError as exc:
            self._end(run, "failed", ev.ERROR, {"code": exc.code, "message": exc.message})
        except Exception as exc:  # the stream must still end with one terminal event
            log.exception("execution %s failed", execution.id)
            self._end(run, "failed", ev.ERROR, {"code": "internal_error", "message": str(exc)})
        finally:
            if body.code is not None:
                with contextlib.suppress(PetriError):
                    self.workspaces.get(sandbox.id).delete(f"{CODE_DIR}/{execution.id}")
            self._runs.pop(execution.id, None)
            if run.container_id:
                self._after(sandbox.id, run)
            run.stopped.set()
            with contextlib.suppress(PetriError):
                self.registry.touch_sandbox(sandbox.id, now())

    async def _pump(self, run: Run, proc: Process, seconds: float) -> bool:
        """Stream output into the log until EOF; on the wall-clock timeout, or when no output
        came for `run.idle_timeout` seconds, kill the group. True if it timed out."""
        out = run.log
        loop = asyncio.get_running_loop()
        deadline = last_output = loop.time()
        deadline += seconds

        async def drain() -> None:
            nonlocal last_output
            async for kind, data in proc.output():
                last_output = loop.time()
                out.output(ev.STDOUT if kind == STDOUT else ev.STDERR, data)
                if kind != STDOUT:
                    run.stderr_tail += data
                    del run.stderr_tail[:-STDERR_TAIL_BYTES]

        reader = asyncio.create_task(drain())
        run.reader = reader
        try:
            while True:
                wait = deadline - loop.time()
                if run.idle_timeout is not None:
                    wait = min(wait, last_output + run.idle_timeout - loop.time())
                if wait <= 0:
                    break
                done, _ = await asyncio.wait({reader}, timeout=wait)
                if done:
                    reader.result()  # a failed read ends the run as an error
                    return False
            if run.killed or run.interrupted:
                return False
            run.idle = loop.time() < deadline
            await self._stop(run)
            return True
        finally:
            if not reader.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), 3 * KILL_GRACE_SECONDS)
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, PetriError):
                await reader

    async def _stop(self, run: Run) -> None:
        """SIGKILL an execution's process group; if its output still does not end (a process
        left the group), every process of the sandbox user; if even that does not end it (no
        helper could start), the container itself: the next exec gets a new one."""
        sandbox = self.registry.get_sandbox(run.execution.sandbox_id)
        container_id = run.container_id or (sandbox.container_id if sandbox else "")
        if not container_id:
            return
        user, eid = self.settings.sandbox_user, run.execution.id
        steps: tuple[Callable[[], Awaitable[None]], ...] = (
            lambda: self.runner.kill_group(container_id, eid, user),
            lambda: self.runner.kill_all(container_id, user),
            lambda: self.runner.kill_container(container_id),
        )
        for step in steps:
            with contextlib.suppress(PetriError):
                await step()
            reader = run.reader
            if reader is None:
                return
            await asyncio.wait({reader}, timeout=KILL_GRACE_SECONDS)
            if reader.done():
                return
            log.warning("execution %s still has output after a kill; escalating", eid)

    async def _settled(self, sandbox_id: str) -> None:
        """Wait until the clean-up after the sandbox's previous exec is done (`_after`)."""
        task = self._settling.get(sandbox_id)
        if task is not None:
            await asyncio.wait({task})

    def _after(self, sandbox_id: str, run: Run) -> None:
        """Once an exec ended, kill what it left behind (its group; with no other exec running
        in the sandbox, every process of the sandbox user), so a fork bomb or a stray daemon
        cannot hold the sandbox's pids, memory or CPU. Runs after the terminal event; the
        sandbox's next exec waits for it."""
        previous = self._settling.get(sandbox_id)

        async def settle() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            running = self._runs.values()
            busy = any(r.container_id and r.execution.sandbox_id == sandbox_id for r in running)
            try:
                await self.runner.settle(
                    run.container_id,
                    run.execution.id,
                    self.settings.sandbox_user,
                    everything=not busy,
                )
            except PetriError as exc:
                log.info("clean-up after %s: %s", run.execution.id, exc.message)

        task = asyncio.create_task(settle())
        self._settling[sandbox_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._settling.get(sandbox_id) is done:
                del self._settling[sandbox_id]

        task.add_done_callback(forget)

    async def _oom_killed(
        self, sandbox_id: str, container_id: str, code: int, run: Run, timed_out: bool
    ) -> bool:
        if code != 137 or run.killed or timed_out or run.interrupted:
            return False
        try:
            count = await self.runner.oom_kills(container_id, self.settings.sandbox_user)
        except PetriError:  # the container died with the program (e.g. the host killed it)
            return False
        seen = self._oom_seen.get(sandbox_id, 0)
        self._oom_seen[sandbox_id] = count
        return count > seen

    def _end(
        self, run: Run, status: str, type_: str, data: dict[str, Any], exit_code: int | None = None
    ) -> None:
        execution = run.execution
        execution.status = status  # type: ignore[assignment]
        execution.exit_code = exit_code
        execution.ended_at = now()
        execution.error_code = data.get("code") if type_ == ev.ERROR else None
        if type_ == ev.EXIT:
            data["duration_ms"] = execution.duration_ms
        self.registry.put_execution(execution)
        if run.log.terminal is None:
            run.log.emit(type_, data)

    async def kill(self, sandbox_id: str, execution_id: str) -> Execution:
        sandbox = self.get(sandbox_id)
        run = self._runs.get(execution_id)
        if run is None or run.execution.sandbox_id != sandbox.id:
            execution = self.execution(sandbox_id, execution_id)
            raise Conflict(
                f"execution {execution.id} is not running ({execution.status})", code="not_running"
            )
        run.killed = True
        await self._stop(run)
        return run.execution

    def execution(self, sandbox_id: str, execution_id: str) -> Execution:
        sandbox = self.get(sandbox_id)
        run = self._runs.get(execution_id)
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
        run = self._runs.get(execution.id)
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
        }
        inst = run.install.public() if run.install else {"status": "skipped", "packages": []}
        inst["log"] = "".join(install)
        result["install"] = inst
        if terminal is not None and terminal.type == ev.ERROR:
            result["error"] = terminal.data
        elif terminal is not None:
            result.update({k: v for k, v in terminal.data.items() if k not in result})
        return result


def _killed_at_once() -> dict[str, Any]:
    return {
        "exit_code": 137,
        "timed_out": False,
        "truncated": False,
        "oom_killed": False,
        "idle": False,
        "signal": "SIGKILL",
    }


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
