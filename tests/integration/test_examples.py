"""The numbered examples run as documented against a real gateway."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Gateway

pytestmark = pytest.mark.docker


RUNNERS = {".py": [sys.executable], ".sh": ["bash"], ".mjs": ["node"]}


@pytest.mark.parametrize("name", sorted(
    p.name for p in (ROOT / "examples").iterdir()
    if p.suffix in RUNNERS or (p / "run.py").is_file()))
def test_example_runs(gateway: Gateway, name: str) -> None:
    path = ROOT / "examples" / name
    if path.is_dir():  # a folder example: its run.py (with its default arguments)
        path = path / "run.py"
    argv = [*RUNNERS[path.suffix], str(path)]
    env = {**os.environ, "PETRI_URL": gateway.url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if name.startswith("01"):
        assert "event: stdout" in done.stdout and "tick 2" in done.stdout
        assert "event: exit" in done.stdout
    if name.startswith("02"):
        assert "hello, petri" in done.stdout and "written by the program" in done.stdout
    if name.startswith("05"):
        assert '"timed_out":true' in done.stdout and '"signal":"SIGKILL"' in done.stdout
    if name.startswith("06"):
        assert "-- the app answers on port 5000" in done.stdout
        assert "[app] listening on port 5000" in done.stdout
        assert "-- report (pytest): 3 passed, 0 failed, 0 skipped, 0 errors" in done.stdout
        assert "passed  tests.test_app :: test_add" in done.stdout
        assert "-- exit 0, tests {'passed': 3, 'failed': 0, 'skipped': 0, " in done.stdout
    if name.startswith("07"):
        assert "status: ready" in done.stdout
        assert "<h1>Hello from a Petri sandbox</h1>" in done.stdout
        assert '"path": "/api/hello?name=petri"' in done.stdout
        assert "the preview answers 404" in done.stdout and "event: ready" in done.stdout
    if name.startswith("03"):
        assert "raw HTTP replay matches" in done.stdout
    if name.startswith("10"):
        assert "1 passed" in done.stdout and "add works" in done.stdout
    if name.startswith("11"):
        assert "[python] exit 2" in done.stdout and "[node] node says hello world" in done.stdout
    if name.startswith("12"):
        assert "exit code: 3 stdout: hello from MCP" in done.stdout
        assert "progress: started execution ex-" in done.stdout
    if name.startswith("13"):
        assert "args: ['one', 'two words']" in done.stdout and "exit code: 4" in done.stdout
        assert "1 passed" in done.stdout and "\n8\n" in done.stdout
    if name.startswith("14"):
        assert "hi from js" in done.stdout and "events: start stdout exit" in done.stdout
