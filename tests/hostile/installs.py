"""Helpers for the hostile install tests: code planted where the install container runs it
(a `usercustomize.py` in the workspace's user site, which every Python the install starts
imports, pip included), a package index of the test's own, and install containers by label.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.index import Server, build_wheel, write_simple_index

# Runs only in install containers: PETRI_PACKAGES is set there and never in an exec.
INSTALL_ONLY = "import os\nif os.environ.get('PETRI_PACKAGES'):\n"
STALL = INSTALL_ONLY + "    import time\n    time.sleep(900)\n"
DEMO = "import petri_demo_pkg\nprint(petri_demo_pkg.VALUE)\n"


def demo_index() -> tuple[Server, Path]:
    """An index on 127.0.0.1 serving petri-demo-pkg 1.0 (`VALUE = 'demo 1.0'`), started."""
    root = Path(tempfile.mkdtemp(prefix="petri-index-"))
    wheel = build_wheel(root, "petri-demo-pkg", "1.0", "petri_demo_pkg", "VALUE = 'demo 1.0'\n")
    write_simple_index(root, "petri-demo-pkg", [wheel])
    return Server(root).start(), root


def put(client: httpx.Client, sid: str, path: str, content: str) -> None:
    r = client.put(f"/v1/sandboxes/{sid}/files/{path}", content=content.encode())
    assert r.status_code == 201, r.text


def plant(client: httpx.Client, sid: str, code: str) -> None:
    """Put `code` where Python's user site imports it at every start (the user site is in the
    workspace, so an earlier exec, or an upload, can put it there)."""
    r = client.post(
        f"/v1/sandboxes/{sid}/exec",
        json={"command": "python3 -c 'import site; print(site.getusersitepackages())'"},
    )
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    site = r.json()["stdout"].strip()
    assert site.startswith("/sandbox/"), site
    put(client, sid, f"{site.removeprefix('/sandbox/')}/usercustomize.py", code)


def install_containers(*labels: str, running: bool = False) -> list[str]:
    """Install containers carrying every `labels` (`key=value`), running or (default) any."""
    filters = ["--filter", "label=petri.role=install"]
    for label in labels:
        filters += ["--filter", f"label={label}"]
    argv = ["docker", "ps", "-q", *([] if running else ["-a"]), *filters]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def wait_install_running(*labels: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = install_containers(*labels, running=True)
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no install container with {labels} started in {seconds:.0f}s")


def wait_file(client: httpx.Client, sid: str, path: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = client.get(f"/v1/sandboxes/{sid}/files/{path}")
        if r.status_code == 200 and r.text:
            return r.text
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear in {sid} in {seconds:.0f}s")


def wait_status(client: httpx.Client, sid: str, eid: str, seconds: float) -> dict[str, object]:
    """The execution once it is no longer running (fails after `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        r = client.get(f"/v1/sandboxes/{sid}/executions/{eid}")
        assert r.status_code == 200, r.text
        execution: dict[str, object] = r.json()
        if execution["status"] != "running":
            return execution
        assert time.monotonic() < deadline, f"{eid} still running after {seconds:.0f}s"
        time.sleep(0.05)


def host_listeners() -> Iterator[tuple[str, int]]:
    """(address, port) of every IPv4 TCP socket listening on this host outside loopback;
    0.0.0.0 listeners once per host address."""
    addresses = host_addresses()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            ip = ".".join(str(int(hex_ip[i : i + 2], 16)) for i in (6, 4, 2, 0))
            port = int(hex_port, 16)
            if ip == "0.0.0.0":
                yield from ((a, port) for a in addresses)
            elif not ip.startswith("127."):
                yield ip, port


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True)
    found = [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]
    return [a for a in found if not a.startswith("127.")]


def json_file(client: httpx.Client, sid: str, path: str, seconds: float = 60) -> dict[str, object]:
    data: dict[str, object] = json.loads(wait_file(client, sid, path, seconds))
    return data
