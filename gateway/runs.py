"""The executions running in one gateway: the task that drives each one (container, install,
exec), its output pump and timeouts, kills that escalate, and the clean-up after it ends.
No HTTP, no aiodocker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from . import events as ev
from . import tree
from .backend import STDOUT, Backend, Process
from .config import Settings
from .containers import Containers
from .deps import Installer, InstallResult, missing_modules
from .errors import ContainerGone, NotFound, PetriError
from .events import ErrorData, ExitData, Terminal
from .executions import ExecutionLog
from .models import ExecBody, Execution, ExecutionStatus, Sandbox, now
from .registry import Registry
from .runtimes import Runtime
from .testmode import TestSession
from .workspace import Workspaces

log = logging.getLogger("petri.runs")
CODE_DIR = ".petri/code"
STDIN_NAME = ".stdin"  # beside the code file; no runtime names its source so


def code_folder(execution_id: str) -> str:
    """An exec's scratch folder in its workspace: its `code` file and its stdin."""
    return f"{CODE_DIR}/{execution_id}"


def code_file(execution_id: str, runtime: Runtime) -> str:
    """Where an exec's `code` is written, relative to the workspace."""
    return f"{code_folder(execution_id)}/{runtime.source_file}"


def stdin_file(execution_id: str) -> str:
    return f"{code_folder(execution_id)}/{STDIN_NAME}"


