"""Sandbox lifetimes against a real gateway process: TTL on activity and the reaper, restart
recovery after SIGKILL (interrupted executions, orphan containers, dead containers) and a
graceful SIGTERM that ends every open stream with a terminal event."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.registry import EVENTS_FILE, instance_id
from gateway.runtimes import load_runtimes
from tests.conftest import (
    RUNTIMES,
    Gateway,
    cleanup_containers,
    make_gateway,
    remove_tree,
    running_gateway,
)
from tests.sse import Received, check_sequence, parse_wire, stream_events, text

pytestmark = pytest.mark.docker

TTL = 3
REAPER = 0.5


# --- helpers ----------------------------------------------------------------------------------


def instance_of(gw: Gateway) -> str:
    return instance_id(gw.data_dir)


def container_name(gw: Gateway, sid: str) -> str:
    return f"petri-{instance_of(gw)}-{sid}"


def docker_ids(*filters: str) -> list[str]:
    argv = ["docker", "ps", "-aq", "--no-trunc"]
    for f in filters:
        argv += ["--filter", f]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def container_running(name: str) -> bool:
    r = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.returncode == 0 and r.stdout.strip() == "true"


def db_count(gw: Gateway, sql: str, *args: Any) -> int:
    """Read the registry directly (does not count as activity on the sandbox)."""
    with sqlite3.connect(gw.data_dir / "petri.sqlite3", timeout=10) as db:
        db.execute("ATTACH DATABASE ? AS log", (str(gw.data_dir / EVENTS_FILE),))
        return int(db.execute(sql, args).fetchone()[0])


def sandbox_rows(gw: Gateway, sid: str) -> int:
    return db_count(gw, "SELECT count(*) FROM sandboxes WHERE id = ?", sid)


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
    """Seconds it took until `check()` held; fails after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(step)
    return time.monotonic() - started


def events_url(sid: str, eid: str) -> str:
    return f"/v1/sandboxes/{sid}/executions/{eid}/events"


# Counts live `sleep 300` processes; the counter's own command line does not match.
SLEEPERS = (
    "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null"
    " | grep -c '^sleep 300 ' || true"
)


@pytest.fixture
def fresh_tmp() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="petri-life-"))
    yield tmp
    cleanup_containers(tmp)
    remove_tree(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


# --- TTL on activity --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ttl_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("ttl", reaper_interval_seconds=str(REAPER)) as gw:
        yield gw


@pytest.fixture
def ttl_client(ttl_gateway: Gateway) -> Iterator[httpx.Client]:
    with ttl_gateway.client() as c:
        yield c


def test_idle_sandbox_is_reaped_with_container_workspace_and_rows(
    ttl_gateway: Gateway, ttl_client: httpx.Client
) -> None:
    gw, c = ttl_gateway, ttl_client
    sid = c.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": TTL}).json()["id"]
    assert c.put(f"/v1/sandboxes/{sid}/files/a.txt", content=b"a").status_code == 201
    eid = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo hi"}).json()["execution_id"]
    info = c.get(f"/v1/sandboxes/{sid}").json()
    last = time.monotonic()
    assert parse_time(info["expires_at"]) - parse_time(info["last_active_at"]) == pytest.approx(
        TTL, abs=0.01
    )
    assert container_running(container_name(gw, sid))
    assert (gw.workspace_root / sid / "a.txt").exists()
    assert db_count(gw, "SELECT count(*) FROM events WHERE execution_id = ?", eid) > 0

    wait_until(lambda: sandbox_rows(gw, sid) == 0, TTL + 10 * REAPER + 5)
    idle = time.monotonic() - last
    assert idle >= TTL - 0.2, f"reaped after {idle:.1f}s, before its TTL"
    assert not docker_ids(f"name=^{container_name(gw, sid)}$")
    assert not (gw.workspace_root / sid).exists()
    assert db_count(gw, "SELECT count(*) FROM executions WHERE sandbox_id = ?", sid) == 0
    assert db_count(gw, "SELECT count(*) FROM events WHERE execution_id = ?", eid) == 0
    r = c.get(f"/v1/sandboxes/{sid}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found"


def test_any_api_call_renews_the_ttl(ttl_gateway: Gateway, ttl_client: httpx.Client) -> None:
    gw, c = ttl_gateway, ttl_client
    sid = c.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": TTL}).json()["id"]
    c.put(f"/v1/sandboxes/{sid}/files/keep.txt", content=b"k")
    first = parse_time(c.get(f"/v1/sandboxes/{sid}").json()["expires_at"])
    calls = [
        lambda: c.get(f"/v1/sandboxes/{sid}/files"),
        lambda: c.get(f"/v1/sandboxes/{sid}/files/keep.txt"),
        lambda: c.get(f"/v1/sandboxes/{sid}/executions"),
        lambda: c.put(f"/v1/sandboxes/{sid}/files/more.txt", content=b"m"),
        lambda: c.get(f"/v1/sandboxes/{sid}"),
    ]
    started = time.monotonic()
    for call in calls * 2:  # ten calls, 0.9 s apart: 9 s in all, three times the TTL
        time.sleep(0.9)
        assert call().status_code in (200, 201)
        assert sandbox_rows(gw, sid) == 1, f"reaped {time.monotonic() - started:.1f}s in"
    later = parse_time(c.get(f"/v1/sandboxes/{sid}").json()["expires_at"])
    assert later - first > 2 * TTL
    last = time.monotonic()
    wait_until(lambda: sandbox_rows(gw, sid) == 0, TTL + 10 * REAPER + 5)
    assert time.monotonic() - last >= TTL - 0.2


def test_a_running_execution_keeps_its_sandbox_alive(
    ttl_gateway: Gateway, ttl_client: httpx.Client
) -> None:
    gw, c = ttl_gateway, ttl_client
    sid = c.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": TTL}).json()["id"]
    r = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "sleep 7; echo done", "wait": False})
    eid = r.json()["execution_id"]
    # No API call for 7 s: only the running execution keeps it.
    started = time.monotonic()
    while time.monotonic() - started < 6.5:
        assert sandbox_rows(gw, sid) == 1, (
            f"reaped while running ({time.monotonic() - started:.1f}s)"
        )
        time.sleep(0.25)
    wait_until(
        lambda: (
            db_count(gw, "SELECT count(*) FROM executions WHERE id = ? AND status = 'exited'", eid)
            == 1
        ),
        10,
    )
    ended = time.monotonic()
    assert sandbox_rows(gw, sid) == 1
    wait_until(lambda: sandbox_rows(gw, sid) == 0, TTL + 10 * REAPER + 5)
    assert time.monotonic() - ended >= TTL - 1.0  # the end of the run was its last activity


