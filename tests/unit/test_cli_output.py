"""What the CLI prints for a run's events: program output byte for byte on its own stream,
Petri's own lines (errors, test summaries) on stderr without control characters a program
or a gateway answer could use to fake a line or reprogram the terminal."""

from __future__ import annotations

import pytest

from gateway.cli import Printer
from petri_sdk import ErrorEvent, ExitEvent, ReportEvent, StderrEvent, StdoutEvent, TestReport

ESC = "\x1b]0;pwned\x07\x1b[2K\rpetri: all good\x9b31m"


def test_program_output_is_passed_through_and_petri_lines_are_plain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = TestReport.from_json(
        {
            "runner": "pytest",
            "passed": 1,
            "failed": 1,
            "skipped": 0,
            "errors": 0,
            "duration_ms": 10,
            "cases": [
                {
                    "name": f"test_x{ESC}",
                    "suite": "s",
                    "status": "failed",
                    "message": f"assert 1\n{ESC}",
                }
            ],
        }
    )
    printer = Printer()
    for event in (
        StdoutEvent(2, {}, f"out {ESC}"),
        StderrEvent(3, {}, "err\n"),
        ReportEvent(4, {}, report),
        ExitEvent(5, {}, exit_code=1),
    ):
        printer(event)
    Printer()(ErrorEvent(6, {}, "install_failed", f"pip said {ESC}"))
    out, err = capsys.readouterr()
    assert out == f"out {ESC}"  # the program's own bytes, as on a terminal
    petri_lines = err.removeprefix("err\n")
    assert "\x1b" not in petri_lines and "\x07" not in petri_lines and "\x9b" not in petri_lines
    assert "\r" not in petri_lines
    assert "FAILED s::test_x?]0;pwned" in petri_lines and "tests: 1 passed, 1 failed" in petri_lines
    assert "petri: install_failed: pip said ?]0;pwned" in petri_lines
    assert printer.exit_code == 1
