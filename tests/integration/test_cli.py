"""The `petri` command against a real gateway, as a user runs it (a subprocess): stdout and
stderr kept apart, the program's exit code, --help everywhere, colour only on a terminal and
never with NO_COLOR, one clear line when the gateway is not running."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Gateway, free_port

pytestmark = pytest.mark.docker

ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = [
    [],
    ["run"],
    ["exec"],
    ["logs"],
    ["sandboxes"],
    ["sandboxes", "ls"],
    ["sandboxes", "rm"],
    ["mcp"],
    ["serve"],
    ["images"],
    ["images", "build"],
]


def petri(
    *args: str, url: str, env: dict[str, str] | None = None, timeout: float = 180, **kw: object
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "PETRI_API_KEY")}
    environ.update({"PETRI_URL": url, "PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "conftest.py").write_text("")
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "main.py").write_text(
        "import sys\nfrom calc import add\nprint('sum', add(*map(int, sys.argv[1:3])))\n"
        "print('note', file=sys.stderr)\nsys.exit(int(sys.argv[3]) if len(sys.argv) > 3 else 0)\n"
    )
    (root / "tests" / "test_calc.py").write_text(
        "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n\n"
        "def test_wrong():\n    assert add(2, 2) == 5\n"
    )
    return root


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "petri")
def test_help_everywhere(command: list[str]) -> None:
    done = petri(*command, "--help", url="http://127.0.0.1:1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: petri") and "--help" in done.stdout
    assert petri(*command, "-h", url="http://127.0.0.1:1").stdout == done.stdout


def test_run_a_file_keeps_streams_apart_and_exits_with_its_code(
    gateway: Gateway, tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\nprint('to stdout', sys.argv[1:])\nprint('to stderr', file=sys.stderr)\n"
        "sys.exit(7)\n"
    )
    before = _sandbox_ids(gateway)
    done = petri("run", str(script), "--", "--flag", "two words", url=gateway.url)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "to stdout ['--flag', 'two words']\n"
    assert done.stderr == "to stderr\n"  # Petri adds nothing to a clean run
    assert _sandbox_ids(gateway) <= before, "the sandbox was not deleted"


def test_run_a_folder_its_main_file_and_its_tests(gateway: Gateway, project: Path) -> None:
    done = petri("run", str(project), "--", "2", "3", "4", url=gateway.url)
    assert (done.returncode, done.stdout, done.stderr) == (4, "sum 5\n", "note\n")
    tested = petri("run", str(project), "--test", url=gateway.url)
    assert tested.returncode == 1, tested.stderr
    assert "test_wrong" in tested.stdout and "1 failed, 1 passed" in tested.stdout
    assert "FAILED tests.test_calc::test_wrong" in tested.stderr
    assert "tests: 1 passed, 1 failed, 0 skipped (pytest" in tested.stderr
    kept = petri("run", str(project), "--keep", "--", "1", "1", url=gateway.url)
    sid = re.search(r"kept sandbox (sb-\w+)", kept.stderr)
    assert kept.returncode == 0 and sid, kept.stderr
    assert httpx.get(f"{gateway.url}/v1/sandboxes/{sid.group(1)}").status_code == 200
    httpx.delete(f"{gateway.url}/v1/sandboxes/{sid.group(1)}")


@pytest.fixture
def sid(gateway: Gateway) -> Iterator[str]:
    r = httpx.post(f"{gateway.url}/v1/sandboxes", json={"language": "python"}, timeout=60)
    yield r.json()["id"]
    httpx.delete(f"{gateway.url}/v1/sandboxes/{r.json()['id']}", timeout=60)


def test_exec_ls_logs_and_rm(gateway: Gateway, sid: str) -> None:
    done = petri("exec", sid, "--", "echo", "a  b", url=gateway.url)
    assert (done.returncode, done.stdout) == (0, "a  b\n")
    done = petri("exec", sid, "--", "echo out; echo err >&2; exit 5", url=gateway.url)
    assert (done.returncode, done.stdout, done.stderr) == (5, "out\n", "err\n")
    done = petri("exec", sid, "-e", "NAME=petri", "--", 'echo "hi $NAME"', url=gateway.url)
    assert done.stdout == "hi petri\n"

    listing = petri("sandboxes", "ls", url=gateway.url)
    assert listing.returncode == 0 and sid in listing.stdout
    assert listing.stdout.startswith("ID ") and "\x1b[" not in listing.stdout
    assert sid in petri("sandboxes", "ls", "--json", url=gateway.url).stdout

    # logs: a finished run replayed, with its exit code
    runs = httpx.get(f"{gateway.url}/v1/sandboxes/{sid}/executions").json()["executions"]
    eid = next(r["id"] for r in runs if r["exit_code"] == 5)
    logs = petri("logs", sid, eid, url=gateway.url)
    assert (logs.returncode, logs.stdout, logs.stderr) == (5, "out\n", "err\n")
    # a running one: up to now, or followed to its end with -f
    started = httpx.post(
        f"{gateway.url}/v1/sandboxes/{sid}/exec",
        json={
            "command": "echo one; until [ -e go ]; do sleep 0.1; done; echo two",
            "wait": False,
        },
    ).json()["execution_id"]
    time.sleep(1.0)
    now = petri("logs", sid, started, url=gateway.url)
    assert now.stdout == "one\n" and "still running" in now.stderr
    # the run goes on only once the test says so (no race with a slow CLI start)
    httpx.put(f"{gateway.url}/v1/sandboxes/{sid}/files/go", content=b"")
    followed = petri("logs", sid, started, "-f", url=gateway.url)
    assert (followed.returncode, followed.stdout) == (0, "one\ntwo\n")

    gone = petri("sandboxes", "rm", sid, "sb-0000000000000000", url=gateway.url)
    assert gone.returncode == 1 and gone.stdout == f"{sid}\n"
    assert "no sandbox sb-0000000000000000" in gone.stderr
    assert httpx.get(f"{gateway.url}/v1/sandboxes/{sid}").status_code == 404


def test_a_gateway_that_is_not_running_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    script = tmp_path / "x.py"
    script.write_text("print(1)\n")
    for args, code in (
        (["sandboxes", "ls"], 1),
        (["run", str(script)], 125),
        (["exec", "sb-1", "--", "true"], 125),
    ):
        done = petri(*args, url=url)
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"petri: cannot reach the Petri gateway at {url}")


def test_petri_errors_are_one_line_and_bad_usage_is_2(gateway: Gateway, tmp_path: Path) -> None:
    done = petri("exec", "sb-0000000000000000", "--", "true", url=gateway.url)
    assert done.returncode == 125 and done.stderr.startswith("petri: sandbox_not_found:")
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    done = petri("run", str(odd), url=gateway.url)
    assert done.returncode == 2 and "give --language" in done.stderr
    done = petri("run", url=gateway.url)
    assert done.returncode == 2 and "Missing argument" in done.stderr


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run with stderr on a pseudo-terminal; return what it wrote there."""
    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        env={**environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(leader)
    return out.decode()


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    url = {"PETRI_URL": f"http://127.0.0.1:{free_port()}"}
    coloured = _on_a_terminal(["sandboxes", "ls"], url)
    assert "\x1b[31m" in coloured and "cannot reach" in coloured
    plain = _on_a_terminal(["sandboxes", "ls"], {**url, "NO_COLOR": "1"})
    assert "cannot reach" in plain and not ANSI.search(plain)
    piped = petri("sandboxes", "ls", url=url["PETRI_URL"])
    assert "cannot reach" in piped.stderr and not ANSI.search(piped.stderr)


def test_ctrl_c_kills_the_run_and_deletes_the_sandbox(gateway: Gateway, tmp_path: Path) -> None:
    script = tmp_path / "forever.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    environ = {**os.environ, "PETRI_URL": gateway.url, "PYTHONPATH": str(ROOT)}
    before = _sandbox_ids(gateway)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(script)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal would have it. A suite started in the background by a shell without
        # job control inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_interruptible,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    ours = _sandbox_ids(gateway) - before
    assert len(ours) == 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    assert not ours & _sandbox_ids(gateway), "the sandbox of the interrupted run is still there"


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sandbox_ids(gateway: Gateway) -> set[str]:
    listed = httpx.get(f"{gateway.url}/v1/sandboxes", params={"limit": 500}).json()
    return {s["id"] for s in listed["sandboxes"]}