STOPPED_BY_GATEWAY = "the execution was stopped by the gateway"
STOPPED_BEFORE_IT_RAN = "the execution was stopped before it ran"
KILLED_BEFORE_IT_RAN = ExitData(137, killed=True, signal="SIGKILL")  # as if SIGKILLed at once
SCRATCH_SECONDS = 60.0  # removing one run's scratch folder
KILL_GRACE_SECONDS = 2.0
INSTALL_STOP_SECONDS = 15.0  # how long a kill waits for a cancelled install to clean up
STDERR_TAIL_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a run is being stopped, set once (`Run.stop_as`): the first reason wins.

    `killed`: `POST .../kill` or a service's stop (an `exit` event, status `killed`);
    `interrupted`: the gateway ended it (its sandbox deleted, a shutdown; an `interrupted`
    error); `failed`: the gateway gave up on it (a service never ready; `error` is sent)."""

    kind: Literal["killed", "interrupted", "failed"]
    error: ErrorData | None = None


KILLED, INTERRUPTED = Ending("killed"), Ending("interrupted")


@dataclass(slots=True)
class Run:
    """A live execution: its record, its event log and the task driving it."""

    execution: Execution
    log: ExecutionLog
    task: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None
    ending: Ending | None = None  # set once, by `Runs.kill` / `interrupt` / `fail`
    install: InstallResult | None = None
    installing: asyncio.Task[InstallResult] | None = None  # while the install phase runs
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    # set just before the program starts: the container it runs in
    container_id: str = ""
    idle_timeout: float | None = None
    idle: bool = False  # ended by the idle-output timeout
    stderr_tail: bytearray = field(default_factory=bytearray)  # for the missing-module hint
    env: dict[str, str] = field(default_factory=dict)  # the exec's own env, secrets resolved
    # serve mode: while it runs, the clean-up after other execs spares its process group
    service: bool = False
    tests: TestSession | None = None  # test mode (gateway/testmode.py)
    scratch: str | None = None  # the folder of its `code` and stdin (`code_folder`), removed

    def stop_as(self, ending: Ending) -> bool:
        """Record why the run is stopped; False if a reason was already recorded."""
        if self.ending is not None:
            return False
        self.ending = ending
        return True

    @property
    def killed(self) -> bool:
        return self.ending is not None and self.ending.kind == "killed"

    @property
    def interrupted(self) -> bool:
        return self.ending is not None and self.ending.kind == "interrupted"

    @property
    def stopping(self) -> bool:
        return self.ending is not None


class Runs:
    """Live runs by execution id. `start` hands a run to a task that owns it to the end."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        backend: Backend,
        workspaces: Workspaces,
        installer: Installer,
        containers: Containers,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.workspaces = workspaces
        self.installer = installer
        self.containers = containers
        self.live: dict[str, Run] = {}
        self._oom_seen: dict[str, tuple[str, int]] = {}  # sandbox -> (container, OOM kills)
        self._settling: dict[str, asyncio.Task[None]] = {}
        # Called with each run as it ends, inside the transaction storing its final record
        # (the audit ledger appends there); they must not raise.
        self.on_end: list[Callable[[Run], None]] = []

    def start(
        self, run: Run, sandbox: Sandbox, runtime: Runtime, body: ExecBody, seconds: float
    ) -> None:
        self.live[run.execution.id] = run
        if body.code is not None or body.stdin is not None:
            run.scratch = code_folder(run.execution.id)
        if body.test:
            run.tests = TestSession(
                settings=self.settings,
                backend=self.backend,
                runtime=runtime,
                body=body,
                execution=run.execution,
                out=run.log,
                workspace=self.workspaces.get(sandbox.id),
                seconds=seconds,
                stop_exec=lambda cid, eid, reader_of: self.stop_exec(
                    cid, eid, reader_of, sandbox.id
                ),
            )
        run.task = asyncio.create_task(self._own(run, sandbox, runtime, body, seconds))

    async def _own(
        self, run: Run, sandbox: Sandbox, runtime: Runtime, body: ExecBody, seconds: float
    ) -> None:
        """`_drive`, whose ending (`_finish`) always runs; an error that escapes even its
        handlers is logged here, never left in the task for a shutdown to trip over."""
        try:
            await self._drive(run, sandbox, runtime, body, seconds)
        except Exception:
            log.exception("execution %s: its ending failed", run.execution.id)

    # --- finding and stopping runs ----------------------------------------------------------

    def find(self, execution_id: str, sandbox_id: str | None = None) -> Run | None:
        """The live run of that execution (in that sandbox, if given)."""
        run = self.live.get(execution_id)
        if run is None or (sandbox_id is not None and run.execution.sandbox_id != sandbox_id):
            return None
        return run

    def find_idempotent(self, sandbox_id: str, key: str) -> Run | None:
        """The live run an `Idempotency-Key` started in the sandbox."""
        for run in self.live.values():
            if (run.execution.sandbox_id, run.execution.idempotency_key) == (sandbox_id, key):
                return run
        return None

    async def kill(self, run: Run) -> None:
        """`POST .../kill`, a service's stop: the run ends with `exit`, status `killed`."""
        run.stop_as(KILLED)
        await self.stop(run)

    async def interrupt(self, run: Run) -> None:
        """The gateway ends the run (its sandbox goes, a shutdown): an `interrupted` error."""
        run.stop_as(INTERRUPTED)
        await self.stop(run)

    async def fail(self, run: Run, error: ErrorData) -> None:
        """The gateway gives up on the run (a service never ready): it ends with `error`."""
        run.stop_as(Ending("failed", error))
        await self.stop(run)

    async def interrupt_sandbox(self, sandbox_id: str) -> None:
        for run in self.in_sandbox(sandbox_id):
            await self.interrupt(run)

    async def shutdown(self, grace: float) -> None:
        """Let running execs finish within `grace` seconds, then interrupt them and wait
        (bounded) for their endings and clean-ups."""
        runs = list(self.live.values())
        # Services never finish by themselves: they are interrupted at once, below.
        finishing = [r for r in runs if not r.service]
        if finishing:
            done = asyncio.gather(*(r.stopped.wait() for r in finishing))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, grace)
        for run in list(self.live.values()):
            await self.interrupt(run)
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(run.task), 5)
        await self.settle_all(5)

    # --- the scratch folder: the file of `{"code": ...}`, and stdin -------------------------

    async def write_scratch(
        self, sandbox_id: str, execution_id: str, runtime: Runtime, body: ExecBody
    ) -> None:
        """Write an exec's `code` and `stdin` (up to 16 MiB each) into its scratch folder, in
        a thread. The folder goes when the run ended (`_after`), or with `discard_scratch`
        when the exec was refused before it started; a failed write leaves none."""
        workspace = self.workspaces.get(sandbox_id)
        files = []
        if body.code is not None:
            files.append((code_file(execution_id, runtime), body.code))
        if body.stdin is not None:
            files.append((stdin_file(execution_id), body.stdin))

        def write() -> None:
            try:
                for path, text in files:
                    data = text.encode()
                    workspace.write(path, data, len(data))
            except BaseException:  # e.g. the quota is full: leave no empty folder behind
                self.discard_scratch(sandbox_id, execution_id)
                raise

        done = asyncio.get_running_loop().run_in_executor(None, write)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:  # the request went: the folder goes once written
            done.add_done_callback(lambda _: self.discard_scratch(sandbox_id, execution_id))
            raise

    def discard_scratch(self, sandbox_id: str, execution_id: str) -> None:
        with contextlib.suppress(PetriError):
            self.workspaces.get(sandbox_id).delete(code_folder(execution_id))

    # --- what runs where --------------------------------------------------------------------

    def in_sandbox(self, sandbox_id: str) -> list[Run]:
        return [r for r in self.live.values() if r.execution.sandbox_id == sandbox_id]

    def services_in(self, sandbox_id: str) -> list[str]:
        """Execution ids of the sandbox's running services (spared by kill-alls)."""
        return [
            r.execution.id
            for r in self.live.values()
            if r.service and r.container_id and r.execution.sandbox_id == sandbox_id
        ]

    def busy(self) -> set[str]:
        """Sandboxes with a running execution (which counts as activity)."""
        return {r.execution.sandbox_id for r in self.live.values()}

    def forget(self, sandbox_id: str) -> None:
        self._oom_seen.pop(sandbox_id, None)

    async def settle_all(self, seconds: float) -> None:
        """Wait (bounded) for the clean-ups still running after ended execs."""
        if self._settling:
            await asyncio.wait(list(self._settling.values()), timeout=seconds)

    async def _drive(
        self, run: Run, sandbox: Sandbox, runtime: Runtime, body: ExecBody, seconds: float
    ) -> None:
        execution, out = run.execution, run.log
        # The exec's deadline starts now: the install and the program share it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            # Test mode execs into the container before the program (its app): checked first.
            container_id = await self.containers.ensure(sandbox, trust=run.tests is None)
            run.install = await self._install(run, sandbox, runtime, deadline)
            if run.ending is not None and run.ending.error is not None:
                self._end(run, "failed", run.ending.error)
                return
            if run.interrupted or (run.install is None and not run.killed):
                raise asyncio.CancelledError
            if run.killed:  # killed before it started: as if SIGKILLed at once
                self._end(run, "killed", KILLED_BEFORE_IT_RAN)
                return
            if run.install is not None and run.install.status == "failed":
                execution.timed_out = run.install.timed_out
                self._end(
                    run,
                    "timed_out" if run.install.timed_out else "failed",
                    ErrorData(
                        "install_failed",
                        "dependency install failed:\n" + run.install.log[-4000:],
                    ),
                )
                return
            env = {
                **runtime.env,
                **self.installer.exec_env(sandbox, runtime),
                **sandbox.env,
                **run.env,
            }
            await self._settled(sandbox.id)
            run.container_id = container_id
            if run.tests is not None:  # test mode: the runner's argv, the app answering (§9)
                env = await run.tests.begin(container_id, env, lambda: run.stopping, deadline)
            stdin = stdin_file(execution.id) if body.stdin is not None else None
            proc = await self._exec(run, sandbox, env, stdin)
            if proc is None:  # killed while its dead container was replaced
                self._end(run, "killed", KILLED_BEFORE_IT_RAN)
                return
            container_id = run.container_id
            if run.tests is not None:
                proc = run.tests.watch(proc)
            timed_out = await self._pump(run, proc, max(0.0, deadline - loop.time()))
            exit_code = await proc.exit_code()
            oom = await self._oom_killed(sandbox.id, container_id, exit_code, run, timed_out)
            out.close_output()
            execution.timed_out, execution.oom_killed = timed_out, oom
            execution.truncated = out.budget.truncated
            ending = run.ending
            if ending is not None and ending.kind == "interrupted":
                self._end(run, "interrupted", ErrorData.interrupted(STOPPED_BY_GATEWAY))
                return
            if ending is not None and ending.error is not None:
                self._end(run, "failed", ending.error)
                return
            status: ExecutionStatus = (
                "killed" if run.killed else "timed_out" if timed_out else "exited"
            )
            missing: list[str] = []
            if exit_code != 0:
                missing = missing_modules(runtime, run.stderr_tail.decode("utf-8", "replace"))
            name = None
            if exit_code > 128 or run.killed or timed_out:
                with contextlib.suppress(ValueError):
                    name = signal.Signals(exit_code - 128).name
            tests = None
            if run.tests is not None:
                tests = await run.tests.finish(status, exit_code)  # the `report` event first
            self._end(
                run,
                status,
                ExitData(
                    exit_code,
                    timed_out=timed_out,
                    truncated=out.budget.truncated,
                    oom_killed=oom,
                    idle=run.idle,
                    killed=run.killed,
                    signal=name,
                    missing_modules=tuple(missing),
                    tests=tests or None,
                ),
            )
        except asyncio.CancelledError:
            self._end(run, "interrupted", ErrorData.interrupted(STOPPED_BEFORE_IT_RAN))
        except PetriError as exc:
            self._end(run, "failed", ErrorData(exc.code, exc.message))
        except Exception as exc:  # the stream must still end with one terminal event
            log.exception("execution %s failed", execution.id)
            self._end(run, "failed", ErrorData("internal_error", str(exc)))
        finally:
            try:
                if run.tests is not None:  # the app never outlives its run
                    await run.tests.close()
            finally:
                scratch = [run.scratch] if run.scratch is not None else []
                if run.tests is not None:  # the runner's report folder
                    scratch.append(run.tests.report_dir)
                self._finish(run, sandbox.id, scratch)

    def _finish(self, run: Run, sandbox_id: str, scratch: list[str]) -> None:
        """A run's ending, whatever happened before and whatever its clean-up meets: one
        terminal event, out of `live`, `stopped` set, and the clean-up (leftover processes,
        then the scratch folders, in a thread) scheduled. Each step is guarded on its own."""
        eid = run.execution.id
        if run.log.terminal is None:  # `_end` itself failed (e.g. the registry)
            try:
                run.log.emit(ev.ERROR, ErrorData("internal_error", "the run failed").data())
            except Exception:
                log.exception("execution %s: no terminal event", eid)
        self.live.pop(eid, None)
        try:
            self._after(sandbox_id, run, scratch)
        except Exception:
            log.exception("execution %s: clean-up not scheduled", eid)
        run.stopped.set()
        try:
            self.registry.touch_sandbox(sandbox_id, now())
        except Exception:
            log.exception("execution %s: sandbox not touched", eid)

    async def _exec(
        self, run: Run, sandbox: Sandbox, env: dict[str, str], stdin: str | None
    ) -> Process | None:
        """Start the program in `run.container_id`, trusted without an inspect; if it died
        since its last exec, in its replacement (workspace intact). None when a kill came
        meanwhile (it reached the dead container)."""
        execution, user = run.execution, self.settings.sandbox_user

        async def start() -> Process:
            return await self.backend.exec(
                run.container_id, execution.id, execution.argv, env=env, user=user, stdin=stdin
            )

        try:
            return await start()
        except ContainerGone:
            run.container_id = await self.containers.ensure(sandbox)
        if run.killed:
            return None
        if run.interrupted:
            raise asyncio.CancelledError
        return await start()

    async def _install(
        self, run: Run, sandbox: Sandbox, runtime: Runtime, deadline: float
    ) -> InstallResult | None:
        """The install phase, in a task of its own that a kill or an interrupt cancels (which
        removes its container); None when it was cancelled."""
        if run.stopping:  # stopped while its container was being made
            return None
        task = asyncio.create_task(self.installer.prepare(sandbox, runtime, run.log, deadline))
        run.installing = task
        try:
            await asyncio.wait({task})
        finally:
            run.installing = None
            if not task.done():  # this run itself was cancelled
                task.cancel()
                await asyncio.wait({task})
        return None if task.cancelled() else task.result()

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
            if run.stopping:
                return False
            run.idle = loop.time() < deadline
            await self.stop(run)
            return True
        finally:
            if not reader.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), 3 * KILL_GRACE_SECONDS)
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, PetriError):
                await reader

    async def stop(self, run: Run) -> None:
        """SIGKILL an execution's process group; if its output still does not end (a process
        left the group), every process of the sandbox user; if even that does not end it (no
        helper could start), the container itself: the next exec gets a new one. During the
        install phase, the install stops (its container is removed) before this returns."""
        installing = run.installing
        if installing is not None and not installing.done():
            installing.cancel()
            await asyncio.wait({installing}, timeout=INSTALL_STOP_SECONDS)
            return
        sandbox_id = run.execution.sandbox_id
        sandbox = self.registry.get_sandbox(sandbox_id)
        container_id = run.container_id or (sandbox.container_id if sandbox else "")
        if container_id:
            await self.stop_exec(container_id, run.execution.id, lambda: run.reader, sandbox_id)

    async def stop_exec(
        self,
        container_id: str,
        eid: str,
        reader_of: Callable[[], asyncio.Task[None] | None],
        sandbox_id: str,
    ) -> None:
        """The kill ladder of one exec (a run's program, test mode's app): its group, then
        every process of the sandbox user but running services, then the container, each
        step only while the exec's output (read by the task `reader_of()` returns) goes on."""
        user = self.settings.sandbox_user
        spare = [e for e in self.services_in(sandbox_id) if e != eid]
        steps: tuple[Callable[[], Awaitable[None]], ...] = (
            lambda: self.backend.kill_group(container_id, eid, user),
            lambda: self.backend.kill_all(container_id, user, spare),
            lambda: self.backend.kill_container(container_id),
        )
        for step in steps:
            with contextlib.suppress(PetriError):
                await step()
            reader = reader_of()
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

    def _after(self, sandbox_id: str, run: Run, scratch: list[str]) -> None:
        """Once an exec ended, kill what it left behind (its group; with no other exec running
        in the sandbox, every process of the sandbox user), so a fork bomb or a stray daemon
        cannot hold the sandbox's pids, memory or CPU; then remove its `scratch` folders (in
        a thread, bounded in time: it may hold a huge or deep tree). Runs after the terminal
        event; the sandbox's next exec waits for it (the backend makes that cheap when
        nothing was left behind)."""
        previous = self._settling.get(sandbox_id)

        async def settle() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            try:
                if run.container_id:
                    await self._kill_leftovers(sandbox_id, run)
            except Exception:
                log.exception("clean-up after %s failed", run.execution.id)
            for folder in scratch:
                await self._remove_scratch(sandbox_id, folder)

        task = asyncio.create_task(settle())
        self._settling[sandbox_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._settling.get(sandbox_id) is done:
                del self._settling[sandbox_id]

        task.add_done_callback(forget)

    async def _kill_leftovers(self, sandbox_id: str, run: Run) -> None:
        running = self.live.values()
        busy = any(
            r.container_id and r.execution.sandbox_id == sandbox_id and not r.service
            for r in running
        )
        spare = self.services_in(sandbox_id)  # running services outlive other execs
        cid, eid, user = run.container_id, run.execution.id, self.settings.sandbox_user
        try:
            await self.backend.settle(cid, eid, user, everything=not busy, spare=spare)
        except PetriError as exc:
            log.info("clean-up after %s: %s", eid, exc.message)

    async def _remove_scratch(self, sandbox_id: str, folder: str) -> None:
        workspace = self.workspaces.get(sandbox_id)
        try:
            await tree.in_remover(workspace.delete, folder, seconds=SCRATCH_SECONDS)
        except NotFound:
            pass
        except PetriError as exc:  # e.g. still being filled by a process that got away
            log.warning("scratch folder %s kept: %s", folder, exc.message)
        except Exception:
            log.exception("scratch folder %s kept", folder)

    async def _oom_killed(
        self, sandbox_id: str, container_id: str, code: int, run: Run, timed_out: bool
    ) -> bool:
        if code != 137 or run.stopping or timed_out:
            return False
        try:
            count = await self.backend.oom_kills(container_id, self.settings.sandbox_user)
        except PetriError:  # the container died with the program (e.g. the host killed it)
            return False
        seen_in, seen = self._oom_seen.get(sandbox_id, ("", 0))
        self._oom_seen[sandbox_id] = (container_id, count)
        return count > (seen if seen_in == container_id else 0)  # a new container starts at 0

    def _end(self, run: Run, status: ExecutionStatus, payload: Terminal) -> None:
        """Store the final record and emit the one terminal event (built from `payload`)."""
        execution = run.execution
        execution.status = status
        execution.ended_at = now()
        if isinstance(payload, ExitData):
            execution.exit_code, execution.error_code = payload.exit_code, None
            payload = dataclasses.replace(payload, duration_ms=execution.duration_ms)
        else:
            execution.exit_code, execution.error_code = None, payload.code
        with self.registry.transaction():
            self.registry.put_execution(execution)
            for hook in self.on_end:
                hook(run)
        if run.log.terminal is None:
            run.log.emit(ev.terminal_type(payload), payload.data())
