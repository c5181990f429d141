"""Isolation: no network, no privileges, no host secrets, no Docker socket, no writes outside
the workspace, and no view of another sandbox's files or processes."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway

from .conftest import (
    CANARY_NAME,
    CANARY_VALUE,
    MakeSandbox,
    assert_gateway_fine,
    assert_usable,
    container,
    run,
)

pytestmark = pytest.mark.docker


# --- the container as Docker sees it --------------------------------------------------------


def test_sandbox_container_is_hardened(hostile_gateway: Gateway, box: MakeSandbox) -> None:
    sb = box(limits={"memory_mb": 256, "cpus": 0.5, "pids": 100, "disk_mb": 64})
    info = container(hostile_gateway, sb["id"])
    host, config = info["HostConfig"], info["Config"]
    assert host["NetworkMode"] == "none" and config.get("NetworkDisabled") is True
    assert not info["NetworkSettings"]["Networks"] or set(info["NetworkSettings"]["Networks"]) == {
        "none"
    }
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 100
    ulimits = {u["Name"]: u["Hard"] for u in host["Ulimits"]}
    assert ulimits["nofile"] == 1024 and ulimits["fsize"] == 96 * 1024 * 1024
    assert ulimits["core"] == 0
    assert set(host["Tmpfs"]) == {"/tmp"} and "size=128m" in host["Tmpfs"]["/tmp"]
    assert not host.get("Devices") and host.get("IpcMode") in ("private", "")
    assert host.get("PidMode", "") == "" and host.get("UsernsMode", "") == ""
    assert config["User"] == "1000:1000"
    # The one host path: the sandbox's own workspace, and nothing like a Docker socket.
    workspace = hostile_gateway.workspace_root / sb["id"]
    assert host["Binds"] == [f"{workspace}:/sandbox:rw"]
    mounts = [m for m in info["Mounts"] if m["Type"] == "bind"]
    assert [m["Destination"] for m in mounts] == ["/sandbox"]
    assert not any("docker.sock" in json.dumps(m) for m in info["Mounts"])
    expected_runtime = hostile_gateway.env.get("PETRI_DOCKER_RUNTIME") or "runc"
    assert host["Runtime"] == expected_runtime


def test_program_runs_unprivileged(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    r = run(
        hc,
        sid,
        "id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/$$/status",
    )
    lines = r["stdout"].split("\n")
    assert lines[:2] == ["1000", "1000"], r
    status = dict(line.split(":\t") for line in lines[2:] if line)
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status


# --- network ----------------------------------------------------------------------------------


class HostServer:
    """A TCP server on the host that counts the connections it accepts."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address, self.port = address, self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _bridge_gateway_address() -> str:
    """The host's address on Docker's default bridge (docker0): where containers on the
    bridge reach the host, and so where a host service is most exposed to them."""
    info = json.loads(
        subprocess.run(
            ["docker", "network", "inspect", "bridge"], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    for config in info["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
    name = info["Options"].get("com.docker.network.bridge.name", "docker0")
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "dev", name], capture_output=True, text=True, check=True
    ).stdout
    return out.split(" inet ", 1)[1].split("/", 1)[0]


@pytest.fixture
def host_servers() -> Iterator[list[HostServer]]:
    servers = [HostServer(_bridge_gateway_address()), HostServer("127.0.0.1")]
    yield servers
    for server in servers:
        server.close()


CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "CONNECTED")
    except OSError as exc:
        print(target, "refused:", exc.strerror or exc)
"""


LOCAL_GET = """
import time, urllib.request
for _ in range(100):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:8000/", timeout=5).status)
        break
    except OSError:
        time.sleep(0.1)
