"""Test mode of one execution (DESIGN §9): the project's test runner, picked from its files;
the app under test, started as its own exec in the sandbox and probed from inside it until
its port answers; the report, parsed from what the runner left; the app stopped before the
run's `exit`. `runs.Runs` drives it through four calls: `begin`, `watch`, `finish`, `close`.
No HTTP, no aiodocker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from . import events as ev
from . import reports
from .backend import STDOUT, Backend, Process
from .config import Settings
from .deps import TEST_DETECTORS
from .deps import maven_surefire as maven_surefire  # re-exported for its tests
from .deps import npm_test_script as npm_test_script
from .errors import AppFailed, Invalid, PetriError, ReportError
from .executions import ExecutionLog
from .models import AppBody, ExecBody, Execution
from .reports import Cases, GoTestStream
from .runtimes import Runtime, TestRunner
from .workspace import Workspace, clean_path

log = logging.getLogger("petri.testmode")
REPORTS_DIR = ".petri/reports"
SANDBOX_ROOT = "/sandbox"
APP_TAIL_BYTES = 4096
DEFAULT_READY_SECONDS = 30
MAX_REPORT_FILES = 200
# Every runner gets its report folder made first; "$@" is the exec's `filename`, if any.
_RUNNER_PREFIX = 'mkdir -p "$PETRI_REPORT_DIR" || exit 1\n'
# The readiness probe, inside the sandbox (no network needed: loopback only). Once the app's
# exec found its port free ($4 exists): a TCP connect to the port, IPv4 then IPv6; with a
# path, one HTTP/1.1 GET whose answer must start with an HTTP status line (any status: the
# app answers). A failed redirection only fails that compound command, never the shell.
# Bounded by its own deadline ($3 s) too.
_PROBE = r"""
port=$1 path=$2 end=$((SECONDS + $3)) free=$4
until [ -e "$free" ]; do [ "$SECONDS" -lt "$end" ] || exit 1; sleep 0.02; done
rm -f "$free"
while [ "$SECONDS" -lt "$end" ]; do
  for host in 127.0.0.1 ::1; do
    if {
      [ -z "$path" ] || {
        printf 'GET %s HTTP/1.1\r\nHost: localhost:%s\r\nConnection: close\r\n\r\n' \
          "$path" "$port" >&3
        IFS= read -r -t 2 line <&3 && [[ $line == HTTP/* ]]
      }
    } 3<>"/dev/tcp/$host/$port"; then
      exit 0
    fi
  done 2>/dev/null
  sleep 0.05
done
exit 1
"""


# The app's exec: refuses a port something in the sandbox already answers on (another app,
# a service, a stray server), so `ready` can only ever mean this app; says so by creating the
# file $0, which the probe waits for before it probes; then runs the command.
_APP = """
taken=
for host in 127.0.0.1 ::1; do { : ; } 3<>"/dev/tcp/$host/$1" && taken=1; done 2>/dev/null
if [ -n "$taken" ]; then
  echo "petri: port $1 is already taken in this sandbox (by another app or service)" >&2
  exit 98
fi
: > "$0"
exec /bin/bash -c "$2"
"""


def exec_ids(execution: Execution) -> list[str]:
    """The Docker exec ids of a run: its program's and, in test mode, its app's and probe's
    (each its own process group, killed by id)."""
    eid = execution.id
    return [eid, f"{eid}-app", f"{eid}-probe"] if execution.test else [eid]


def choose_runner(runtime: Runtime, workspace: Workspace) -> TestRunner:
    """The first of the runtime's runners whose detector matches the project (the last one
    has none: the fallback). Reads go through the workspace's no-symlink walks."""
    assert runtime.test is not None
    for runner in runtime.test.runners:
        if not runner.detect or TEST_DETECTORS[runner.detect](workspace):
            return runner
    return runtime.test.runners[-1]


def check(runtime: Runtime, body: ExecBody, timeout: int) -> None:
    """Refuse (422) what test mode cannot run, before anything is written."""
    if runtime.test is None:
        raise Invalid(f"the {runtime.name} runtime has no test runner", code="invalid_field")
    if body.filename is not None and not runtime.test.paths:
        raise Invalid(
            f"filename: the {runtime.name} test runner runs the whole project; leave it out",
            code="invalid_field",
        )
    ready = body.app.ready_timeout_seconds if body.app is not None else None
    if ready is not None and ready > timeout:
        raise Invalid(
            f"app.ready_timeout_seconds ({ready}) must not exceed "
            f"the run's timeout_seconds ({timeout})",
            code="invalid_field",
        )


def runner_argv(script: str, paths: list[str]) -> list[str]:
    return ["/bin/bash", "-c", _RUNNER_PREFIX + script, "petri-test", *paths]


class TestSession:
    """Test mode of one run. `begin` picks the runner and brings the app up (or raises
    `AppFailed`); `watch` wraps the runner's process; `finish` emits `report`, stops the app
    and returns `exit.tests`; `close` (always) makes sure the app is gone."""

    def __init__(
        self,
        *,
        settings: Settings,
        backend: Backend,
        runtime: Runtime,
        body: ExecBody,
        execution: Execution,
        out: ExecutionLog,
        workspace: Workspace,
        seconds: float,
        stop_exec: Callable[[str, str, Callable[[], asyncio.Task[None] | None]], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.runtime = runtime
        self.body = body
        self.app: AppBody | None = body.app
        self.execution = execution
        self.out = out
        self.workspace = workspace
        self.deadline = 0.0  # the run's, in loop time (`begin`)
        ready = self.app.ready_timeout_seconds if self.app is not None else None
        self.ready_timeout = float(ready or min(DEFAULT_READY_SECONDS, seconds))
        self._stop_exec = stop_exec
        _, self.app_id, self.probe_id = exec_ids(execution)
        self.report_dir = f"{REPORTS_DIR}/{execution.id}"
        self._free_marker = f"/tmp/.petri-{self.app_id}.free"  # the app found its port free
        self.runner_name = "command"
        self.report_format = "junit"
        self.container_id = ""
        self.ran = False  # the runner started and was not killed before it could
        self._stopped_early = False
        self._runner_started = 0.0
        self._app_reader: asyncio.Task[None] | None = None
        self._app_proc: Process | None = None
        self._app_done = False
        self._app_tail = bytearray()
        self._stream: GoTestStream | None = None
        self.report: dict[str, Any] | None = None

    def remaining(self) -> float:
        """Seconds left of the run's `timeout_seconds` (install, app and tests share it)."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def begin(
        self,
        container_id: str,
        env: dict[str, str],
        stopping: Callable[[], bool],
        deadline: float,
    ) -> dict[str, str]:
        """Pick the runner (its argv becomes the execution's), start the app and wait until
        it answers, by `deadline` (loop time) at the latest. Returns the runner's env."""
        self.container_id, self.deadline = container_id, deadline
        paths = ["/".join(clean_path(self.body.filename))] if self.body.filename else []
        if self.body.command is not None:
            self.execution.argv = runner_argv(self.body.command, [])
        else:
            chosen = await asyncio.to_thread(choose_runner, self.runtime, self.workspace)
            self.runner_name, self.report_format = chosen.name, chosen.report
            self.execution.argv = runner_argv(chosen.run, paths)
        runner_env = {**env, "PETRI_REPORT_DIR": f"{SANDBOX_ROOT}/{self.report_dir}"}
        if self.app is not None:
            port = str(self.app.port)
            runner_env = {"APP_PORT": port, "APP_URL": f"http://127.0.0.1:{port}", **runner_env}
            try:
                await self._start_app({"PORT": port, **env}, stopping)
            except BaseException:
                await self._stop_app()
                raise
        self._stopped_early = stopping()
        return runner_env

    def watch(self, proc: Process) -> Process:
        """The runner's process, as the run reads it (`go test -json` shown as text)."""
        self.ran = not self._stopped_early
        self._runner_started = time.monotonic()
        if self.report_format == "go-json":
            self._stream = GoTestStream()
            return _Rendered(proc, self._stream)
        return proc

    async def finish(self, status: str, exit_code: int) -> dict[str, Any] | None:
        """After the runner ended (`status`: exited, killed, timed_out): the `report` event,
        then the app stopped; returns the counts for `exit.tests` (None: no runner ran)."""
        if not self.ran:
            await self.close()
            return None
        duration = round((time.monotonic() - self._runner_started) * 1000)
        cases, message = await asyncio.to_thread(self._parse)
        if cases is None and status in ("killed", "timed_out"):
            message = f"the runner was {status.replace('_', ' ')} before it left a report"
        elif cases is None and message is None:
            message = (
                f"{self.runner_name} exited with code {exit_code} and left no report to parse "
                "(its stdout and stderr say why)"
            )
        self.report = reports.report(self.runner_name, cases, duration, message)
        self.out.emit(ev.REPORT, self.report)
        await self.close()
        return reports.counts(self.report)

    async def close(self) -> None:
        """Stop the app, if it runs. Safe to call again. (The report folder is the run's
        scratch folder: `runs` removes it after the run, bounded, in a thread.)"""
        try:
            await self._stop_app()
        except Exception:  # the run must still end; the clean-up after it kills the rest
            log.exception("stopping the app of %s failed", self.execution.id)

    # --- the app under test ------------------------------------------------------------------

    async def _start_app(self, env: dict[str, str], stopping: Callable[[], bool]) -> None:
        assert self.app is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._app_proc = await self.backend.exec(
            self.container_id,
            self.app_id,
            ["/bin/bash", "-c", _APP, self._free_marker, str(self.app.port), self.app.command],
            env=env,
            user=self.settings.sandbox_user,
        )
        self._app_reader = asyncio.create_task(self._read_app(self._app_proc))
        await self._probe(started, stopping)

    async def _read_app(self, proc: Process) -> None:
        try:
            async for kind, data in proc.output():
                self._app_tail += data
                del self._app_tail[:-APP_TAIL_BYTES]
                if self.out.terminal is None:
                    self.out.app_output(ev.STDOUT if kind == STDOUT else ev.STDERR, data)
        except PetriError as exc:
            log.info("reading the app of %s: %s", self.execution.id, exc.message)
        except Exception:  # its output is lost, the run goes on (and stops the app)
            log.exception("reading the app of %s failed", self.execution.id)

    async def _probe(self, started: float, stopping: Callable[[], bool]) -> None:
        """Until the app answers (a `ready` event), exits (`app_exited`), stays silent past
        `ready_timeout_seconds` (`app_not_ready`), or the run is killed or out of time."""
        assert self.app is not None and self._app_reader is not None
        loop = asyncio.get_running_loop()
        app, reader = self.app, self._app_reader
        limit = min(self.ready_timeout, self.remaining())
        argv = [str(app.port), app.ready_path or "", str(int(limit) + 2), self._free_marker]
        probe = await self.backend.exec(
            self.container_id,
            self.probe_id,
            ["/bin/bash", "-c", _PROBE, "petri-probe", *argv],
            env={},
            user=self.settings.sandbox_user,
        )
        answered = asyncio.create_task(_succeeds(probe))
        try:
            while True:
                left = started + limit - loop.time()
                await asyncio.wait({answered, reader}, timeout=max(0.0, min(0.1, left)))
                if answered.done() and answered.result():
                    after = round((loop.time() - started) * 1000)
                    self.out.emit(ev.READY, {"port": app.port, "after_ms": after})
                    return
                if stopping():
                    return
                if reader.done():
                    raise AppFailed(await self._exited_message(), code="app_exited")
                if answered.done() or left <= 0:
                    break
            if limit < self.ready_timeout:
                return  # the run's own timeout came first: the runner times out at once
            raise AppFailed(
                f"the app did not answer on port {app.port}"
                + (f" (GET {app.ready_path})" if app.ready_path else "")
                + f" within {self.ready_timeout:g} s; its last output:\n{self._tail()}",
                code="app_not_ready",
            )
        finally:
            if not answered.done():
                with contextlib.suppress(PetriError):
                    await self.backend.kill_group(
                        self.container_id, self.probe_id, self.settings.sandbox_user
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(answered), 5)
                answered.cancel()
            self.backend.release(self.container_id, self.probe_id)

    async def _exited_message(self) -> str:
        assert self._app_proc is not None and self.app is not None
        code = -1
        with contextlib.suppress(PetriError):
            code = await self._app_proc.exit_code()
        how = f" with code {code}" if code >= 0 else ""
        return (
            f"the app exited{how} before it answered on port {self.app.port}; "
            f"its last output:\n{self._tail()}"
        )

    def _tail(self) -> str:
        return self._app_tail.decode("utf-8", "replace") or "(none)"

    async def _stop_app(self) -> None:
        """Kill the app's process group (escalating like any kill), wait for its output to
        end and flush it as `app` events. Idempotent."""
        reader = self._app_reader
        if reader is None or self._app_done:
            return
        self._app_done = True
        await self._stop_exec(self.container_id, self.app_id, lambda: reader)
        if not reader.done():
            reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if self.out.terminal is None:
            self.out.close_app_output()
        self.backend.release(self.container_id, self.app_id)

    # --- the report --------------------------------------------------------------------------

    def _parse(self) -> tuple[Cases | None, str | None]:
        """Cases from what the runner left (in a thread: reads and parses files)."""
        if self._stream is not None:
            if self._stream.events == 0:
                return None, "go test printed no JSON events"
            return self._stream.cases, None
        files = [
            (name, size)
            for name, size in self.workspace.files_in(self.report_dir, MAX_REPORT_FILES)
            if name.endswith(".xml")
        ]
        if not files:
            return None, None
        if sum(size for _, size in files) > reports.MAX_REPORT_BYTES:
            return None, f"the report is larger than {reports.MAX_REPORT_BYTES} bytes; not parsed"
        documents = []
        for name, _ in files:
            try:
                handle, _size = self.workspace.read(f"{self.report_dir}/{name}")
            except PetriError as exc:
                return None, f"the report {name} could not be read: {exc.message}"
            with handle:
                documents.append(handle.read(reports.MAX_REPORT_BYTES + 1))
        if sum(len(d) for d in documents) > reports.MAX_REPORT_BYTES:
            return None, f"the report is larger than {reports.MAX_REPORT_BYTES} bytes; not parsed"
        try:
            return reports.parse_junit(documents), None
        except ReportError as exc:
            return None, str(exc)


async def _succeeds(proc: Process) -> bool:
    """Whether a helper exec (the probe) ended with exit code 0."""
    try:
        async for _ in proc.output():
            pass
        return await proc.exit_code() == 0
    except PetriError:
        return False


class _Rendered:
    """A runner whose stdout is `go test -json`: shown as the text it carries."""

    def __init__(self, inner: Process, stream: GoTestStream) -> None:
        self._inner = inner
        self._stream = stream

    async def exit_code(self) -> int:
        return await self._inner.exit_code()

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for kind, data in self._inner.output():
            shown = self._stream.feed(data) if kind == STDOUT else data
            if shown:
                yield kind, shown
        if rest := self._stream.finish():
            yield STDOUT, rest
