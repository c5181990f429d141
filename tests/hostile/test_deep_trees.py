"""Deep directory trees: a program nests folders ~2000 levels deep (deeper than Python's
recursion limit) in its workspace and in its own scratch folder, for the gateway's walkers to
trip over. Every walk and delete is iterative and bounded, and a run's ending (its terminal
event, leaving `live`, the leftover-process kill, the scratch clean-up) happens whatever its
clean-up meets."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.conftest import running_gateway

from .conftest import MakeSandbox, assert_gateway_fine, assert_usable, run

pytestmark = pytest.mark.docker

LEVELS = 2000

# Python that nests LEVELS folders named `d` under `top` (chdir by chdir: the whole path is
# longer than PATH_MAX) and leaves `leaf` at the bottom.
DEEP = f"""
import os
def deep(top, leaf='x.py'):
    os.makedirs(top, exist_ok=True)
    os.chdir(top)
    for _ in range({LEVELS}):
        os.mkdir('d')
        os.chdir('d')
    open(leaf, 'w').write('import json\\n')
    os.chdir('/sandbox')
"""

# The escaping daemon of test_resources: it leaves its process group (setsid).
DAEMON = """
import subprocess
subprocess.Popen(['setsid', 'sleep', '600'], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


def _deep_in_scratch() -> str:
    # The program's own scratch folder is where its source file is: .petri/code/<eid>.
    return DEEP + DAEMON + (
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "deep(os.path.join(here, 'tree'))\nprint('deep done', here.rsplit('/', 1)[-1])\n"
    )


def _scratch_left(hc: httpx.Client, sid: str) -> list[str]:
    r = run(hc, sid, "ls -A .petri/code 2>/dev/null; true")
    return r["stdout"].split()


def test_deep_tree_in_the_scratch_folder_still_ends_the_run(
    hostile_gateway: object, hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box(limits={"pids": 64})["id"]
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": _deep_in_scratch()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exit_code"] == 0 and body["stdout"].startswith("deep done"), body
    eid = body["execution_id"]
    # The run ended: it is no longer live (a kill says so), and its record is final.
    kill = hc.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
    assert kill.status_code == 409 and kill.json()["error"]["code"] == "not_running", kill.text
    # Its leftover daemon was killed and its scratch folder removed, however deep.
    assert_usable(hc, sid)
    assert eid not in _scratch_left(hc, sid)
    # Later code runs (import detection walks the workspace) work.
    again = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": "print('again')"}).json()
    assert again["exit_code"] == 0 and again["stdout"] == "again\n", again
    assert_gateway_fine(hostile_gateway, hc)  # type: ignore[arg-type]


def test_deep_tree_in_the_workspace_is_listed_scanned_and_deleted(
    hostile_gateway: object, hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box()["id"]
    made = run(hc, sid, f"python3 - <<'EOF'\n{DEEP}deep('deep')\nprint('ok')\nEOF")
    assert made["stdout"] == "ok\n", made
    hc.put(f"/v1/sandboxes/{sid}/files/top.py", content=b"import json\n")
    # The listing is bounded: 200, shallow files listed, the bottom not.
    listing = hc.get(f"/v1/sandboxes/{sid}/files")
    assert listing.status_code == 200, listing.text
    paths = {f["path"] for f in listing.json()["files"]}
    assert "top.py" in paths and not any(p.endswith("x.py") for p in paths)
    assert listing.json()["truncated"] is True and "deeper than" in listing.json()["note"]
    # Import detection walks the sources before every python run.
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": "print('scanned')"}).json()
    assert r["exit_code"] == 0 and r["stdout"] == "scanned\n", r
    # Deleting the folder removes all of it.
    started = time.monotonic()
    d = hc.delete(f"/v1/sandboxes/{sid}/files/deep")
    assert d.status_code == 204, d.text
    assert time.monotonic() - started < 30
    assert run(hc, sid, "ls -A")["stdout"].split() == [".petri", "top.py"]
    assert_usable(hc, sid)


def test_deep_tree_where_the_installer_stages(hc: httpx.Client, box: MakeSandbox) -> None:
    """The installer removes its stamp and package list before an install: a program that
    made them deep folders gets them removed, and the install runs."""
    sid = box()["id"]
    made = run(
        hc,
        sid,
        f"python3 - <<'EOF'\n{DEEP}deep('.deps/.petri/stamp')\ndeep('.deps/.petri/packages.txt')\n"
        "print('ok')\nEOF\n: > requirements.txt",
    )
    assert made["stdout"] == "ok\n", made
    r = hc.post(
        f"/v1/sandboxes/{sid}/exec", json={"code": "print('installed')"}, timeout=300
    ).json()
    assert r["exit_code"] == 0 and r["stdout"] == "installed\n", r
    assert r["install"]["status"] == "installed", r["install"]
    left = run(hc, sid, "test -d .deps/.petri/stamp && echo dir || echo file")["stdout"]
    assert left == "file\n"


def test_deep_trees_do_not_keep_a_sandbox_alive_or_stop_a_shutdown() -> None:
    """A gateway with plain-directory workspaces (no quota image): removing a whole workspace
    walks the program's tree too. The sandbox is reaped once idle, and SIGTERM ends the
    gateway promptly and cleanly."""
    with running_gateway(
        "deep", disk_mb="0", reaper_interval_seconds="1", shutdown_grace_seconds="20"
    ) as gw, gw.client(timeout=120) as c:
        sid = c.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": 4}).json()["id"]
        made = run(c, sid, f"python3 - <<'EOF'\n{DEEP}deep('deep')\nprint('ok')\nEOF")
        assert made["stdout"] == "ok\n", made
        r = c.post(f"/v1/sandboxes/{sid}/exec", json={"code": _deep_in_scratch()}).json()
        assert r["exit_code"] == 0, r
        deadline = time.monotonic() + 30
        while sid in {s["id"] for s in c.get("/v1/sandboxes").json()["sandboxes"]}:
            assert time.monotonic() < deadline, "the idle sandbox was never reaped"
            time.sleep(0.5)  # (listing does not touch a sandbox; GET would renew it)
        assert not (gw.workspace_root / sid).exists(), "its workspace was left behind"
        # A second sandbox runs the same program and is deleted; then the gateway stops.
        sid2 = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        r = c.post(f"/v1/sandboxes/{sid2}/exec", json={"code": _deep_in_scratch()}).json()
        assert r["exit_code"] == 0, r
        assert c.delete(f"/v1/sandboxes/{sid2}").status_code == 204
        started = time.monotonic()
        assert gw.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert time.monotonic() - started < 15, "shutdown waited on a run that had ended"
        assert gw.log_path is not None
        logged = gw.log_path.read_text()
        assert "Traceback" not in logged and "RecursionError" not in logged, logged[-3000:]
