"""The test-report parsers (gateway/reports.py) on output captured from the real runners in
the runtime images (tests/unit/reports/), and on hostile or broken input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway import reports
from gateway.errors import ReportError
from gateway.reports import Cases, GoTestStream, parse_junit

DATA = Path(__file__).parent / "reports"


def by_name(cases: Cases) -> dict[str, reports.Case]:
    return {c.name: c for c in cases.listed()}


def test_pytest_junit_xml() -> None:
    cases = parse_junit([(DATA / "pytest.xml").read_bytes()])
    assert cases.counts == {"passed": 2, "failed": 1, "skipped": 1, "error": 1}
    found = by_name(cases)
    assert found["test_ok"].status == "passed" and found["test_ok"].suite == "test_cap"
    assert found["test_bad"].status == "failed"
    assert found["test_bad"].message == "AssertionError: math is hard\nassert (1 + 1) == 3"
    assert found["test_skipped"].status == "skipped" and found["test_skipped"].message is None
    assert found["test_error"].status == "error"
    assert "fixture exploded" in (found["test_error"].message or "")
    assert found["test_in_class"].suite == "test_cap.TestGroup"
    assert found["test_bad"].duration_ms == 5
    # the original order is kept
    assert [c.name for c in cases.listed()] == [
        "test_ok", "test_bad", "test_skipped", "test_error", "test_in_class"
    ]


def test_node_junit_reporter() -> None:
    cases = parse_junit([(DATA / "node.xml").read_bytes()])
    assert cases.counts == {"passed": 2, "failed": 1, "skipped": 1, "error": 0}
    found = by_name(cases)
    assert found["fails"].status == "failed" and "math is hard" in (found["fails"].message or "")
    assert found["skipped one"].status == "skipped"
    # a case inside a `describe` keeps node's classname; top-level ones too
    assert found["inner ok"].status == "passed" and found["inner ok"].suite == "test"


def test_junit_platform_console_launcher() -> None:
    cases = parse_junit([(DATA / "junit-platform.xml").read_bytes()])
    assert cases.counts == {"passed": 1, "failed": 1, "skipped": 0, "error": 0}
    found = by_name(cases)
    assert found["fails()"].suite == "CalcTest"
    assert found["fails()"].message == "math is hard ==> expected: <3> but was: <2>"
    assert found["adds()"].duration_ms == 329


def test_several_documents_add_up() -> None:
    docs = [(DATA / n).read_bytes() for n in ("pytest.xml", "junit-platform.xml")]
    assert parse_junit(docs).counts == {"passed": 3, "failed": 2, "skipped": 1, "error": 1}


def test_surefire_shape() -> None:
    # Written after Surefire's documented report format (Maven Central is not reachable
    # here to capture one): a <testsuite> root, one <testcase> per method.
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.example.AppTest"
  time="0.05" tests="2" errors="0" skipped="0" failures="1">
  <testcase name="adds" classname="com.example.AppTest" time="0.01"/>
  <testcase name="fails" classname="com.example.AppTest" time="0.02">
    <failure message="expected: &lt;3&gt; but was: &lt;2&gt;"
      type="AssertionFailedError">trace</failure>
  </testcase>
</testsuite>"""
    cases = parse_junit([xml])
    assert cases.counts["failed"] == 1 and by_name(cases)["fails"].suite == "com.example.AppTest"


def test_report_event_shape() -> None:
    cases = parse_junit([(DATA / "pytest.xml").read_bytes()])
    data = reports.report("pytest", cases, 1234)
    assert set(data) == {
        "runner", "passed", "failed", "skipped", "errors", "duration_ms", "cases"
    }
    assert (data["passed"], data["failed"], data["skipped"], data["errors"]) == (2, 1, 1, 1)
    assert data["cases"][1] == {
        "name": "test_bad",
        "suite": "test_cap",
        "status": "failed",
        "duration_ms": 5,
        "message": "AssertionError: math is hard\nassert (1 + 1) == 3",
    }
    assert reports.counts(data) == {"passed": 2, "failed": 1, "skipped": 1, "errors": 1}
    json.dumps(data)


def test_nothing_to_parse_is_null_not_zero() -> None:
    data = reports.report("pytest", None, 10, "the runner left nothing")
    assert data["cases"] is None and data["passed"] is None and data["errors"] is None
    assert data["message"] == "the runner left nothing"


def test_no_tests_says_so() -> None:
    xml = b'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="0"/></testsuites>'
    data = reports.report("pytest", parse_junit([xml]), 10)
    assert data["cases"] == [] and data["passed"] == 0 and data["message"] == "no tests were found"


@pytest.mark.parametrize(
    "xml",
    [
        b"",
        b"<testsuites><testcase name='x'>",  # cut short
        b"not xml at all",
        b"<html><body>nope</body></html>",  # well-formed, not JUnit
        b"\xff\xfe<\x00t\x00",  # garbage bytes
    ],
)
def test_malformed_xml_is_a_report_error(xml: bytes) -> None:
    with pytest.raises(ReportError):
        parse_junit([xml])


