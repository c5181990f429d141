"""Workspace and replay work never blocks the gateway's event loop: while a run that left 150k
files in its scratch folder ends, while a folder of 150k files is deleted, and while 20
clients replay one execution of ~50k events, `/healthz` answers with p99 < 250 ms."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.events import Event
from gateway.models import Execution, now
from gateway.registry import Registry
from tests.conftest import Gateway

from .conftest import HealthProbe, MakeSandbox, assert_gateway_fine, run

pytestmark = pytest.mark.docker

FILES = 150_000
# 150k inodes: an ext4 image of 4 GB (sparse; one inode per 16 KiB) holds 262k.
BIG_DISK = {"disk_mb": 4096}
MAKE_FILES = (
    "import os\n"
    f"def many(folder, n={FILES}):\n"
    "    os.makedirs(folder, exist_ok=True)\n"
    "    for i in range(n):\n"
    "        os.close(os.open(os.path.join(folder, f'f{i}'), os.O_CREAT | os.O_WRONLY))\n"
)


def test_a_run_that_leaves_150k_scratch_files_ends_without_blocking(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, probe: Callable[[], HealthProbe]
) -> None:
    sid = box(limits=BIG_DISK)["id"]
    code = MAKE_FILES + "many(os.path.dirname(os.path.abspath(__file__)))\nprint('made')\n"
    with probe() as health:
        r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": code, "timeout_seconds": 300})
        # The next exec of the sandbox waits for the previous one's clean-up.
        after = run(hc, sid, "ls -A .petri/code | wc -l")
    health.check("the end of a run that left 150k files in its scratch folder")
    assert r.status_code == 200 and r.json()["stdout"] == "made\n", r.text
    assert after["stdout"] == "0\n", after  # the scratch folder is gone
    assert_gateway_fine(hostile_gateway, hc)


def test_deleting_a_folder_of_150k_files_does_not_block(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, probe: Callable[[], HealthProbe]
) -> None:
    sid = box(limits=BIG_DISK)["id"]
    made = run(hc, sid, f"python3 - <<'EOF'\n{MAKE_FILES}many('many')\nprint('made')\nEOF")
    assert made["stdout"] == "made\n", made
    with probe() as health:
        d = hc.delete(f"/v1/sandboxes/{sid}/files/many")
    health.check("DELETE of a folder of 150k files")
    assert d.status_code == 204, d.text
    assert run(hc, sid, "ls -A")["stdout"] == ""
    assert_gateway_fine(hostile_gateway, hc)


EVENTS = 50_000
FOLLOWERS = 20


def _stored_execution(gw: Gateway, sid: str) -> str:
    """An ended execution of `sid` with EVENTS events, written with the gateway's own
    registry code. (No program makes Docker deliver 50k separate frames quickly: they are
    merged as they arrive; the read side under test is the same either way.)"""
    eid = f"ex-{secrets.token_hex(8)}"
    registry = Registry(gw.data_dir)
    try:
        registry.put_execution(
            Execution(eid, sid, ["python3", "main.py"], "exited", ended_at=now(), exit_code=0)
        )
        events = [Event(1, "start", {"execution_id": eid, "sandbox_id": sid})]
        for i in range(2, EVENTS):
            kind = "stdout" if i % 2 else "stderr"
            events.append(Event(i, kind, {"text": f"line {i} of a long run\n"}))
        events.append(Event(EVENTS, "exit", {"exit_code": 0, "duration_ms": 1}))
        for at in range(0, len(events), 5000):
            registry.append_events(eid, events[at : at + 5000])
    finally:
        registry.close()
    return eid


def test_twenty_followers_replaying_50k_events_do_not_block(
    hostile_gateway: Gateway,
    hc: httpx.Client,
    box: MakeSandbox,
    probe: Callable[[], HealthProbe],
    tmp_path: Path,
) -> None:
    sid = box()["id"]
    eid = _stored_execution(hostile_gateway, sid)
    url = f"{hostile_gateway.url}/v1/sandboxes/{sid}/executions/{eid}/events"
    # The followers are curl processes: 20 Python threads here would fight the probe's
    # thread for this process's GIL and measure the test, not the gateway.
    outputs = [tmp_path / f"follower-{i}.sse" for i in range(FOLLOWERS)]
    with probe() as health:
        followers = [
            subprocess.Popen(["curl", "-sSN", "--max-time", "300", "-o", str(out), url])
            for out in outputs
        ]
        codes = [f.wait(320) for f in followers]
    health.check(f"{FOLLOWERS} followers replaying {EVENTS} events")
    assert codes == [0] * FOLLOWERS
    for out in outputs:
        ids = [int(line[4:]) for line in out.read_text().splitlines() if line.startswith("id: ")]
        assert ids == list(range(1, EVENTS + 1)), (out, len(ids))
    assert_gateway_fine(hostile_gateway, hc)
