"""The domain: sandbox lifecycle and exec orchestration. No HTTP, no aiodocker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from . import audit, auth, testmode
from . import events as ev
from .config import Settings
from .deps import Installer
from .errors import Conflict, DockerUnavailable, Gone, Invalid, NotFound, OverLimit, PetriError
from .events import Event
from .executions import ExecutionLog, replay
from .models import CreateSandbox, ExecBody, Execution, Limits, Sandbox, now, split_env
from .pool import Pool, Warm
from .registry import Registry, instance_id
from .runner import ContainerSpec, Runner
from .runs import CODE_DIR, Run, Runs
from .runtimes import Runtime
from .teams import Teams
from .vault import Masker, SecretNotFound
from .workspace import Workspace, Workspaces, clean_path

log = logging.getLogger("petri.sandboxes")
SOURCE_DIGEST_MAX_BYTES = 16 * 1024 * 1024  # larger files are recorded by name only
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
        teams: Teams | None = None,
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
        self.teams = teams or Teams.open(settings, registry)
        self.runs.on_end += [self._record_end, self._measure_end]
        self._creating: set[str] = set()  # sandboxes being created, not yet in the registry
        self.pool: Pool | None = None  # the warm pool (service.py), claimed in `create`

    # --- lifecycle of the gateway ------------------------------------------------------------

    async def recover(self) -> None:
        """After a (crash) restart: interrupt what was running, sweep unknown containers."""
        interrupted = self.registry.running_executions()
        for execution in interrupted:
            execution.status, execution.error_code = "interrupted", "interrupted"
            execution.ended_at = now()
            last = self.registry.last_event_id(execution.id)
            with self.registry.transaction():
                self.registry.put_execution(execution)
                self.registry.append_events(
                    execution.id,
                    [
                        Event(
                            last + 1,
                            ev.ERROR,
                            {
                                "code": "interrupted",
                                "message": "the gateway restarted while this ran",
                            },
                        )
                    ],
                )
                self._record_finish(execution)
        await self.sweep_orphans()
        for sandbox in self.registry.list_sandboxes():
            with contextlib.suppress(OSError):
                await self.workspaces.remount(sandbox.id)
        # Their processes outlived the gateway in the sandbox containers: end them.
        for execution in interrupted:
            owner = self.registry.get_sandbox(execution.sandbox_id)
            if owner is not None and owner.container_id:
                for exec_id in testmode.exec_ids(execution):  # a test run's app too
                    with contextlib.suppress(PetriError):
                        user = self.settings.sandbox_user
                        await self.runner.kill_group(owner.container_id, exec_id, user)

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
        tenant = auth.current().tenant
        plain, refs = split_env(body.env)
        missing = self.teams.vault.missing(tenant, refs.values())
        if missing:
            raise SecretNotFound(f"env: no secret {missing[0]!r} in this tenant")
        at = now()
        sandbox = Sandbox(
            f"sb-{secrets.token_hex(8)}",
            runtime.name,
            "running",
            at,
            at,
            ttl,
            limits,
            plain,
            tenant=tenant,
            secret_env=refs,
        )
        # The slot is taken before the first await: creates in flight count against the cap
        # until their row exists, so a burst cannot overshoot it.
        if self.registry.count_sandboxes() + len(self._creating) >= s.max_sandboxes:
            raise OverLimit(
                f"at most {s.max_sandboxes} sandboxes may exist", code="too_many_sandboxes"
            )
        with self.teams.quotas.sandbox(tenant):  # the tenant's slot, taken before any await
            # The pool's one hook: a warm entry (workspace mounted, container running) when
            # this create would make exactly what it holds; else the cold path below.
            warm: Warm | None = None
            if self.pool is not None and self.pool.fits(runtime.name, limits, plain):
                warm = self.pool.claim(runtime.name)
            if warm is not None:
                sandbox.id, sandbox.container_id = warm.sandbox_id, warm.container_id
            self._creating.add(sandbox.id)
            try:
                if warm is None:
                    await self.workspaces.create(sandbox.id, limits.disk_mb)
                with self.registry.transaction():
                    self.registry.put_sandbox(sandbox)
                    self.teams.ledger.append(
                        "sandbox.create", sandbox.id, _sandbox_detail(sandbox), tenant=tenant
                    )
            except BaseException:
                self._creating.discard(sandbox.id)
                with contextlib.suppress(Exception):
                    if warm is not None:
                        await self.runner.remove_container(warm.container_id)
                    await self.workspaces.remove(sandbox.id)
                raise
            self._creating.discard(sandbox.id)  # counted by the registry from here on
        if warm is not None:
            self.runs.new_container(sandbox.id)
            return sandbox
        try:
            await self._start_container(sandbox)
        except BaseException:
            with self.registry.transaction():
                self.registry.delete_sandbox(sandbox.id)
                self.teams.ledger.append(
                    "sandbox.delete", sandbox.id, {"reason": "container_start_failed"},
                    tenant=tenant,
                )
            await self.workspaces.remove(sandbox.id)
            raise
        return sandbox

    def get(self, sandbox_id: str, *, touch: bool = True) -> Sandbox:
        sandbox = self.registry.get_sandbox(sandbox_id) if len(sandbox_id) < 64 else None
        # Another tenant's sandbox is exactly as absent as one that never was.
        if sandbox is None or not auth.current().sees(sandbox.tenant):
            raise NotFound(f"no sandbox {sandbox_id[:64]!r}", code="sandbox_not_found")
        audit.touches(sandbox.tenant)
        if touch:
            sandbox.last_active_at = now()
            self.registry.touch_sandbox(sandbox.id, sandbox.last_active_at)
        return sandbox

    def page(self, *, limit: int, after: str) -> list[Sandbox]:
        principal = auth.current()
        tenant = None if principal.admin else principal.tenant
        return self.registry.list_sandboxes(limit=limit, after=after, tenant=tenant)

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
            with self.registry.transaction():
                self.registry.delete_sandbox(sandbox.id)
                self.teams.ledger.append(
                    "sandbox.delete",
                    sandbox.id,
                    {"reason": "ttl" if if_expired else "request"},
                    tenant=sandbox.tenant,
                )
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

    # --- what the warm pool asks (pool.Provider) ----------------------------------------------

    async def provision(self, sandbox: Sandbox) -> str:
        """A pool entry: what `create` makes, minus the registry row."""
        await self.workspaces.create(sandbox.id, sandbox.limits.disk_mb)
        return await self._launch(sandbox)

    async def unprovision(self, sandbox_id: str) -> None:
        await self.runner.remove_container(self._container_name(sandbox_id))
        await self.workspaces.remove(sandbox_id)

    def claimed(self, sandbox_id: str) -> bool:
        return self.registry.get_sandbox(sandbox_id) is not None

    # ------------------------------------------------------------------------------------------

    async def _start_container(self, sandbox: Sandbox) -> str:
        container_id = await self._launch(sandbox)
        sandbox.container_id = container_id
        self.registry.put_sandbox(sandbox)
        self.runs.new_container(sandbox.id)
        return container_id

    async def _launch(self, sandbox: Sandbox) -> str:
        """Start the sandbox's container (replacing one of its name); its id."""
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
        return await self.runner.start_container(spec)  # within the runner's slots

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
        if body.test:
            testmode.check(runtime, body, timeout)
        self.teams.quotas.execution(sandbox.tenant)
        # Secrets are the sandbox's tenant's, decrypted for this run only (never stored).
        plain, refs = split_env(body.env)
        vault = self.teams.vault
        sandbox_secrets = vault.resolve(sandbox.tenant, sandbox.secret_env)
        exec_secrets = vault.resolve(sandbox.tenant, refs)
        values = [*sandbox_secrets.values(), *exec_secrets.values()]
        masker = Masker(values) if values else None
        argv = self._argv(sandbox, runtime, body, execution_id)  # the last check; writes `code`
        execution = Execution(
            execution_id, sandbox.id, argv, test=body.test, idempotency_key=idempotency_key
        )
        detail = self._exec_detail(sandbox, body, timeout, plain, refs)
        metadata = dict(body.metadata or {})
        with self.registry.transaction():
            self.registry.put_execution(execution)
            self.teams.ledger.append(
                "exec.start",
                execution_id,
                masker.value(detail) if masker else detail,
                metadata=masker.value(metadata) if masker else metadata,
                tenant=sandbox.tenant,
            )
        run_log = ExecutionLog(
            execution_id,
            self.registry,
            budget=self.settings.output_budget_bytes,
            tail_bytes=self.settings.output_tail_bytes,
            persist=self.settings.persist_events,
        )
        run_log.masker = masker  # before anything is emitted: nothing unmasked is stored or sent
        run = Run(
            execution,
            run_log,
            idle_timeout=body.idle_timeout_seconds,
            env={**plain, **exec_secrets},
        )
        run_log.emit(ev.START, {"execution_id": execution_id, "sandbox_id": sandbox.id})
        # The install and the program see the sandbox's secrets; its registry row never does.
        with_secrets = dataclasses.replace(sandbox, env={**sandbox.env, **sandbox_secrets})
        self.runs.start(run, with_secrets, runtime, body, timeout)
        return run

    def _exec_detail(
        self,
        sandbox: Sandbox,
        body: ExecBody,
        timeout: int,
        plain: dict[str, str],
        refs: dict[str, str],
    ) -> dict[str, Any]:
        """What the ledger says an exec ran: the sha256 of its code or command (or file)."""
        text = body.code if body.code is not None else body.command
        digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else None
        if body.filename is not None:
            with contextlib.suppress(PetriError, OSError):
                handle, size = self.workspaces.get(sandbox.id).read(
                    "/".join(clean_path(body.filename))
                )
                with handle:
                    if size <= SOURCE_DIGEST_MAX_BYTES:
                        digest = hashlib.sha256(handle.read()).hexdigest()
        source = next(
            (n for n in ("command", "code", "filename") if getattr(body, n) is not None), "test"
        )
        return {
            "sandbox_id": sandbox.id,
            "language": sandbox.language,
            "source": source,
            "sha256": digest,
            "filename": body.filename,
            "test": body.test,
            "timeout_seconds": timeout,
            "env": sorted({*plain, *refs}),
            "secrets": sorted({*refs.values(), *sandbox.secret_env.values()}),
        }

    def _record_end(self, run: Run) -> None:
        """Runs' end hook, inside the transaction that stores the final record."""
        self._record_finish(run.execution)

    def _record_finish(self, execution: Execution) -> None:
        start = self.teams.ledger.find("exec.start", execution.id)
        detail = {
            "sandbox_id": execution.sandbox_id,
            "status": execution.status,
            "exit_code": execution.exit_code,
            "duration_ms": execution.duration_ms,
            "timed_out": execution.timed_out,
            "oom_killed": execution.oom_killed,
            "truncated": execution.truncated,
            "killed": execution.killed,
            "error_code": execution.error_code,
            "sha256": start["detail"].get("sha256") if start else None,
        }
        try:
            self.teams.ledger.append(
                "exec.finish",
                execution.id,
                detail,
                metadata=start["metadata"] if start else None,
                tenant=start["tenant"] if start else None,
            )
        except sqlite3.Error:  # the stream must still end; the log says what went unrecorded
            log.exception("could not append the audit record of %s's end", execution.id)

    def _measure_end(self, run: Run) -> None:
        execution, metrics = run.execution, self.teams.metrics
        seconds = execution.duration_ms / 1000 if execution.duration_ms is not None else None
        metrics.finished(execution.status, seconds, run.log.first_output)
        if run.install is not None:
            metrics.install(run.install.status)

    def _argv(self, sandbox: Sandbox, runtime: Runtime, body: ExecBody, eid: str) -> list[str]:
        if body.test and runtime.test is not None:
            # The runner is picked when the run starts, after install (testmode.begin).
            paths = []
            if body.filename is not None:
                path = "/".join(clean_path(body.filename))
                workspace = self.workspaces.get(sandbox.id)
                if not workspace.is_dir(path):
                    workspace.read(path)[0].close()  # 404 when it is not there
                paths.append(path)
            script = body.command if body.command is not None else runtime.test.runners[0].run
            return testmode.runner_argv(script, paths)
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
            return runtime.run_argv(path)
        raise Invalid("give one of command, code, filename", code="invalid_field")

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
        scope = auth.current().execution  # an events token reads one execution only
        if scope is not None and scope != execution_id:
            raise NotFound(f"no execution {execution_id[:64]!r}", code="execution_not_found")
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
        if self.teams.retention.evicted(execution.id):
            raise Gone(
                f"the events of {execution.id} were removed by retention "
                "(PETRI_EVENTS_RETENTION_HOURS, PETRI_EVENTS_MAX_MB); its record remains",
                code="expired",
            )
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
        app: dict[str, list[str]] = {ev.STDOUT: [], ev.STDERR: []}
        tests: dict[str, Any] | None = None
        ready: dict[str, Any] | None = None
        terminal: Event | None = None
        async for event in self.follow(run.execution.sandbox_id, run.execution.id):
            text = event.data.get("text", "")
            if event.type == ev.STDOUT:
                stdout.append(text)
            elif event.type == ev.STDERR:
                stderr.append(text)
            elif event.type == ev.INSTALL:
                install.append(text)
            elif event.type == ev.APP:
                app.get(event.data.get("stream", ""), app[ev.STDERR]).append(text)
            elif event.type == ev.READY:
                ready = event.data
            elif event.type == ev.REPORT:
                tests = event.data
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
        if execution.test:  # test mode: the whole report, and the app's output
            result["tests"] = tests
            if app[ev.STDOUT] or app[ev.STDERR] or ready is not None:
                result["app"] = {
                    "ready_after_ms": ready["after_ms"] if ready else None,
                    "stdout": "".join(app[ev.STDOUT]),
                    "stderr": "".join(app[ev.STDERR]),
                }
        if terminal is not None and terminal.type == ev.ERROR:
            result["error"] = terminal.data
        elif terminal is not None:
            result.update({k: v for k, v in terminal.data.items() if k not in result})
        return result


def _sandbox_detail(sandbox: Sandbox) -> dict[str, Any]:
    return {
        "language": sandbox.language,
        "ttl_seconds": sandbox.ttl_seconds,
        "limits": dataclasses.asdict(sandbox.limits),
        "env": sorted(sandbox.env),
        "secret_env": dict(sorted(sandbox.secret_env.items())),
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