def test_billion_laughs_is_refused_fast() -> None:
    lol = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<testsuite name="&lol9;"><testcase name="&lol9;"/></testsuite>"""
    started = time.monotonic()
    with pytest.raises(ReportError, match="refused"):
        parse_junit([lol])
    assert time.monotonic() - started < 1


def test_external_entity_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOP SECRET")
    xxe = f"""<?xml version="1.0"?>
<!DOCTYPE t [<!ENTITY x SYSTEM "file://{secret}">]>
<testsuite name="s"><testcase name="&x;"/></testsuite>""".encode()
    with pytest.raises(ReportError, match="refused"):
        parse_junit([xxe])


def test_caps_on_names_messages_and_cases() -> None:
    many = "".join(
        f'<testcase name="t{i}" classname="c"/>' for i in range(reports.MAX_CASES + 500)
    )
    failing = (
        f'<testcase name="{"n" * 5000}" classname="c"><failure message="{"m" * 9000}"/></testcase>'
    )
    xml = f"<testsuite name='s'>{many}{failing}</testsuite>".encode()
    cases = parse_junit([xml])
    assert cases.counts["passed"] == reports.MAX_CASES + 500 and cases.counts["failed"] == 1
    listed = cases.listed()
    assert len(listed) == reports.MAX_CASES
    assert listed[-1].status == "failed"  # failures are listed first, whatever comes before
    assert len(listed[-1].name) == reports.NAME_CHARS
    assert len(listed[-1].message or "") == reports.MESSAGE_CHARS
    data = reports.report("x", cases, 1)
    assert data["cases_omitted"] == 501 and "failures first" in data["message"]


def test_bad_durations_are_null() -> None:
    xml = b"""<testsuite name="s"><testcase name="a" time="nan"/><testcase name="b" time="-1"/>
<testcase name="c" time="x"/><testcase name="d" time="1,234.5"/><testcase name="e"/></testsuite>"""
    found = by_name(parse_junit([xml]))
    assert [found[n].duration_ms for n in "abcde"] == [None, None, None, 1234500, None]


# --- go test -json ---------------------------------------------------------------------------


def test_go_json_renders_text_and_collects_cases() -> None:
    raw = (DATA / "go.jsonl").read_bytes()
    stream = GoTestStream()
    # fed in odd-sized chunks, as frames arrive: lines are cut anywhere
    shown = b"".join(stream.feed(raw[i : i + 37]) for i in range(0, len(raw), 37))
    shown += stream.finish()
    text = shown.decode()
    assert "=== RUN   TestAdd\nhello from test\n--- PASS: TestAdd" in text
    assert "calc_test.go:4: got 2, want 3" in text
    assert "bad/b_test.go:3:28: undefined: undefined" in text  # build output is shown
    assert '"Action"' not in text
    cases = stream.cases
    assert cases.counts == {"passed": 2, "failed": 3, "skipped": 1, "error": 1}
    found = by_name(cases)
    assert found["TestFail"].message == "calc_test.go:4: got 2, want 3"
    assert found["TestFail"].suite == "example.com/gt"
    assert found["TestSub/inner_fail"].message == "calc_test.go:6: sub broke"
    assert found["TestSkip"].status == "skipped"
    build = found["example.com/gt/bad"]
    assert build.status == "error" and "undefined: undefined" in (build.message or "")


def test_go_json_passes_non_json_lines_through() -> None:
    stream = GoTestStream()
    out = stream.feed(b"go: downloading x\n{not json}\n[1,2]\n{\"Action\": 3}\n")
    assert out == b"go: downloading x\n{not json}\n[1,2]\n{\"Action\": 3}\n"
    assert stream.events == 0


def test_go_json_bounds_a_line_without_newline() -> None:
    stream = GoTestStream()
    out = stream.feed(b"x" * (reports.MAX_LINE_BYTES + 10))
    assert len(out) == reports.MAX_LINE_BYTES + 10  # passed on, not held
    assert stream.feed(b"y\n") == b"y\n"


def test_go_json_package_failure_outside_tests() -> None:
    events = [
        {"Action": "start", "Package": "p"},
        {"Action": "output", "Package": "p", "Output": "panic: boom in TestMain\n"},
        {"Action": "output", "Package": "p", "Output": "FAIL\tp\t0.01s\n"},
        {"Action": "fail", "Package": "p", "Elapsed": 0.01},
    ]
    stream = GoTestStream()
    stream.feed("".join(json.dumps(e) + "\n" for e in events).encode())
    (case,) = stream.cases.listed()
    assert (case.status, case.name, case.message) == ("error", "p", "panic: boom in TestMain")
