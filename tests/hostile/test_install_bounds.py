"""Installs stay inside the exec's bounds and cannot starve other sandboxes: the exec's
`timeout_seconds` covers install and program together, a kill or a gateway shutdown stops an
install container at once, an install container ends itself even when its gateway is
SIGKILLed, one sandbox cannot take every egress proxy connection, and stalled installs hold
neither container-start slots nor every install slot.

Install-time code is a `usercustomize.py` planted in the workspace's user site: pip's own
Python imports it inside the install container.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.registry import instance_id
from tests.conftest import Gateway, cleanup_containers, make_gateway, remove_tree, running_gateway
from tests.hostile.installs import (
    DEMO,
    INSTALL_ONLY,
    STALL,
    demo_index,
    install_containers,
    json_file,
    plant,
    put,
    wait_install_running,
    wait_status,
)
from tests.index import Server
from tests.sse import check_sequence, stream_events, text

pytestmark = pytest.mark.docker

INSTALL_CAP = 60  # PETRI_INSTALL_TIMEOUT_SECONDS of this module's gateway
# Install-time code that sleeps once per install container (not again for the package list).
SLEEP_ONCE = (
    INSTALL_ONLY + "    import time\n"
    "    if not os.path.exists('/tmp/.slept'):\n"
    "        open('/tmp/.slept', 'w').close()\n"
    "        time.sleep({seconds})\n"
)
# Opens many tunnels through the egress proxy and holds them (what it got goes to a file).
HOG = (
    INSTALL_ONLY
    + """    import json, socket, time, urllib.parse
    if not os.path.exists('/sandbox/.hog.json'):
        proxy = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])
        held, answers = [], {{}}
        for _ in range({count}):
            try:
                s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
                s.sendall(b'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n')
                line = s.recv(200).split(b'\\r\\n')[0].decode() or 'closed'
            except OSError as exc:
                line = type(exc).__name__
            answers[line] = answers.get(line, 0) + 1
            held.append(s)
        with open('/sandbox/.hog.json', 'w') as f:
            json.dump(answers, f)
        time.sleep(900)
