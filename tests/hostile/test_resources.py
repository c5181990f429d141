"""Resource attacks: fork bombs, memory bombs, disk fills, open files, CPU hogs, programs that
never end. Each must hit its limit as the program's own error (or a clear `exit` flag), leave
the gateway answering, and leave the sandbox usable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway
from tests.sse import text

from .conftest import (
    HealthProbe,
    MakeSandbox,
    assert_gateway_fine,
    assert_usable,
    container,
    run,
    stream,
)

pytestmark = pytest.mark.docker

# Children that sleep hold their pid: the pids limit is reached and stays reached.
PY_FORK_BOMB = """
import os, time
end, forked, failed = time.time() + 6, 0, None
while time.time() < end:
    try:
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        forked += 1
    except OSError as exc:
        failed = exc
        time.sleep(0.01)
print("forked", forked, "then:", failed)
"""

# Children that left the exec's process group (setsid) and keep running after it ends.
PY_ESCAPING_DAEMONS = """
import os, time
for _ in range(20):
    if os.fork() == 0:
        os.setsid()
        time.sleep(300)
        os._exit(0)
print("daemons started")
"""

MEMORY_BOMB = "x = []\nwhile True:\n    x.append(bytearray(8 * 1024 * 1024))\n"


def test_fork_bomb_hits_the_pids_limit_and_the_sandbox_recovers(
    hostile_gateway: Gateway,
    hc: httpx.Client,
    box: MakeSandbox,
    probe: Callable[[], HealthProbe],
) -> None:
    sid = box(limits={"pids": 64})["id"]
    assert container(hostile_gateway, sid)["HostConfig"]["PidsLimit"] == 64
    with probe() as health:
        # The classic bash bomb: its first shell returns at once, its copies multiply in the
        # background until the pids limit stops them.
        started = time.monotonic()
        bash = stream(hc, sid, command=":(){ :|:& };:", timeout_seconds=15)
        bash_took = time.monotonic() - started
        # A bomb that keeps the limit spent for seconds, and reports the error it got.
        python = stream(hc, sid, code=PY_FORK_BOMB, timeout_seconds=30)
    health.check("fork bombs")
    assert bash[-1].type == "exit" and bash_took < 30, bash[-1]
    assert "Resource temporarily unavailable" in text(bash, "stderr")
    assert python[-1].type == "exit" and python[-1].data["exit_code"] == 0, python[-1]
    out = text(python, "stdout")
    assert "Resource temporarily unavailable" in out, out  # the program's own EAGAIN
    forked = int(out.split()[1])
    assert 40 <= forked < 64, out  # up to the limit, never past it
    # What the bombs left (sleeping children, background copies) is gone.
    assert_usable(hc, sid)
    assert_gateway_fine(hostile_gateway, hc)


def test_daemons_that_leave_their_process_group_die_with_the_exec(
    hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box(limits={"pids": 64})["id"]
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": PY_ESCAPING_DAEMONS}).json()
    assert r["stdout"] == "daemons started\n", r
    assert_usable(hc, sid)


def test_memory_bomb_is_oom_killed_and_says_so(
    hostile_gateway: Gateway,
    hc: httpx.Client,
    box: MakeSandbox,
    probe: Callable[[], HealthProbe],
) -> None:
    sid = box(limits={"memory_mb": 128})["id"]
    host = container(hostile_gateway, sid)["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 128 * 1024 * 1024  # no swap to spill into
    with probe() as health:
        # Three bombs in a row keep the memory cgroup at its limit for a while.
        for_loop = stream(
            hc,
            sid,
            command=f"for i in 1 2 3; do python3 -c '{MEMORY_BOMB}'; done",
            timeout_seconds=60,
        )
        single = stream(hc, sid, code=MEMORY_BOMB, timeout_seconds=60)
    health.check("memory bombs")
    for events in (for_loop, single):
        end = events[-1]
        assert end.type == "exit", end
        assert end.data["exit_code"] == 137 and end.data["signal"] == "SIGKILL", end.data
        assert end.data["oom_killed"] is True and end.data["timed_out"] is False, end.data
    assert_usable(hc, sid)
    # A program that does not blow the limit is not marked as OOM-killed afterwards.
    killed = run(hc, sid, "kill -9 $$")
    assert killed["exit_code"] == 137 and killed["oom_killed"] is False, killed
    assert_gateway_fine(hostile_gateway, hc)


def test_full_tmpfs_leaves_memory_to_run(hc: httpx.Client, box: MakeSandbox) -> None:
    """/tmp is memory: it is capped below the memory limit, so filling it cannot OOM the
    sandbox for good."""
    sid = box(limits={"memory_mb": 128})["id"]
    r = run(hc, sid, "head -c 200M /dev/zero > /tmp/fill; echo rc=$?; df -m /tmp | tail -1")
    assert "rc=1" in r["stdout"] and "No space left on device" in r["stderr"], r
    size_mb = int(r["stdout"].split("\n")[1].split()[1])
    assert size_mb <= 64, r  # half of the memory limit
    big = run(hc, sid, "python3 -c \"b = bytearray(24 * 1024 * 1024); print('ran', len(b))\"")
    assert big["stdout"] == f"ran {24 * 1024 * 1024}\n" and big["oom_killed"] is False, big
    assert_usable(hc, sid)


def test_one_big_file_stops_at_the_workspace_quota(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box(limits={"disk_mb": 64})["id"]
    r = run(hc, sid, "head -c 200M /dev/zero > big; echo rc=$?; stat -c %s big")
    assert "No space left on device" in r["stderr"], r
    rc, size = r["stdout"].split()
    assert rc == "rc=1" and int(size) <= 64 * 1024 * 1024, r
    _api_sees_a_full_workspace(hc, sid)
    # The host holds the quota as one image file: never more than its size on disk.
    image = hostile_gateway.workspace_root / ".images" / f"{sid}.ext4"
    assert image.stat().st_size == 64 * 1024 * 1024
    assert image.stat().st_blocks * 512 <= 64 * 1024 * 1024
    assert run(hc, sid, "rm big && echo freed")["stdout"] == "freed\n"
    _api_writes_again(hc, sid)
    assert_usable(hc, sid)


def test_many_small_files_stop_at_the_inode_quota(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box(limits={"disk_mb": 64})["id"]
    code = (
        "import os\nos.makedirs('many', exist_ok=True)\nn = 0\ntry:\n"
        "    while True:\n        open(f'many/{n}', 'w').close()\n        n += 1\n"
        "except OSError as exc:\n    print(n, exc.strerror)\n"
    )
    # `command`, not `code`: a code exec's source file is removed when it ends, which would
    # give two inodes back.
    r = run(hc, sid, f"python3 - <<'EOF'\n{code}EOF", timeout_seconds=120)
    count, reason = r["stdout"].split(" ", 1)
    assert reason.strip() == "No space left on device", r
    assert 1000 < int(count) < 70000, r  # the image's inodes, not the host's
    _api_sees_a_full_workspace(hc, sid)
    listing = hc.get(f"/v1/sandboxes/{sid}/files")
    assert listing.status_code == 200 and len(listing.json()["files"]) <= 20000
    assert run(hc, sid, "rm -rf many && echo freed", timeout_seconds=120)["stdout"] == "freed\n"
    _api_writes_again(hc, sid)
    assert_usable(hc, sid)


def _api_sees_a_full_workspace(hc: httpx.Client, sid: str) -> None:
    r = hc.put(f"/v1/sandboxes/{sid}/files/more/data.bin", content=os.urandom(256 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "quota_exceeded", r.text
    # A code exec must write its source into the workspace: a clear error, not a crash.
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": "print(1)\n" * 40000})
    assert r.status_code in (200, 413), r.text
    if r.status_code == 413:
        assert r.json()["error"]["code"] == "quota_exceeded"


def _api_writes_again(hc: httpx.Client, sid: str) -> None:
    r = hc.put(f"/v1/sandboxes/{sid}/files/after.txt", content=b"after")
    assert r.status_code == 201, r.text
    assert hc.get(f"/v1/sandboxes/{sid}/files/after.txt").content == b"after"


def test_file_size_ulimit_stops_one_huge_file(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]  # 256 MB quota; the hostile gateway's file-size limit is 96 MB
    r = run(hc, sid, "ulimit -f; head -c 150M /dev/zero > huge; echo rc=$?; stat -c %s huge")
    lines = r["stdout"].split()
    assert lines[0] == str(96 * 1024), r  # ulimit -f counts 1 KiB blocks
    assert lines[1] == "rc=153", r  # 128 + SIGXFSZ: the program's own death
    assert int(lines[2]) == 96 * 1024 * 1024, r
    assert_usable(hc, sid)


def test_open_files_are_limited(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    code = (
        "import os\nfds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', 0))\n"
        "except OSError as exc:\n    print(len(fds), exc.strerror)\n"
    )
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": code}).json()
    count, reason = r["stdout"].split(" ", 1)
    assert reason.strip() == "Too many open files" and 1000 < int(count) <= 1024, r
    assert_usable(hc, sid)


def test_cpu_is_capped_at_the_sandbox_share(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box(limits={"cpus": 0.5})["id"]
    code = (
        "import os, time\nstop = time.time() + 3\n"
        "for _ in range(2):\n    if os.fork() == 0:\n"
        "        while time.time() < stop:\n            pass\n        os._exit(0)\n"
        "os.wait(); os.wait()\nt = os.times()\n"
        "print(round(t.children_user + t.children_system, 2))\n"
    )
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": code}).json()
    cpu_seconds = float(r["stdout"])
    # Two spinning processes for 3 s of wall clock use ~6 CPU-seconds uncapped (2 cores).
    assert cpu_seconds < 2.5, r
    print(f"\ncpu-seconds used in 3 s wall with cpus=0.5: {cpu_seconds}")


def test_endless_loop_is_killed_at_the_timeout(
    hostile_gateway: Gateway,
    hc: httpx.Client,
    box: MakeSandbox,
    probe: Callable[[], HealthProbe],
) -> None:
    sid = box()["id"]
    started = time.monotonic()
    with probe() as health:
        events = stream(hc, sid, command="echo spinning; while :; do :; done", timeout_seconds=3)
    took = time.monotonic() - started
    health.check("an endless loop")
    end = events[-1]
    assert end.type == "exit" and end.data["timed_out"] is True, end.data
    assert end.data["exit_code"] == 137 and end.data["signal"] == "SIGKILL"
    assert end.data["idle"] is False
    assert text(events, "stdout") == "spinning\n"
    assert 3 <= took < 15, took
    assert_usable(hc, sid)
    assert_gateway_fine(hostile_gateway, hc)


@pytest.mark.parametrize(
    "command",
    ["sleep infinity", "sleep infinity & sleep infinity & wait", "read line; cat"],
)
def test_program_that_never_ends_is_killed_at_the_timeout(
    hc: httpx.Client, box: MakeSandbox, command: str
) -> None:
    sid = box()["id"]
    started = time.monotonic()
    r = run(hc, sid, command, timeout_seconds=2)
    took = time.monotonic() - started
    if command.startswith("read"):  # no stdin given: it reads EOF and ends on its own
        assert r["timed_out"] is False, r
    else:
        assert r["timed_out"] is True and r["exit_code"] == 137, r
        assert r["status"] == "timed_out"
    assert took < 12, took
    assert_usable(hc, sid)


def test_idle_output_timeout(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    started = time.monotonic()
    quiet = stream(hc, sid, command="echo hello; sleep 100", idle_timeout_seconds=2)
    took = time.monotonic() - started
    end = quiet[-1]
    assert end.type == "exit", end
    assert end.data["timed_out"] is True and end.data["idle"] is True, end.data
    assert end.data["exit_code"] == 137 and text(quiet, "stdout") == "hello\n"
    assert 2 <= took < 12, took
    # Output more often than the idle timeout: it runs to its end.
    chatty = stream(
        hc,
        sid,
        command="for i in 1 2 3 4 5; do echo $i; sleep 1; done",
        idle_timeout_seconds=3,
    )
    assert chatty[-1].data["timed_out"] is False and chatty[-1].data["idle"] is False
    assert text(chatty, "stdout") == "1\n2\n3\n4\n5\n"
    # Asking for more than the largest timeout is refused up front.
    r = hc.post(
        f"/v1/sandboxes/{sid}/exec", json={"command": "true", "idle_timeout_seconds": 10**6}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_too_high"
    assert_usable(hc, sid)


def test_limits_above_the_maxima_are_refused(hc: httpx.Client) -> None:
    for limits in ({"memory_mb": 10**6}, {"cpus": 64}, {"pids": 10**6}, {"disk_mb": 10**7}):
        r = hc.post("/v1/sandboxes", json={"language": "python", "limits": limits})
        assert r.status_code == 422 and r.json()["error"]["code"] == "limit_too_high", r.text
    for limits in ({"memory_mb": 1}, {"cpus": 0}, {"cpus": 0.001}, {"pids": 1}, {"disk_mb": 0}):
        r = hc.post("/v1/sandboxes", json={"language": "python", "limits": limits})
        assert r.status_code == 422, r.text


def test_workspace_images_are_removed_with_their_sandbox(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box(limits={"disk_mb": 32})["id"]
    image = hostile_gateway.workspace_root / ".images" / f"{sid}.ext4"
    workspace = hostile_gateway.workspace_root / sid
    assert image.exists() and os.path.ismount(workspace)
    assert hc.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert not image.exists() and not Path(workspace).exists()
