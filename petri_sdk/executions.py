"""What a run gives back: `Execution` (the result, built from its events as they arrive) and
`ExecutionInfo` (a past or running execution as the gateway lists it).

    ex = sb.run_code("import sys; print('hi'); sys.exit(3)")
    ex.stdout, ex.exit_code, ex.ok      # 'hi\\n', 3, False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .events import (
    AppEvent,
    ErrorEvent,
    Event,
    ExitEvent,
    InstallEvent,
    ReadyEvent,
    ReportEvent,
    StartEvent,
    StderrEvent,
    StdoutEvent,
    TestReport,
    TruncatedEvent,
)

__all__ = ["EventCallback", "Execution", "ExecutionInfo", "OutputCallback"]

OutputCallback = Callable[[str], Any]
"""Called with each chunk of text as it arrives (may return an awaitable with AsyncSandbox)."""
EventCallback = Callable[[Event], Any]


@dataclass
class Execution:
    """The result of a run. `exit_code` is the program's (non-zero is data, not an error);
    `status` is exited, killed, timed_out, failed or interrupted; `tests` is the test report
    (test mode); `install` the dependency-install output; `app_output` the output of the app
    under test."""

    id: str = ""
    sandbox_id: str = ""
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    status: str = "running"
    timed_out: bool = False
    oom_killed: bool = False
    killed: bool = False
    truncated: bool = False
    idle: bool = False
    signal: str | None = None
    duration_ms: int | None = None
    install: str = ""
    app_output: str = ""
    ready_after_ms: int | None = None
    missing_modules: list[str] = field(default_factory=list)
    tests: TestReport | None = None
    error: ErrorEvent | None = None

    @property
    def ok(self) -> bool:
        """The program ran and exited 0 (and, in test mode, no test failed)."""
        if self.error is not None or self.exit_code != 0:
            return False
        return self.tests is None or (self.tests.failed in (0, None) and not self.tests.errors)

    def __str__(self) -> str:
        return f"Execution({self.id} {self.status} exit_code={self.exit_code})"


class Collector:
    """Builds an `Execution` from events and says which callbacks each event calls."""

    def __init__(
        self,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_install: OutputCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.on_stdout, self.on_stderr, self.on_install = on_stdout, on_stderr, on_install
        self.on_event = on_event
        self.execution = Execution()
        self._out: list[str] = []
        self._err: list[str] = []
        self._install: list[str] = []
        self._app: list[str] = []
        self.last_id = 0
        self.done = False

    def add(self, event: Event) -> list[tuple[Callable[[Any], Any], Any]]:
        """Take one event in; returns the callbacks to call, in order, with their argument."""
        ex = self.execution
        calls: list[tuple[Callable[[Any], Any], Any]] = []
        self.last_id = event.id
        if isinstance(event, StdoutEvent):
            self._out.append(event.text)
            if self.on_stdout:
                calls.append((self.on_stdout, event.text))
        elif isinstance(event, StderrEvent):
            self._err.append(event.text)
            if self.on_stderr:
                calls.append((self.on_stderr, event.text))
        elif isinstance(event, InstallEvent):
            self._install.append(event.text)
            if self.on_install:
                calls.append((self.on_install, event.text))
        elif isinstance(event, StartEvent):
            ex.id, ex.sandbox_id = event.execution_id or ex.id, event.sandbox_id or ex.sandbox_id
        elif isinstance(event, AppEvent):
            self._app.append(event.text)
        elif isinstance(event, ReadyEvent):
            ex.ready_after_ms = event.after_ms
        elif isinstance(event, TruncatedEvent):
            ex.truncated = True
        elif isinstance(event, ReportEvent):
            ex.tests = event.report
        elif isinstance(event, ExitEvent):
            self._exit(event)
        elif isinstance(event, ErrorEvent):
            ex.error = event
            ex.status = "interrupted" if event.code == "interrupted" else "failed"
            ex.timed_out = "timed out" in event.message and event.code == "install_failed"
        if self.on_event:
            calls.append((self.on_event, event))
        if event.terminal:
            self.done = True
        return calls

    def _exit(self, e: ExitEvent) -> None:
        ex = self.execution
        ex.exit_code, ex.duration_ms, ex.signal = e.exit_code, e.duration_ms, e.signal
        ex.timed_out, ex.oom_killed, ex.killed, ex.idle = (
            e.timed_out,
            e.oom_killed,
            e.killed,
            e.idle,
        )
        ex.truncated = ex.truncated or e.truncated
        ex.missing_modules = list(e.missing_modules or [])
        if ex.tests is None and e.tests is not None:
            ex.tests = e.tests
        ex.status = "killed" if e.killed else "timed_out" if e.timed_out else "exited"

    def result(self) -> Execution:
        """The execution so far, its texts joined."""
        ex = self.execution
        ex.stdout, ex.stderr = "".join(self._out), "".join(self._err)
        ex.install, ex.app_output = "".join(self._install), "".join(self._app)
        return ex


@dataclass(frozen=True)
class ExecutionInfo:
    """An execution as `sb.executions()` lists it."""

    id: str
    sandbox_id: str
    status: str
    argv: list[str]
    test: bool
    created_at: str | None
    ended_at: str | None
    duration_ms: int | None
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    killed: bool
    error_code: str | None
    data: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExecutionInfo:
        return cls(
            id=str(d.get("id", "")),
            sandbox_id=str(d.get("sandbox_id", "")),
            status=str(d.get("status", "")),
            argv=[str(a) for a in d.get("argv") or []],
            test=d.get("test") is True,
            created_at=d.get("created_at"),
            ended_at=d.get("ended_at"),
            duration_ms=d.get("duration_ms"),
            exit_code=d.get("exit_code"),
            timed_out=d.get("timed_out") is True,
            oom_killed=d.get("oom_killed") is True,
            killed=d.get("killed") is True,
            error_code=d.get("error_code"),
            data=d,
        )
