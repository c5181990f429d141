"""Test reports (DESIGN §9): JUnit XML files and `go test -json` streams, parsed into one
shape: `{runner, passed, failed, skipped, errors, duration_ms, cases}`.

Everything here reads what a sandbox wrote, so it is hostile input: XML is parsed by
`defusedxml` with DTDs forbidden (no entity expansion, no external entities), streamed so
memory stays bounded, and every list and string is capped. Nothing is invented: where there
is nothing to parse, `cases` and the counts are `null` and `message` says why.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from .errors import ReportError

MAX_CASES = 1000  # listed in a report; counts always cover every case
MESSAGE_CHARS = 2000
NAME_CHARS = 500
MAX_REPORT_BYTES = 8 * 1024 * 1024  # all report files of one run together (~1 s to parse)
MAX_LINE_BYTES = 1024 * 1024  # one `go test -json` event
OUTPUT_TAIL_BYTES = 4096  # per running Go test or package, for failure messages
MAX_TRACKED = 2000  # Go tests/packages whose output is followed at once

PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"
_COUNT_KEYS = {PASSED: "passed", FAILED: "failed", SKIPPED: "skipped", ERROR: "errors"}


@dataclass(slots=True)
class Case:
    name: str
    suite: str
    status: str
    duration_ms: int | None
    message: str | None = None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "suite": self.suite,
            "status": self.status,
            "duration_ms": self.duration_ms,
        }
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass(slots=True)
class Cases:
    """Every case counted; the first `MAX_CASES` failures/errors and the first `MAX_CASES`
    others held, so a report lists failures first, in their original order."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNT_KEYS, 0))
    bad: list[tuple[int, Case]] = field(default_factory=list)
    rest: list[tuple[int, Case]] = field(default_factory=list)
    seen: int = 0

    def add(self, case: Case) -> None:
        self.counts[case.status] += 1
        self.seen += 1
        held = self.bad if case.status in (FAILED, ERROR) else self.rest
        if len(held) < MAX_CASES:
            held.append((self.seen, case))

    def listed(self) -> list[Case]:
        chosen = self.bad + self.rest[: MAX_CASES - len(self.bad)]
        return [case for _, case in sorted(chosen, key=lambda k: k[0])]


def report(
    runner: str, cases: Cases | None, duration_ms: int, message: str | None = None
) -> dict[str, Any]:
    """The `report` event: counts and cases, or (nothing parsed) nulls and why."""
    out: dict[str, Any] = {"runner": runner}
    if cases is None:
        out.update(dict.fromkeys(_COUNT_KEYS.values()))
        out.update(duration_ms=duration_ms, cases=None)
        out["message"] = message or "the test runner left no report to parse"
        return out
    for status, key in _COUNT_KEYS.items():
        out[key] = cases.counts[status]
    listed = cases.listed()
    out.update(duration_ms=duration_ms, cases=[c.public() for c in listed])
    if cases.seen > len(listed):
        out["cases_omitted"] = cases.seen - len(listed)
        message = message or f"{len(listed)} of {cases.seen} cases listed (failures first)"
    if cases.seen == 0:
        message = message or "no tests were found"
    if message:
        out["message"] = message
    return out


def counts(report_data: dict[str, Any]) -> dict[str, Any]:
    """`exit.tests`: the report's counts alone."""
    return {key: report_data.get(key) for key in _COUNT_KEYS.values()}


# --- JUnit XML -------------------------------------------------------------------------------


def parse_junit(documents: Iterable[bytes], into: Cases | None = None) -> Cases:
    """Cases of one or more JUnit XML documents (pytest, node's junit reporter, the JUnit
    Platform console launcher, Maven Surefire). ReportError if one is not JUnit XML."""
    cases = into if into is not None else Cases()
    for data in documents:
        _parse_one(data, cases)
    return cases


def _parse_one(data: bytes, cases: Cases) -> None:
    suites: list[str] = []
    stack: list[Element] = []  # open elements; a finished one leaves its parent at once
    in_case = 0  # a <testcase>'s children are kept until it ends
    try:
        events = iterparse(io.BytesIO(data), events=("start", "end"), forbid_dtd=True)
        for kind, elem in events:
            tag = elem.tag
            if kind == "start":
                if not stack and tag not in ("testsuites", "testsuite"):
                    raise ReportError(f"not a JUnit XML report (its root is <{str(tag)[:40]}>)")
                stack.append(elem)
                if tag == "testsuite":
                    suites.append(_text(elem.get("name")))
                elif tag == "testcase":
                    in_case += 1
                continue
            stack.pop()
            if tag == "testsuite" and suites:
                suites.pop()
            elif tag == "testcase":
                in_case -= 1
                if in_case == 0:
                    cases.add(_case(elem, suites[-1] if suites else ""))
            if in_case == 0 and stack:
                elem.clear()
                stack[-1].remove(elem)
    except ParseError as exc:
        raise ReportError(f"the report is not well-formed XML ({exc})") from None
    except DefusedXmlException as exc:
        raise ReportError(f"the report was refused: {type(exc).__name__} ({exc})") from None


