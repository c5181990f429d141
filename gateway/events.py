"""The event model of an execution and its Server-Sent Events wire format.

Imports nothing from the server side: the SDK and tests use it to parse streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

START, INSTALL, STDOUT, STDERR, EXIT, ERROR, TRUNCATED = (
    "start",
    "install",
    "stdout",
    "stderr",
    "exit",
    "error",
    "truncated",
)
# Test mode (DESIGN §9): the app under test's output, its readiness, the parsed test report.
APP, READY, REPORT = "app", "ready", "report"
TERMINAL = frozenset({EXIT, ERROR})
_LINE_BREAKS = [(chr(c).encode(), b"\\u%04x" % c) for c in (0x85, 0x2028, 0x2029)]
OUTPUT = frozenset({STDOUT, STDERR})


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]
    # `data` as JSON, encoded once (it is sent to every follower and stored): set on first
    # use, or given when read back from storage (`str` in a data dir from before 2026-12).
    # `data` must not change after that.
    raw: bytes | str | None = field(default=None, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    def data_bytes(self) -> bytes:
        """`data` as one line of UTF-8 JSON (what is stored and sent)."""
        raw = self.raw
        if raw is None:
            raw = _json(self.data)
            object.__setattr__(self, "raw", raw)
        return raw if isinstance(raw, bytes) else raw.encode()

    def data_json(self) -> str:
        return self.data_bytes().decode()

    def sse(self) -> bytes:
        """The event as SSE bytes. The data is one JSON line, so no `\\r`/`\\n` can split it."""
        head = b"id: %d\nevent: %s\ndata: " % (self.id, self.type.encode())
        return b"".join((head, self.data_bytes(), b"\n\n"))


def _json(data: dict[str, Any]) -> bytes:
    """`data` as one line of compact JSON. orjson escapes strings ~5x faster than `json` (a
    64 MiB stream's output is mostly this) and its bytes are what is stored and sent, with no
    copy in between. JSON may carry U+0085, U+2028 and U+2029 raw, but many line readers
    (Python's `splitlines`, httpx's `iter_lines`) break lines there: they are escaped (a
    program's binary output holds them), so one event is one line for every reader. What
    orjson refuses (integers past 64 bits, lone surrogates) is ASCII-only `json`."""
    try:
        raw = orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(data, separators=(",", ":")).encode()
    if not raw.isascii():
        for char, escaped in _LINE_BREAKS:
            raw = raw.replace(char, escaped)
    return raw


def keepalive() -> bytes:
    """A keep-alive: one comment line and no blank line after it. The SSE spec ignores comment
    lines, and with no blank line no client can dispatch anything. (A comment followed by a
    blank line is not safe: httpx-sse, florimondmanca/httpx-sse#35, turns that blank line into
    an empty `message` event repeating the last id.) Send it only between whole events."""
    return b": keep-alive\n"


# --- the payloads of the events a run's task builds: typed, built here only ------------------
# The SDK (petri_sdk/events.py) parses the same wire shapes into its own records; it imports
# nothing from gateway/ (nor the gateway from it): tests/unit/test_event_payloads.py pins the
# two definitions to each other.

INTERRUPTED = "interrupted"  # the error code of a run the gateway stopped


@dataclass(frozen=True, slots=True)
class StartData:
    execution_id: str
    sandbox_id: str

    def data(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "sandbox_id": self.sandbox_id}


@dataclass(frozen=True, slots=True)
class ErrorData:
    """The `error` terminal event: the run did not end as a program exit."""

    code: str
    message: str

    @classmethod
    def interrupted(cls, message: str) -> ErrorData:
        return cls(INTERRUPTED, message)

    def data(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class ExitData:
    """The `exit` terminal event: the program ended (by itself, a kill, a timeout, the OOM
    killer). The optional fields are on the wire only when set."""

    exit_code: int
    timed_out: bool = False
    truncated: bool = False
    oom_killed: bool = False
    idle: bool = False  # ended by the idle-output timeout
    killed: bool = False  # by `POST .../kill` (status `killed`), not the kernel
    duration_ms: int | None = None
    signal: str | None = None
    missing_modules: tuple[str, ...] = ()
    tests: dict[str, Any] | None = None  # test mode: the report's counts

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "truncated": self.truncated,
            "oom_killed": self.oom_killed,
            "idle": self.idle,
            "killed": self.killed,
            "duration_ms": self.duration_ms,
        }
        if self.missing_modules:
            out["missing_modules"] = list(self.missing_modules)
        if self.signal is not None:
            out["signal"] = self.signal
        if self.tests is not None:
            out["tests"] = self.tests
        return out


Terminal = ExitData | ErrorData


def terminal_type(payload: Terminal) -> str:
    return EXIT if isinstance(payload, ExitData) else ERROR