def test_an_open_stream_is_not_cut_by_the_reaper(
    ttl_gateway: Gateway, ttl_client: httpx.Client
) -> None:
    c = ttl_client
    sid = c.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": TTL}).json()["id"]
    events = stream_events(
        c,
        "POST",
        f"/v1/sandboxes/{sid}/exec",
        json={"command": "for i in 1 2 3 4 5 6; do echo $i; sleep 1; done"},
    )
    check_sequence(events)
    assert text(events, "stdout") == "1\n2\n3\n4\n5\n6\n" and events[-1].type == "exit"
    assert c.get(f"/v1/sandboxes/{sid}").status_code == 200
    c.delete(f"/v1/sandboxes/{sid}")


# --- restart recovery -------------------------------------------------------------------------


def make_orphan(gw: Gateway, sandbox_id: str, role: str = "sandbox") -> str:
    """A container labelled as this gateway's, for a sandbox the registry does not know."""
    image = load_runtimes(RUNTIMES)["python"].image
    name = f"petri-{instance_of(gw)}-{sandbox_id}-{role}"
    out = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "petri.managed=1",
            "--label",
            f"petri.instance={instance_of(gw)}",
            "--label",
            f"petri.sandbox={sandbox_id}",
            "--label",
            f"petri.role={role}",
            "--network",
            "none",
            image,
            "sleep",
            "600",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_restart_after_sigkill_recovers_everything(docker_ready: None, fresh_tmp: Path) -> None:
    gw = make_gateway(fresh_tmp)
    gw.start()
    try:
        with gw.client() as c:
            sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            assert (
                c.put(f"/v1/sandboxes/{sid}/files/dir/keep.txt", content=b"kept").status_code == 201
            )
            finished = stream_events(
                c,
                "POST",
                f"/v1/sandboxes/{sid}/exec",
                json={"command": "echo finished; echo e >&2"},
            )
            check_sequence(finished)
            done_eid = finished[0].data["execution_id"]
            # A running execution, followed until its first output.
            r = c.post(
                f"/v1/sandboxes/{sid}/exec",
                json={"command": "echo started; sleep 300", "wait": False},
            )
            eid = r.json()["execution_id"]
            seen: list[Received] = []
            with c.stream(
                "GET", events_url(sid, eid), headers={"Accept": "text/event-stream"}
            ) as s:
                for event in parse_wire(s.iter_lines()):
                    seen.append(event)
                    if text(seen, "stdout") == "started\n":
                        break
            orphan = make_orphan(gw, "sb-0123456789abcdef")
            install_leftover = make_orphan(gw, sid, role="install")
            container_before = docker_ids(f"name=^{container_name(gw, sid)}$")
        assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
        assert container_running(container_name(gw, sid)), "a crash leaves containers running"

        gw.start()
        with gw.client() as c:
            listed = [s["id"] for s in c.get("/v1/sandboxes").json()["sandboxes"]]
            assert listed == [sid]
            assert c.get(f"/v1/sandboxes/{sid}/files/dir/keep.txt").content == b"kept"
            # The orphans are gone; the sandbox's own container stays.
            assert not docker_ids(f"id={orphan}") and not docker_ids(f"id={install_leftover}")
            assert docker_ids(f"name=^{container_name(gw, sid)}$") == container_before
            # The running execution is interrupted, with a terminal event after what was seen.
            rec = c.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
            assert rec["status"] == "interrupted" and rec["error_code"] == "interrupted"
            assert rec["ended_at"] is not None
            replay = stream_events(c, "GET", events_url(sid, eid))
            check_sequence(replay)
            assert text(replay, "stdout") == "started\n"
            assert replay[-1].type == "error" and replay[-1].data["code"] == "interrupted"
            resumed = stream_events(c, "GET", events_url(sid, eid), after=seen[-1].id)
            assert [e.type for e in resumed] == ["error"] and resumed[0].id > seen[-1].id
            # The finished execution replays exactly as it streamed.
            again = stream_events(c, "GET", events_url(sid, done_eid))
            assert [(e.id, e.type, e.data) for e in again] == [
                (e.id, e.type, e.data) for e in finished
            ]
            assert c.get(f"/v1/sandboxes/{sid}/executions/{done_eid}").json()["status"] == "exited"
            # The interrupted program does not live on in the container.
            left = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": SLEEPERS}).json()
            assert left["stdout"] == "0\n", left
            # A sandbox whose container died gets a new one, workspace intact.
            subprocess.run(["docker", "rm", "-f", container_name(gw, sid)], check=True)
            r = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "cat dir/keep.txt"})
            assert r.status_code == 200 and r.json()["stdout"] == "kept", r.json()
            assert docker_ids(f"name=^{container_name(gw, sid)}$") not in ([], container_before)
    finally:
        gw.stop()


