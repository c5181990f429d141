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

from . import audit, auth, files, testmode
from . import events as ev
from .backend import Backend
from .config import Settings
from .containers import Containers
from .deps import Installer
from .errors import Conflict, DockerUnavailable, Gone, Invalid, NotFound, OverLimit, PetriError
from .events import ErrorData, Event, StartData
from .executions import ExecutionLog, replay
from .models import CreateSandbox, ExecBody, Execution, Limits, Sandbox, now, split_env
from .pool import Pool, Warm
from .registry import Registry, instance_id
from .runs import Run, Runs, code_file
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
        backend: Backend,
        workspaces: Workspaces,
        runtimes: dict[str, Runtime],
        installer: Installer | None = None,
        teams: Teams | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.workspaces = workspaces
        self.runtimes = runtimes
        self.installer = installer or Installer()
        self.instance = instance_id(settings.data_dir)
        self.containers = Containers(
            settings, registry, backend, workspaces, runtimes, self.instance
        )
        self.runs = Runs(settings, registry, backend, workspaces, self.installer, self.containers)
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
                            ErrorData.interrupted("the gateway restarted while this ran").data(),
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
                        await self.backend.kill_group(owner.container_id, exec_id, user)

    async def sweep_orphans(self) -> list[str]:
        removed = await self.containers.sweep({s.id for s in self.registry.list_sandboxes()})
        if removed:
            log.info("removed %d orphan container(s)", len(removed))
        return removed

    async def shutdown(self) -> None:
        """Let running execs finish within the grace period, then interrupt them."""
        self._closing = True
        await self.runs.shutdown(self.settings.shutdown_grace_seconds)

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
                        await self.containers.remove(sandbox.id)
                    await self.workspaces.remove(sandbox.id)
                raise
            self._creating.discard(sandbox.id)  # counted by the registry from here on
        if warm is not None:
            return sandbox
        try:
            await self.containers.start(sandbox)
        except BaseException:
            with self.registry.transaction():
                self.registry.delete_sandbox(sandbox.id)
                self.teams.ledger.append(
                    "sandbox.delete",
                    sandbox.id,
                    {"reason": "container_start_failed"},
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
        async with self.containers.locked(sandbox.id):
            if if_expired:
                fresh = self.registry.get_sandbox(sandbox.id)
                busy = bool(self.runs.in_sandbox(sandbox.id))
                if fresh is None or busy or fresh.expires_at > now():
                    return False
            await self.runs.interrupt_sandbox(sandbox.id)
            await self.containers.remove(sandbox.id)
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
        self.containers.forget(sandbox.id)
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

    # --- what the warm pool asks (pool.Provider) ----------------------------------------------

    async def provision(self, sandbox: Sandbox) -> str:
        """A pool entry: what `create` makes, minus the registry row."""
        await self.workspaces.create(sandbox.id, sandbox.limits.disk_mb)
        return await self.containers.launch(sandbox)

    async def unprovision(self, sandbox_id: str) -> None:
        await self.containers.remove(sandbox_id)
        await self.workspaces.remove(sandbox_id)

    def claimed(self, sandbox_id: str) -> bool:
        return self.registry.get_sandbox(sandbox_id) is not None

    # --- executions --------------------------------------------------------------------------

    async def exec(self, sandbox_id: str, body: ExecBody, idempotency_key: str | None) -> Run:
        """Start an execution (or return the one this idempotency key started)."""
        if self._closing:
            raise DockerUnavailable("the gateway is shutting down", code="shutting_down")
        sandbox = self.get(sandbox_id)
        file_digest = None
        if body.filename is not None:  # for the ledger; read off the event loop (up to 16 MiB)
            path = "/".join(clean_path(body.filename))
            workspace = self.workspaces.get(sandbox.id)
            file_digest = await files.digest(workspace, path, SOURCE_DIGEST_MAX_BYTES)
            sandbox = self.get(sandbox_id)
        if (started := self._idempotent(sandbox, idempotency_key)) is not None:
            return started
        runtime = self.runtimes[sandbox.language]
        execution_id = f"ex-{secrets.token_hex(8)}"
        scratch = body.code is not None or body.stdin is not None
        if scratch:  # written off the event loop, once the request's own checks pass
            self._check(sandbox, runtime, body)
            await self.runs.write_scratch(sandbox.id, execution_id, runtime, body)
        try:
            if scratch:
                sandbox = self.get(sandbox_id)
                if (started := self._idempotent(sandbox, idempotency_key)) is not None:
                    self.runs.discard_scratch(sandbox.id, execution_id)
                    return started
            return self._start(sandbox, runtime, body, idempotency_key, execution_id, file_digest)
        except BaseException:  # it never started: no code or stdin file stays behind
            if scratch:
                self.runs.discard_scratch(sandbox.id, execution_id)
            raise

    def _check(self, sandbox: Sandbox, runtime: Runtime, body: ExecBody) -> int:
        """The request's limits and the tenant's quota; the run's timeout."""
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
        return timeout

    def _idempotent(self, sandbox: Sandbox, key: str | None) -> Run | None:
        """The run this `Idempotency-Key` already started in the sandbox, live or ended."""
        if key is None:
            return None
        if (live := self.runs.find_idempotent(sandbox.id, key)) is not None:
            return live
        done = self.registry.find_idempotent(sandbox.id, key)
        return Run(done, self._finished_log(done)) if done is not None else None

    def _start(
        self,
        sandbox: Sandbox,
        runtime: Runtime,
        body: ExecBody,
        idempotency_key: str | None,
        execution_id: str,
        file_digest: str | None,
    ) -> Run:
        """Every check, then the run's record and start: no await, so nothing changes
        between a check and the write it allows. A refused exec changes nothing (its scratch
        files, written before, are removed by `exec`)."""
        timeout = self._check(sandbox, runtime, body)
        # Secrets are the sandbox's tenant's, decrypted for this run only (never stored).
        plain, refs = split_env(body.env)
        vault = self.teams.vault
        sandbox_secrets = vault.resolve(sandbox.tenant, sandbox.secret_env)
        exec_secrets = vault.resolve(sandbox.tenant, refs)
        values = [*sandbox_secrets.values(), *exec_secrets.values()]
        masker = Masker(values) if values else None
        argv = self._argv(sandbox, runtime, body, execution_id)  # the last check
        execution = Execution(
            execution_id, sandbox.id, argv, test=body.test, idempotency_key=idempotency_key
        )
        detail = self._exec_detail(sandbox, body, timeout, plain, refs, file_digest)
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
        # before anything is emitted: nothing unmasked is stored or sent
        run_log.masker = masker
        run = Run(
            execution,
            run_log,
            idle_timeout=body.idle_timeout_seconds,
            env={**plain, **exec_secrets},
        )
        run_log.emit(ev.START, StartData(execution_id, sandbox.id).data())
        # The install and the program see the sandbox's secrets; its registry row never
        # does.
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
        file_digest: str | None,
    ) -> dict[str, Any]:
        """What the ledger says an exec ran: the sha256 of its code or command (or file)."""
        text = body.code if body.code is not None else body.command
        digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else None
        if file_digest is not None:
            digest = file_digest
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
            return runtime.run_argv(code_file(eid, runtime))  # written by `exec`
        if body.filename is not None:
            path = "/".join(clean_path(body.filename))
            self.workspaces.get(sandbox.id).read(path)[0].close()  # 404 when it is not there
            return runtime.run_argv(path)
        raise Invalid("give one of command, code, filename", code="invalid_field")

    async def kill(self, sandbox_id: str, execution_id: str) -> Execution:
        sandbox = self.get(sandbox_id)
        run = self.runs.find(execution_id, sandbox.id)
        if run is None:
            execution = self.execution(sandbox_id, execution_id)
            raise Conflict(
                f"execution {execution.id} is not running ({execution.status})", code="not_running"
            )
        await self.runs.kill(run)
        # Answer with the ended run (a second kill is then 409), unless its ending lags.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stopped.wait(), KILL_ANSWER_SECONDS)
        return run.execution

    def execution(self, sandbox_id: str, execution_id: str) -> Execution:
        scope = auth.current().execution  # an events token reads one execution only
        if scope is not None and scope != execution_id:
            raise NotFound(f"no execution {execution_id[:64]!r}", code="execution_not_found")
        sandbox = self.get(sandbox_id)
        run = self.runs.find(execution_id, sandbox.id)
        if run is not None:
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
        run = self.runs.find(execution.id)
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
