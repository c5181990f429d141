"""Test mode: upload a small web app with its tests, let Petri start the app, wait until it
answers, run the project's own test runner against it, and read the parsed report.

    PETRI_URL=http://127.0.0.1:8000 python examples/06_test_a_project/run.py [python|node|go|java]

The app's output arrives as `app` events (shown with "[app]"), the tests' output as stdout
and stderr, then one `report` event and `exit` with the counts. Each folder here is a project
an AI could have written: an app reading PORT, tests reading APP_URL.
"""

import os
import sys
from pathlib import Path

from petri_sdk import Petri

URL = os.environ.get("PETRI_URL", "http://127.0.0.1:8000")
HERE = Path(__file__).resolve().parent
APPS = {
    "python": {"command": "python3 app.py", "port": 5000, "ready_path": "/"},
    "node": {"command": "node app.js", "port": 3000, "ready_path": "/"},
    # a fresh sandbox compiles net/http first: give it time
    "go": {"command": "go run .", "port": 8080, "ready_path": "/", "ready_timeout_seconds": 600},
    "java": {"command": "java src/main/java/App.java", "port": 8080, "ready_path": "/",
             "ready_timeout_seconds": 300},
}

language = sys.argv[1] if len(sys.argv) > 1 else "python"
project = HERE / language
with Petri(URL, timeout=900) as petri:
    sandbox = petri.create(language)
    try:
        for path in sorted(p for p in project.rglob("*") if p.is_file()):
            sandbox.write(str(path.relative_to(project)), path.read_bytes())
        body = {"test": True, "app": APPS[language], "timeout_seconds": 900}
        for event in sandbox.stream(**body):
            if event.type == "app":
                for line in event.data["text"].splitlines():
                    print(f"[app] {line}")
            elif event.type in ("stdout", "stderr"):
                stream = sys.stdout if event.type == "stdout" else sys.stderr
                print(event.data["text"], end="", file=stream)
            elif event.type == "ready":
                print(f"-- the app answers on port {event.data['port']} "
                      f"after {event.data['after_ms']} ms")
            elif event.type == "report":
                report = event.data
                print(f"-- report ({report['runner']}): {report['passed']} passed, "
                      f"{report['failed']} failed, {report['skipped']} skipped, "
                      f"{report['errors']} errors in {report['duration_ms']} ms")
                for case in report["cases"] or []:
                    print(f"   {case['status']:7} {case['suite']} :: {case['name']}")
            elif event.type == "exit":
                print(f"-- exit {event.data['exit_code']}, tests {event.data.get('tests')}")
                sys.exit(0 if event.data["exit_code"] == 0 else 1)
            elif event.type == "error":
                print(f"-- error {event.data['code']}: {event.data['message']}")
                sys.exit(2)
    finally:
        sandbox.delete()
