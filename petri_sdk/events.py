"""The typed events of a run, and the reader that turns Server-Sent Events into them.

    for event in sb.stream(code="print(1)"):
        match event:
            case StdoutEvent(text=text):
                print(text, end="")
            case ExitEvent(exit_code=code):
                print("exit", code)

Every event has `id` (1, 2, 3, ... per execution), `type` and `data` (the JSON object as
sent). Types this SDK does not know, data that is not a JSON object and ids that do not move
forward are skipped, never raised: the gateway may add types, and a keep-alive is not an event.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # the SDK alone needs only httpx
    _orjson = None

_OUTPUT = frozenset({"stdout", "stderr"})

__all__ = [
    "AppEvent",
    "ErrorEvent",
    "Event",
    "ExitEvent",
    "InstallEvent",
    "ReadyEvent",
    "ReportEvent",
    "SSEDecoder",
    "StartEvent",
    "StderrEvent",
    "StdoutEvent",
    "TestCase",
    "TestReport",
    "TruncatedEvent",
    "parse_event",
]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _bool(value: Any) -> bool:
    return value is True


@dataclass(frozen=True, slots=True)
class TestCase:
    """One test of a report: `status` is passed, failed, skipped or error."""

    __test__: ClassVar[bool] = False  # not a pytest class

    name: str
    suite: str
    status: str
    duration_ms: int | None = None
    message: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestCase:
        message = data.get("message")
        return cls(
            name=_str(data.get("name")),
            suite=_str(data.get("suite")),
            status=_str(data.get("status")),
            duration_ms=_int(data.get("duration_ms")),
            message=message if isinstance(message, str) else None,
        )


@dataclass(frozen=True, slots=True)
class TestReport:
    """The parsed results of a test run (test mode). Counts are None where the runner left
    nothing to parse; `cases` is None then too (never invented), `message` says why."""

    __test__: ClassVar[bool] = False

    runner: str | None
    passed: int | None
    failed: int | None
    skipped: int | None
    errors: int | None
    duration_ms: int | None = None
    cases: list[TestCase] | None = None
    message: str | None = None
    cases_omitted: int = 0

    @property
    def ok(self) -> bool:
        """True when tests ran and none failed or erred."""
        return (
            self.passed is not None
            and self.failed == 0
            and not self.errors
            and (self.passed + (self.skipped or 0)) > 0
        )

    @property
    def failures(self) -> list[TestCase]:
        """The cases that failed or erred."""
        return [c for c in self.cases or [] if c.status in ("failed", "error")]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestReport:
        cases = data.get("cases")
        message = data.get("message")
        return cls(
            runner=data.get("runner") if isinstance(data.get("runner"), str) else None,
            passed=_int(data.get("passed")),
            failed=_int(data.get("failed")),
            skipped=_int(data.get("skipped")),
            errors=_int(data.get("errors")),
            duration_ms=_int(data.get("duration_ms")),
            cases=(
                [TestCase.from_json(c) for c in cases if isinstance(c, dict)]
                if isinstance(cases, list)
                else None
            ),
            message=message if isinstance(message, str) else None,
            cases_omitted=_int(data.get("cases_omitted")) or 0,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """Any event. `data` is the JSON object as the gateway sent it."""

    type: ClassVar[str] = ""
    terminal: ClassVar[bool] = False

    id: int
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class StartEvent(Event):
    """The first event of every run."""

    type: ClassVar[str] = "start"
    execution_id: str = ""
    sandbox_id: str = ""


@dataclass(frozen=True, slots=True)
class InstallEvent(Event):
    """Dependency-install output (never program output)."""

    type: ClassVar[str] = "install"
    text: str = ""


@dataclass(frozen=True, slots=True)
class StdoutEvent(Event):
    """A chunk of the program's stdout, as it arrived (not necessarily a whole line)."""

    type: ClassVar[str] = "stdout"
    text: str = ""


@dataclass(frozen=True, slots=True)
class StderrEvent(Event):
    type: ClassVar[str] = "stderr"
    text: str = ""


@dataclass(frozen=True, slots=True)
class TruncatedEvent(Event):
    """The output budget was reached: the middle is dropped, the tail follows at the end."""

    type: ClassVar[str] = "truncated"
    budget_bytes: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class AppEvent(Event):
    """Output of the app under test (test mode); `stream` is "stdout" or "stderr"."""

    type: ClassVar[str] = "app"
    stream: str = "stdout"
    text: str = ""


@dataclass(frozen=True, slots=True)
class ReadyEvent(Event):
    """The app or service answers on `port`, `after_ms` after it started."""

    type: ClassVar[str] = "ready"
    port: int | None = None
    after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ReportEvent(Event):
    """Test mode: the parsed test results."""

    type: ClassVar[str] = "report"
    report: TestReport | None = None