"""
)


@dataclass
class World:
    gw: Gateway
    client: httpx.Client
    index: Server


@pytest.fixture(scope="module")
def world(docker_ready: None) -> Iterator[World]:
    index, root = demo_index()
    settings = {
        "egress_allow": f"127.0.0.1:{index.port}",
        "install_timeout_seconds": str(INSTALL_CAP),
        "max_concurrent_starts": "2",
        "max_concurrent_installs": "3",
    }
    try:
        with running_gateway("bounds", **settings) as gw, gw.client(timeout=180) as client:
            yield World(gw, client, index)
    finally:
        index.stop()
        remove_tree(root)


@pytest.fixture
def box(world: World) -> Iterator[Any]:
    made: list[str] = []

    def make(code: str | None = None, requirements: bool = True, **body: Any) -> str:
        env = {"PIP_INDEX_URL": f"{world.index.url}/simple"}
        r = world.client.post("/v1/sandboxes", json={"language": "python", "env": env, **body})
        assert r.status_code == 201, r.text
        sid = str(r.json()["id"])
        made.append(sid)
        if code is not None:
            plant(world.client, sid, code)
        if requirements:
            put(world.client, sid, "requirements.txt", "petri-demo-pkg==1.0\n")
        return sid

    yield make
    for sid in made:
        world.client.delete(f"/v1/sandboxes/{sid}")


def start(client: httpx.Client, sid: str, **body: Any) -> str:
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"wait": False, **body})
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


def test_install_ends_at_the_exec_timeout(world: World, box: Any) -> None:
    sid = box(STALL)
    started = time.monotonic()
    events = stream_events(
        world.client,
        "POST",
        f"/v1/sandboxes/{sid}/exec",
        json={"command": "echo never", "timeout_seconds": 5},
    )
    took = time.monotonic() - started
    print(f"\ninstall stalled under timeout_seconds=5: the exec ended after {took:.1f}s")
    check_sequence(events)
    terminal = events[-1]
    assert terminal.type == "error" and terminal.data["code"] == "install_failed", terminal
    assert "timed out" in terminal.data["message"]
    assert text(events, "stdout") == "" and "never" not in text(events, "install")
    assert 4.5 <= took < 12, took
    execution = world.client.get(f"/v1/sandboxes/{sid}/executions/{events[0].data['execution_id']}")
    assert execution.json()["status"] == "timed_out" and execution.json()["timed_out"] is True
    assert install_containers(f"petri.sandbox={sid}") == []


def test_install_and_program_share_the_exec_timeout(world: World, box: Any) -> None:
    sid = box(SLEEP_ONCE.format(seconds=4))
    code = DEMO + "import time\ntime.sleep(60)\n"
    started = time.monotonic()
    r = world.client.post(f"/v1/sandboxes/{sid}/exec", json={"code": code, "timeout_seconds": 10})
    took = time.monotonic() - started
    print(f"\n4 s install + endless program under timeout_seconds=10: ended after {took:.1f}s")
    result = r.json()
    assert result["install"]["status"] == "installed", result
    assert result["stdout"] == "demo 1.0\n" and result["timed_out"] is True, result
    assert result["status"] == "timed_out" and result["signal"] == "SIGKILL", result
    assert 9.5 <= took < 18, took


def test_kill_during_install_stops_it_at_once(world: World, box: Any) -> None:
    sid = box(STALL)
    eid = start(world.client, sid, command="echo never", timeout_seconds=120)
    wait_install_running(f"petri.sandbox={sid}")
    started = time.monotonic()
    r = world.client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
    assert r.status_code == 202, r.text
    execution = wait_status(world.client, sid, eid, 15)
    took = time.monotonic() - started
    print(f"\nkill during install: ended after {took:.2f}s")
    assert took < 8, took
    assert execution["status"] == "killed" and execution["exit_code"] == 137, execution
    events = stream_events(world.client, "GET", f"/v1/sandboxes/{sid}/executions/{eid}/events")
    check_sequence(events)
    assert [e.type for e in events if e.type in ("exit", "error")] == ["exit"]
    assert events[-1].data["exit_code"] == 137 and events[-1].data["signal"] == "SIGKILL"
    assert text(events, "stdout") == ""
    assert install_containers(f"petri.sandbox={sid}") == []


def test_one_sandbox_cannot_take_every_proxy_connection(world: World, box: Any) -> None:
    target = f"127.0.0.1:{world.index.port}"
    hog = box(HOG.format(count=300, target=target))
    start(world.client, hog, command="true", timeout_seconds=120)
    answers = json_file(world.client, hog, ".hog.json", 90)
    print(f"\none sandbox asking for 300 tunnels got: {answers}")
    granted = int(answers.get("HTTP/1.1 200 Connection established", 0))  # type: ignore[call-overload]
    assert 0 < granted <= 64, answers
    # While those are held, another sandbox installs through the same proxy.
    other = box()
    result = world.client.post(f"/v1/sandboxes/{other}/exec", json={"code": DEMO}).json()
    assert result["install"]["status"] == "installed", result["install"]["log"][-2000:]
    assert result["stdout"] == "demo 1.0\n"


def test_stalled_installs_hold_no_start_slot_and_not_every_install_slot(
    world: World, box: Any
) -> None:
    """max_concurrent_starts=2, max_concurrent_installs=3 on this gateway."""
    stalled = [box(STALL) for _ in range(2)]
    for sid in stalled:
        start(world.client, sid, command="true", timeout_seconds=120)
    for sid in stalled:
        wait_install_running(f"petri.sandbox={sid}")
    # A new sandbox's plain exec (a container start and an exec) runs promptly.
    started = time.monotonic()
    plain = box(requirements=False)
    r = world.client.post(f"/v1/sandboxes/{plain}/exec", json={"command": "echo hi"}, timeout=60)
    took = time.monotonic() - started
    print(f"\nsandbox create + plain exec beside 2 stalled installs: {took:.2f}s")
    assert r.json()["stdout"] == "hi\n" and took < 15, (took, r.text)
    # Another sandbox's real install still gets a slot and runs.
    started = time.monotonic()
    quick = box()
    r = world.client.post(f"/v1/sandboxes/{quick}/exec", json={"code": DEMO}, timeout=60)
    took = time.monotonic() - started
    print(f"install beside 2 stalled installs: {took:.2f}s")
    assert r.json()["stdout"] == "demo 1.0\n" and took < 30, (took, r.text)
    # With every install slot taken, a waiting install still ends at its exec's timeout.
    third = box(STALL)
    start(world.client, third, command="true", timeout_seconds=120)
    wait_install_running(f"petri.sandbox={third}")
    waiting = box()
    started = time.monotonic()
    r = world.client.post(
        f"/v1/sandboxes/{waiting}/exec", json={"code": DEMO, "timeout_seconds": 5}, timeout=60
    )
    took = time.monotonic() - started
    print(f"install waiting for a slot under timeout_seconds=5: {took:.2f}s")
    result = r.json()
    assert result["error"]["code"] == "install_failed" and "timed out" in result["error"]["message"]
    assert "waiting for an install slot" in result["install"]["log"], result["install"]["log"]
    assert 4.5 <= took < 12, took


# --- the gateway goes away during an install ----------------------------------------------------


@pytest.fixture
def lone_gateway(docker_ready: None) -> Iterator[Gateway]:
    tmp = Path(tempfile.mkdtemp(prefix="petri-lone-"))
    gw = make_gateway(tmp)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)


def stall_install(gw: Gateway, timeout_seconds: int) -> str:
    """A sandbox whose install stalls, running now; returns the gateway's instance label."""
    with gw.client() as client:
        r = client.post("/v1/sandboxes", json={"language": "python"})
        sid = r.json()["id"]
        plant(client, sid, STALL)
        put(client, sid, "requirements.txt", "petri-demo-pkg\n")
        start(client, sid, command="true", timeout_seconds=timeout_seconds)
    label = f"petri.instance={instance_id(gw.data_dir)}"
    wait_install_running(label)
    return label


def test_gateway_sigterm_removes_running_install_containers(lone_gateway: Gateway) -> None:
    label = stall_install(lone_gateway, 120)
    started = time.monotonic()
    lone_gateway.stop(signal.SIGTERM)
    print(f"\nSIGTERM during an install: gateway gone after {time.monotonic() - started:.1f}s")
    assert install_containers(label) == []


def test_install_container_ends_itself_when_its_gateway_is_sigkilled(
    lone_gateway: Gateway,
) -> None:
    label = stall_install(lone_gateway, 4)
    killed = time.monotonic()
    lone_gateway.stop(signal.SIGKILL)
    while install_containers(label, running=True) and time.monotonic() - killed < 30:
        time.sleep(0.2)
    lived = time.monotonic() - killed
    print(f"\ninstall container after its gateway was SIGKILLed: stopped {lived:.1f}s later")
    assert install_containers(label, running=True) == [], "the install container still runs"
    assert lived < 20, lived