# --- graceful shutdown ------------------------------------------------------------------------


def test_sigterm_ends_open_streams_with_a_terminal_event(
    docker_ready: None, fresh_tmp: Path
) -> None:
    gw = make_gateway(fresh_tmp, shutdown_grace_seconds="3")
    gw.start()
    streams: dict[str, list[Received]] = {"long": [], "short": []}
    errors: list[BaseException] = []
    ready = threading.Barrier(3)

    def follow(name: str, sid: str, command: str) -> None:
        try:
            with (
                gw.client() as c,
                c.stream(
                    "POST",
                    f"/v1/sandboxes/{sid}/exec",
                    json={"command": command},
                    headers={"Accept": "text/event-stream"},
                ) as r,
            ):
                for event in parse_wire(r.iter_lines()):
                    streams[name].append(event)
                    if event.type == "stdout" and len(text(streams[name], "stdout")) == 2:
                        ready.wait(30)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        with gw.client() as c:
            sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            threads = [
                threading.Thread(target=follow, args=("long", sid, "echo a; sleep 300")),
                threading.Thread(target=follow, args=("short", sid, "echo b; sleep 1.5; echo c")),
            ]
            for t in threads:
                t.start()
            ready.wait(60)
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # Draining: new executions are refused, the running ones go on.
            time.sleep(0.3)
            refused = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert gw.proc.wait(30) is not None
        took = time.monotonic() - signalled
        short, long_ = streams["short"], streams["long"]
        check_sequence(short)
        assert text(short, "stdout") == "b\nc\n" and short[-1].type == "exit"
        assert short[-1].data["exit_code"] == 0
        check_sequence(long_)
        assert text(long_, "stdout") == "a\n"
        assert long_[-1].type == "error" and long_[-1].data["code"] == "interrupted"
        assert 2.5 < took < 20, took
        gw.stop()
        # After a clean stop nothing is left "running": the records say what happened.
        gw.start()
        with gw.client() as c:
            long_eid = long_[0].data["execution_id"]
            rec = c.get(f"/v1/sandboxes/{sid}/executions/{long_eid}").json()
            assert rec["status"] == "interrupted"
            replay = stream_events(c, "GET", events_url(sid, long_eid))
            assert [(e.id, e.type, e.data) for e in replay] == [
                (e.id, e.type, e.data) for e in long_
            ]
    finally:
        gw.stop()


def test_a_stopped_container_is_replaced_at_the_next_exec_and_the_run_is_not_lost(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    # An exec trusts the recorded container without an inspect; one that was stopped (not
    # removed: Docker answers the exec with 409) or removed (404) is replaced and the exec
    # runs in the new one, once, with the workspace intact.
    sid = sandbox["id"]
    assert client.put(f"/v1/sandboxes/{sid}/files/keep.txt", content=b"kept").status_code == 201
    for how in (["kill"], ["rm", "-f"]):
        name = container_name(gateway, sid)
        before = docker_ids(f"name=^{name}$")
        subprocess.run(["docker", *how, name], check=True, capture_output=True)
        r = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "cat keep.txt; echo >> runs"})
        assert r.status_code == 200 and r.json()["stdout"] == "kept", (how, r.json())
        assert r.json()["exit_code"] == 0
        assert docker_ids(f"name=^{name}$") not in ([], before)
    runs = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "wc -l < runs"}).json()
    assert runs["stdout"] == "2\n", runs  # each exec ran exactly once