@dataclass(frozen=True, slots=True)
class ExitEvent(Event):
    """Terminal: the program ended. A non-zero `exit_code` is data, not an error."""

    type: ClassVar[str] = "exit"
    terminal: ClassVar[bool] = True
    exit_code: int | None = None
    duration_ms: int | None = None
    timed_out: bool = False
    truncated: bool = False
    oom_killed: bool = False
    killed: bool = False
    idle: bool = False
    signal: str | None = None
    missing_modules: list[str] | None = None
    tests: TestReport | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent(Event):
    """Terminal: the gateway could not run it (`code`: install_failed, interrupted, ...)."""

    type: ClassVar[str] = "error"
    terminal: ClassVar[bool] = True
    code: str = ""
    message: str = ""


def _build(id: int, type: str, d: dict[str, Any]) -> Event | None:
    if type == "start":
        return StartEvent(id, d, _str(d.get("execution_id")), _str(d.get("sandbox_id")))
    if type == "install":
        return InstallEvent(id, d, _str(d.get("text")))
    if type == "stdout":
        return StdoutEvent(id, d, _str(d.get("text")))
    if type == "stderr":
        return StderrEvent(id, d, _str(d.get("text")))
    if type == "truncated":
        return TruncatedEvent(id, d, _int(d.get("budget_bytes")), _str(d.get("message")))
    if type == "app":
        return AppEvent(id, d, _str(d.get("stream"), "stdout"), _str(d.get("text")))
    if type == "ready":
        return ReadyEvent(id, d, _int(d.get("port")), _int(d.get("after_ms")))
    if type == "report":
        return ReportEvent(id, d, TestReport.from_json(d))
    if type == "exit":
        missing = d.get("missing_modules")
        tests = d.get("tests")
        return ExitEvent(
            id,
            d,
            exit_code=_int(d.get("exit_code")),
            duration_ms=_int(d.get("duration_ms")),
            timed_out=_bool(d.get("timed_out")),
            truncated=_bool(d.get("truncated")),
            oom_killed=_bool(d.get("oom_killed")),
            killed=_bool(d.get("killed")),
            idle=_bool(d.get("idle")),
            signal=d.get("signal") if isinstance(d.get("signal"), str) else None,
            missing_modules=(
                [m for m in missing if isinstance(m, str)] if isinstance(missing, list) else None
            ),
            tests=TestReport.from_json(tests) if isinstance(tests, dict) else None,
        )
    if type == "error":
        return ErrorEvent(id, d, _str(d.get("code"), "error"), _str(d.get("message")))
    return None


def _loads(type: str, data: str) -> Any:
    """An event's JSON. Output events' data is one string, the bulk of a stream: orjson,
    where installed (it comes with the gateway), reads it ~2.5x faster. Every other event
    keeps `json`'s exact numbers (orjson reads an integer past 64 bits as a float), and what
    orjson refuses (an escaped lone surrogate) is read by `json` too."""
    if _orjson is not None and type in _OUTPUT:
        with contextlib.suppress(ValueError):
            return _orjson.loads(data)
    return json.loads(data)


def parse_event(id: str, type: str, data: str, after: int = 0) -> Event | None:
    """The typed event, or None for what is not a Petri event this SDK knows: an unknown type,
    an id that is not a plain integer above `after`, data that is not a JSON object."""
    if not (id.isascii() and id.isdigit() and len(id) <= 19) or int(id) <= after:
        return None
    try:
        decoded = _loads(type, data)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    return _build(int(id), type, decoded)


_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Server-Sent Events as the HTML spec reads them: comment lines (a keep-alive, with or
    without a blank line after it) never make an event, and the last id carries over to an
    event that has none. `decode` takes the body's bytes as they arrive; `feed`, one line.

    Lines end at CRLF, LF or CR and nowhere else (a text reader's `splitlines` also breaks
    at U+2028, form feeds and more), and a line is decoded only once it is whole: a 256 KiB
    `data:` line costs a search for the line break and one UTF-8 decode."""

    def __init__(self) -> None:
        self.last_id = ""
        self._type = ""
        self._data: list[str] = []
        self._parts: list[bytes] = []  # the line in progress
        self._after_cr = False  # the last chunk ended with CR: a LF first ends nothing
        self._started = False
        self._head = b""  # the stream's first bytes, while they may be the start of a BOM

    def decode(self, chunk: bytes) -> list[tuple[str, str, str]]:
        """The events that `chunk` completes, as `(id, type, data)`."""
        if not chunk:
            return []
        if not self._started:  # a BOM opening the stream is dropped, even split up
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk
                return []
            self._started, self._head = True, b""
            chunk = chunk.removeprefix(_BOM)
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line = chunk[start:end]
            if self._parts:
                line = b"".join((*self._parts, line))
                self._parts = []
            if (event := self.feed(line.decode("utf-8", "replace"))) is not None:
                out.append(event)
            start = end + 1
        if start < len(chunk):
            self._parts.append(chunk[start:])
        return out

    def feed(self, line: str) -> tuple[str, str, str] | None:
        """One line (without its line break); returns `(id, type, data)` when an event ends."""
        if not line:
            if not self._data:
                self._type = ""
                return None
            out = (self.last_id, self._type or "message", "\n".join(self._data))
            self._type, self._data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        return None