def _case(elem: Element, suite: str) -> Case:
    status, message = PASSED, None
    for child in elem:
        tag = child.tag
        if tag == "error" or (tag == "failure" and status != ERROR):
            status = ERROR if tag == "error" else FAILED
            message = child.get("message") or (child.text or "").strip() or tag
        elif tag == "skipped" and status == PASSED:
            status = SKIPPED
    return Case(
        name=_text(elem.get("name")),
        suite=_text(elem.get("classname") or suite),
        status=status,
        duration_ms=_ms(elem.get("time")),
        message=message[:MESSAGE_CHARS] if message is not None else None,
    )


def _text(value: str | None) -> str:
    return (value or "")[:NAME_CHARS]


def _ms(seconds: str | float | None) -> int | None:
    if seconds is None:
        return None
    try:
        value = float(str(seconds).replace(",", ""))
    except ValueError:
        return None
    if not 0 <= value < 1e9:  # NaN, negative, absurd
        return None
    return round(value * 1000)


# --- go test -json ---------------------------------------------------------------------------


class GoTestStream:
    """`go test -json` read as it streams: `feed` returns what a person should see (each
    event's Output text, which is what `go test -v` prints; lines that are not JSON pass
    unchanged) and collects the cases: a test per `pass`/`fail`/`skip`, subtests included
    (as `go test` and gotestsum count them), and an `error` case for a package that failed
    on its own (a build failure, a panic outside a test, a timeout)."""

    def __init__(self) -> None:
        self.cases = Cases()
        self.events = 0
        self._partial = bytearray()
        self._output: dict[tuple[str, str], bytearray] = {}  # (package, test) -> output tail
        self._build: dict[str, bytearray] = {}  # import path -> build output tail
        self._failed_packages: set[str] = set()  # packages with a failed test

    def feed(self, data: bytes) -> bytes:
        self._partial += data
        shown: list[bytes] = []
        start = 0
        while (end := self._partial.find(b"\n", start)) != -1:
            shown.append(self._line(bytes(self._partial[start : end + 1])))
            start = end + 1
        del self._partial[:start]
        if len(self._partial) > MAX_LINE_BYTES:  # not a JSON event: pass it on as it is
            shown.append(bytes(self._partial))
            self._partial.clear()
        return b"".join(shown)

    def finish(self) -> bytes:
        rest, self._partial = bytes(self._partial), bytearray()
        return self._line(rest) if rest else b""

    def _line(self, line: bytes) -> bytes:
        if not line.lstrip().startswith(b"{"):
            return line
        try:
            event = json.loads(line)
        except ValueError:
            return line
        if not isinstance(event, dict) or not isinstance(event.get("Action"), str):
            return line
        self.events += 1
        output = event.get("Output")
        text = output.encode("utf-8", "replace") if isinstance(output, str) else b""
        self._event(event, text)
        return text

    def _event(self, event: dict[str, Any], text: bytes) -> None:
        action, package = event["Action"], _str(event.get("Package"))
        test = _str(event.get("Test"))
        if action == "build-output":
            path = _str(event.get("ImportPath"))
            if path in self._build or len(self._build) < MAX_TRACKED:
                _keep(self._build.setdefault(path, bytearray()), text)
            return
        key = (package, test)
        if action == "output":
            if key in self._output or len(self._output) < MAX_TRACKED:
                _keep(self._output.setdefault(key, bytearray()), text)
            return
        if action not in ("pass", "fail", "skip"):
            return
        tail = self._output.pop(key, b"")
        if not test:
            self._package_done(action, package, event, bytes(tail))
            return
        status = {"pass": PASSED, "fail": FAILED, "skip": SKIPPED}[action]
        message = None
        if status == FAILED:
            self._failed_packages.add(package)
            message = _go_message(bytes(tail)) or "failed"
        self.cases.add(
            Case(_text(test), _text(package), status, _ms(event.get("Elapsed")), message)
        )

    def _package_done(self, action: str, package: str, event: dict[str, Any], tail: bytes) -> None:
        if action != "fail" or package in self._failed_packages:
            return
        built = _str(event.get("FailedBuild"))
        if built:
            text = bytes(self._build.pop(built, b"")) or b"build failed"
            message = "build failed:\n" + text.decode("utf-8", "replace")
        else:
            message = _go_message(tail) or "the package's tests failed outside any test"
        self.cases.add(
            Case(_text(package), _text(package), ERROR, _ms(event.get("Elapsed")),
                 message[:MESSAGE_CHARS])
        )


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _keep(buffer: bytearray, text: bytes) -> None:
    buffer += text
    del buffer[:-OUTPUT_TAIL_BYTES]


_GO_FRAMING = re.compile(
    r"^(=== (RUN|PAUSE|CONT|NAME) |\s*--- (FAIL|PASS|SKIP): |(FAIL|PASS)$|FAIL\t|ok  )"
)


def _go_message(output: bytes) -> str:
    """A failed Go test's own lines (its t.Error/t.Log output, what it printed), without the
    runner's `=== RUN` / `--- FAIL` framing."""
    lines = [
        line.strip()
        for line in output.decode("utf-8", "replace").splitlines()
        if line.strip() and not _GO_FRAMING.match(line)
    ]
    return "\n".join(lines)[:MESSAGE_CHARS]
