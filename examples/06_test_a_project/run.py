"""Test mode: upload a small web app with its tests, let Petri start the app, wait until it
answers, run the project's own test runner against it, and read the parsed report.

    PETRI_URL=http://127.0.0.1:8000 python examples/06_test_a_project/run.py [python|node|go|java]

The app's output arrives as `app` events (shown with "[app]"), the tests' output as stdout
and stderr, then one `report` event and `exit` with the counts. Each folder here is a project
an AI could have written: an app reading PORT, tests reading APP_URL.
"""

import sys
from pathlib import Path

from petri_sdk import (
    App,
    AppEvent,
    ErrorEvent,
    ExitEvent,
    ReadyEvent,
    ReportEvent,
    Sandbox,
    StderrEvent,
    StdoutEvent,
)

HERE = Path(__file__).resolve().parent
APPS = {
    "python": App("python3 app.py", 5000, ready_path="/"),
    "node": App("node app.js", 3000, ready_path="/"),
    # a fresh sandbox compiles net/http first: give it time
    "go": App("go run .", 8080, ready_path="/", ready_timeout=600),
    "java": App("java src/main/java/App.java", 8080, ready_path="/", ready_timeout=300),
}

language = sys.argv[1] if len(sys.argv) > 1 else "python"
exit_code = 2
with Sandbox.create(language) as sb:  # PETRI_URL, PETRI_API_KEY
    sb.files.upload_dir(HERE / language)
    for event in sb.stream(test=True, app=APPS[language], timeout=900):
        match event:
            case AppEvent(text=text):
                for line in text.splitlines():
                    print(f"[app] {line}")
            case StdoutEvent(text=text):
                print(text, end="")
            case StderrEvent(text=text):
                print(text, end="", file=sys.stderr)
            case ReadyEvent(port=port, after_ms=after_ms):
                print(f"-- the app answers on port {port} after {after_ms} ms")
            case ReportEvent(report=report) if report is not None:
                print(
                    f"-- report ({report.runner}): {report.passed} passed, "
                    f"{report.failed} failed, {report.skipped} skipped, "
                    f"{report.errors} errors in {report.duration_ms} ms"
                )
                for case in report.cases or []:
                    print(f"   {case.status:7} {case.suite} :: {case.name}")
            case ExitEvent(exit_code=code, tests=tests):
                counts = tests and {
                    "passed": tests.passed,
                    "failed": tests.failed,
                    "skipped": tests.skipped,
                    "errors": tests.errors,
                }
                print(f"-- exit {code}, tests {counts}")
                exit_code = 0 if code == 0 else 1
            case ErrorEvent(code=code, message=message):
                print(f"-- error {code}: {message}")
                exit_code = 2
sys.exit(exit_code)