"""


def _connect(hc: httpx.Client, sid: str, *targets: str) -> dict[str, str]:
    hc.put(f"/v1/sandboxes/{sid}/files/connect.py", content=CONNECT.encode())
    r = run(hc, sid, "python3 connect.py " + " ".join(targets), timeout_seconds=60)
    assert r["exit_code"] == 0, r
    return dict(line.split(" ", 1) for line in r["stdout"].splitlines())


def test_no_network_to_the_internet_or_the_host(
    hc: httpx.Client, box: MakeSandbox, host_servers: list[HostServer]
) -> None:
    sid = box()["id"]
    bridge, loopback = host_servers
    targets = [
        "1.1.1.1:443",
        "8.8.8.8:53",
        "pypi.org:443",
        f"{bridge.address}:{bridge.port}",  # the host, on Docker's bridge
        f"{loopback.address}:{loopback.port}",  # the host's loopback (is not the sandbox's)
        f"{bridge.address}:2375",  # a Docker API over TCP, were there one
    ]
    got = _connect(hc, sid, *targets)
    assert set(got) == set(targets)
    for target, outcome in got.items():
        assert "CONNECTED" not in outcome, f"{target}: {outcome}"
    assert "unreachable" in got["1.1.1.1:443"].lower(), got
    assert "name" in got["pypi.org:443"].lower(), got  # no DNS either
    assert bridge.accepted == 0 and loopback.accepted == 0
    r = run(hc, sid, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
    assert r["stdout"].split() == ["lo"], r  # the only interface


def test_no_network_to_another_sandbox(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox
) -> None:
    a, b = box()["id"], box()["id"]
    server = hc.post(
        f"/v1/sandboxes/{b}/exec",
        json={
            "command": "exec python3 -m http.server 8000 --bind 0.0.0.0",
            "wait": False,
            "timeout_seconds": 60,
        },
    ).json()["execution_id"]
    try:
        # b serves on its own loopback (proof the server runs) ...
        hc.put(f"/v1/sandboxes/{b}/files/get.py", content=LOCAL_GET.encode())
        ok = run(hc, b, "python3 get.py")
        assert ok["stdout"] == "200\n", ok
        # ... and has no address anyone else could reach; a's loopback is its own.
        b_info = container(hostile_gateway, b)
        addresses = [n.get("IPAddress") for n in b_info["NetworkSettings"]["Networks"].values()]
        assert not any(addresses), addresses
        got = _connect(hc, a, "127.0.0.1:8000", "sandbox:8000", "172.17.0.2:8000")
        assert not any("CONNECTED" in outcome for outcome in got.values()), got
    finally:
        hc.post(f"/v1/sandboxes/{b}/executions/{server}/kill")


# --- secrets, sockets, the host's files ---------------------------------------------------------


def test_host_and_gateway_environment_never_leak(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box(env={"SANDBOX_VAR": "from-sandbox"})["id"]
    r = run(
        hc,
        sid,
        "env; echo ---; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null",
        env={"EXEC_VAR": "from-exec"},
    )
    seen = r["stdout"]
    assert CANARY_VALUE not in seen and CANARY_NAME not in seen, "the gateway's env leaked"
    assert "PETRI_" not in seen, "a gateway setting leaked"
    assert "SANDBOX_VAR=from-sandbox" in seen and "EXEC_VAR=from-exec" in seen


def test_proc_shows_no_host_or_gateway_processes(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    r = run(
        hc,
        sid,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done; echo ---; "
        "head -c 100 /proc/kcore 2>/dev/null | wc -c; cat /proc/keys 2>/dev/null | wc -l; "
        "echo 1 > /proc/sysrq-trigger 2>&1 || echo sysrq-refused; "
        "echo x > /proc/sys/kernel/hostname 2>&1 || echo sysctl-refused; "
        "echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes 2>&1 || echo cgroup-refused",
    )
    procs, checks = r["stdout"].split("---\n")
    lines = [line.strip() for line in procs.splitlines() if line.strip()]
    assert len(lines) <= 6, lines  # PID 1, its sleep, this shell and its children
    for needle in ("gateway", "uvicorn", "dockerd", "containerd", "pytest", "systemd"):
        assert not any(needle in line for line in lines), (needle, lines)
    kcore, keys, *refused = checks.split()
    assert kcore == "0" and keys == "0", checks  # masked by Docker (or absent)
    assert refused == ["sysrq-refused", "sysctl-refused", "cgroup-refused"], checks


def test_no_docker_socket(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    r = run(
        hc,
        sid,
        "ls -la /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock 2>&1; "
        "find / -xdev -type s 2>/dev/null; find /sandbox /tmp /dev -type s 2>/dev/null; "
        "echo DOCKER_HOST=${DOCKER_HOST:-unset}",
    )
    out = r["stdout"]
    assert out.count("No such file or directory") == 3, out
    assert out.strip().endswith("DOCKER_HOST=unset")
    sockets = [line for line in out.splitlines()[3:-1] if line.strip()]
    assert sockets == [], sockets


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "/usr/bin/python3",
        "/new-file",
        "/root/x",
        "/var/tmp/x",
        "/home/x",
        "/opt/x",
        "/proc/1/root/x",
        "/sys/kernel/x",
    ],
)
def test_cannot_write_outside_the_workspace(
    hc: httpx.Client, box: MakeSandbox, target: str
) -> None:
    sid = box()["id"]
    r = run(hc, sid, f"echo pwned >> {target} && echo WROTE || echo refused")
    assert r["stdout"].strip().endswith("refused"), r
    assert any(
        reason in r["stderr"]
        for reason in ("Read-only file system", "Permission denied", "No such file")
    ), r


def test_writable_places_are_only_the_workspace_and_memory(
    hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box()["id"]
    r = run(
        hc,
        sid,
        "find / -xdev -writable 2>/dev/null | grep -v '^/proc' | head; echo ---; "
        "for d in /sandbox /tmp /dev/shm; do touch $d/w && echo $d; done; "
        "mount | grep -E ' on /(sandbox|tmp|dev/shm) ' | grep -c nosuid",
    )
    rootfs, places = r["stdout"].split("---\n")
    # Nothing on the root filesystem is writable but the mount points of the workspace and /tmp.
    assert sorted(rootfs.split()) == ["/sandbox", "/tmp"], rootfs
    assert places.split() == ["/sandbox", "/tmp", "/dev/shm", "3"], r


def test_setuid_and_privilege_escalation_fail(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    r = run(
        hc,
        sid,
        "su -c id root < /dev/null 2>&1 | tail -1; echo ---; "
        "cp /usr/bin/su ./su && chmod u+s ./su && ls -ln ./su | cut -d' ' -f1,3; "
        "./su -c id root < /dev/null 2>&1 | tail -1; echo ---; "
        "cp /bin/bash ./bash && chmod 4755 ./bash && ./bash -p -c 'id -u'; echo ---; "
        "chmod u+s /usr/bin/python3 2>&1 | tail -1; echo ---; "
        "python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1; echo ---; "
        "unshare -Ur id 2>&1 | tail -1; echo ---; "
        "mount -t tmpfs none /mnt 2>&1 | head -1; echo ---; "
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' 2>&1 "
        "| tail -1",
    )
    parts = [p.strip() for p in r["stdout"].split("---")]
    su, copied, setuid_bash, chmod, setuid0, userns, mount, raw = parts
    assert "uid=0" not in r["stdout"]
    assert "failure" in su.lower() or "must be" in su.lower() or "denied" in su.lower(), su
    mode_owner, su_again = copied.split("\n")
    assert mode_owner == "-rwsr-xr-x 1000", copied  # setuid to... the sandbox user itself
    assert "uid=0" not in su_again
    assert setuid_bash == "1000"
    assert "Read-only file system" in chmod or "not permitted" in chmod, chmod
    assert "PermissionError" in setuid0, setuid0
    assert "uid=" not in userns and ("not permitted" in userns or "denied" in userns), userns
    assert "must be superuser" in mount or "denied" in mount or "not permitted" in mount, mount
    assert "PermissionError" in raw, raw


def test_sandboxes_cannot_see_each_others_files_or_processes(
    hc: httpx.Client, box: MakeSandbox
) -> None:
    a, b = box()["id"], box()["id"]
    token = f"secret-{secrets.token_hex(8)}"
    assert hc.put(f"/v1/sandboxes/{a}/files/{token}.txt", content=token.encode()).status_code == 201
    run(hc, a, f"echo {token} > /tmp/{token}; echo {token} > /dev/shm/{token}")
    marker = hc.post(
        f"/v1/sandboxes/{a}/exec",
        json={"command": f"exec -a {token} sleep 60", "wait": False, "timeout_seconds": 60},
    ).json()["execution_id"]
    processes = (
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done "
        f"| grep -c '^{token}'"
    )
    try:
        for _ in range(50):  # the marker starts in the background: wait until a sees it
            seen_in_a = run(hc, a, processes)
            if seen_in_a["stdout"] == "1\n":
                break
            time.sleep(0.1)
        assert seen_in_a["stdout"] == "1\n", seen_in_a
        r = run(
            hc,
            b,
            f"find / /sandbox /tmp /dev/shm -xdev -name '*{token}*' 2>/dev/null; {processes}",
            timeout_seconds=60,
        )
        assert r["stdout"] == "0\n", r
        listing = hc.get(f"/v1/sandboxes/{b}/files").json()["files"]
        assert not any(token in f["path"] for f in listing)
    finally:
        hc.post(f"/v1/sandboxes/{a}/executions/{marker}/kill")


def test_gateway_and_sandboxes_fine_after_isolation_probes(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box()["id"]
    assert_usable(hc, sid)
    assert_gateway_fine(hostile_gateway, hc)


def _env_of(pid: int) -> dict[str, Any]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_the_canary_really_is_in_the_gateway_environment(hostile_gateway: Gateway) -> None:
    assert hostile_gateway.proc is not None
    assert _env_of(hostile_gateway.proc.pid).get(CANARY_NAME) == CANARY_VALUE
