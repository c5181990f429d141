"""Hostile services: a sandbox that plants a link where its relay's socket should be, and
services that try to reach the internet, the host or another sandbox, or to outlive a stop."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway
from tests.serve import preview_client, start, start_ready, upload_app, wait_status

from .conftest import MakeSandbox, assert_gateway_fine, assert_usable, run
from .test_isolation import HostServer, _bridge_gateway_address

pytestmark = pytest.mark.docker

DOCKER_SOCKET = "/var/run/docker.sock"


@pytest.fixture(scope="module")
def pc() -> Iterator[httpx.Client]:
    with preview_client(timeout=30) as c:
        yield c


def _not_docker(r: httpx.Response) -> None:
    """The answer did not come from the Docker API (which knows `/version` and `/_ping`)."""
    assert "ApiVersion" not in r.text and "DockerRootDir" not in r.text, r.text[:300]
    assert r.text != "OK" and "docker" not in r.headers.get("server", "").lower(), r.headers


# --- the relay's socket is the sandbox's file ---------------------------------------------------


def test_a_link_planted_in_place_of_the_socket_is_never_followed(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, pc: httpx.Client
) -> None:
    assert stat.S_ISSOCK(os.stat(DOCKER_SOCKET).st_mode)  # there is something to reach
    sid = box()["id"]
    upload_app(hc, sid)
    # The service replaces its relay's socket with links to the host's Docker socket (absolute
    # and relative), then serves: nothing may ever connect through the links.
    service = start(
        hc,
        sid,
        command=(
            "while ! ls .petri/services/*.sock >/dev/null 2>&1; do sleep 0.05; done; "
            "f=$(ls .petri/services/*.sock); rm -f $f; "
            f"ln -s {DOCKER_SOCKET} $f; exec python3 app.py 8000"
        ),
        ready_timeout_seconds=6,
    )
    sock = hostile_gateway.workspace_root / sid / ".petri/services" / f"{service['id']}.sock"
    deadline = time.monotonic() + 30
    while not sock.is_symlink():
        assert time.monotonic() < deadline, "the link was never planted"
        time.sleep(0.05)
    for path in ("version", "_ping", "v1.41/containers/json", "containers/json"):
        r = pc.get(service["preview_url"] + path)
        assert r.status_code == 502, (path, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == "service_unavailable"
        _not_docker(r)
    ended = wait_status(hc, service, "exited", seconds=30)
    assert ended["ready_at"] is None  # the probe refused the link as well
    # A relative link, a FIFO and a plain file in its place: refused the same way, no hang.
    for plant in (
        "ln -s ../../../../../../../var/run/docker.sock",
        "mkfifo",
        "echo not-a-socket >",
    ):
        second = start(
            hc,
            sid,
            command=(
                "sleep 0.5; f=$(ls -t .petri/services/*.sock | head -1); rm -f $f; "
                f"{plant} $f; exec python3 app.py 8000"
            ),
            ready_timeout_seconds=4,
        )
        time.sleep(1.5)
        started = time.monotonic()
        r = pc.get(second["preview_url"] + "version")
        assert r.status_code == 502 and time.monotonic() - started < 5, (plant, r.text)
        _not_docker(r)
        wait_status(hc, second, "exited", seconds=30)
    assert_gateway_fine(hostile_gateway, hc)


def test_a_link_swapped_in_after_ready_still_never_reaches_docker(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, pc: httpx.Client
) -> None:
    sid = box()["id"]
    service = start_ready(hc, sid)
    assert pc.get(service["preview_url"] + "x").status_code == 200
    r = run(hc, sid, f"f=.petri/services/{service['id']}.sock; rm -f $f; ln -s {DOCKER_SOCKET} $f")
    assert r["exit_code"] == 0, r
    sock = hostile_gateway.workspace_root / sid / ".petri/services" / f"{service['id']}.sock"
    assert sock.is_symlink()
    for path in ("version", "_ping"):
        r = pc.get(service["preview_url"] + path)
        _not_docker(r)  # the checked socket it holds (still the app's), or a 502
        assert r.status_code in (200, 502), r.text
        if r.status_code == 200:
            assert r.json() == {"method": "GET", "path": "/" + path}


# --- a service reaches nothing ------------------------------------------------------------------


CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    try:
        if target.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(3)
            s.connect(target[5:])
            s.close()
        else:
            host, port = target.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "CONNECTED", flush=True)
    except OSError as exc:
        print(target, "refused:", exc.strerror or exc, flush=True)
"""


def test_a_service_cannot_reach_the_internet_the_host_or_another_sandbox(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, pc: httpx.Client
) -> None:
    a, b = box()["id"], box()["id"]
    other = start_ready(hc, b)  # b serves on its port 8000, through its own relay
    assert pc.get(other["preview_url"]).status_code == 200
    bridge, loopback = HostServer(_bridge_gateway_address()), HostServer("127.0.0.1")
    gateway_port = hostile_gateway.port
    other_socket = f".petri/services/{other['id']}.sock"
    targets = [
        "1.1.1.1:443",
        "8.8.8.8:53",
        "pypi.org:443",
        f"{bridge.address}:{bridge.port}",  # the host, on Docker's bridge
        f"{loopback.address}:{loopback.port}",  # the host's loopback (not the sandbox's)
        f"{bridge.address}:{gateway_port}",  # the gateway itself
        f"127.0.0.1:{gateway_port}",
        "127.0.0.1:8000",  # b's app port, on a's own loopback: nobody
        "sandbox:8000",
        f"unix:/sandbox/{other_socket}",  # b's relay socket, by its path in b
        f"unix:{hostile_gateway.workspace_root}/{b}/{other_socket}",  # ... and on the host
        f"unix:{DOCKER_SOCKET}",
    ]
    try:
        upload_app(hc, a)
        hc.put(f"/v1/sandboxes/{a}/files/connect.py", content=CONNECT.encode())
        service = start(
            hc,
            a,
            command="python3 connect.py " + " ".join(targets) + " > reach.txt; "
            "exec python3 app.py 8001",
            port=8001,
        )
        wait_status(hc, service, "ready", seconds=120)
        # The service is reachable through its preview, and reached nothing itself.
        assert pc.get(service["preview_url"] + "ok").json()["path"] == "/ok"
        report = hc.get(f"/v1/sandboxes/{a}/files/reach.txt").text
        got = dict(line.split(" ", 1) for line in report.splitlines())
        assert set(got) == set(targets), report
        for target, outcome in got.items():
            assert "CONNECTED" not in outcome, f"{target}: {outcome}"
        assert "unreachable" in got["1.1.1.1:443"].lower(), got
        assert "name" in got["pypi.org:443"].lower(), got  # no DNS either
        assert bridge.accepted == 0 and loopback.accepted == 0
        r = run(hc, a, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
        assert r["stdout"].split() == ["lo"], r  # serving changed nothing: still only `lo`
    finally:
        bridge.close()
        loopback.close()


# --- a service's processes end when it is stopped -----------------------------------------------


def test_a_stopped_service_leaves_nothing_behind(
    hc: httpx.Client, box: MakeSandbox, pc: httpx.Client
) -> None:
    sid = box()["id"]
    # The app starts daemons that leave its process group, one holding its output open.
    service = start_ready(
        hc,
        sid,
        command="setsid sleep 771 & setsid sleep 772 >/dev/null 2>&1 </dev/null & "
        "exec python3 app.py 8000",
    )
    r = run(hc, sid, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "sleep 771" in r["stdout"] and "sleep 772" in r["stdout"], r
    assert hc.delete(f"/v1/sandboxes/{sid}/services/{service['id']}").status_code == 204
    assert pc.get(service["preview_url"]).status_code == 404
    assert_usable(hc, sid)  # nothing of the service is left running


# --- a service that answers what no HTTP server would -------------------------------------------

RAW_APP = r'''
import socket, threading
ANSWERS = {
    "/": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/switch": b"HTTP/1.1 101 Switching Protocols\r\n\r\nthen anything",
    "/both": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\n\r\n",
    "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
    "/bighead": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 300000 + b"\r\n\r\n",
    "/odd-status": b"HTTP/1.1 599 Whatever\r\nContent-Length: 4\r\n\r\nodd!",
    "/silent": b"",
}
def serve(conn):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        path = head.split(b" ")[1].decode()
        answer = ANSWERS.get(path, ANSWERS["/"])
        if answer:
            conn.sendall(answer)
        else:
            threading.Event().wait(600)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 8000))
server.listen(64)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
'''


def test_a_service_answering_broken_http_gets_a_502_not_a_crash(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, pc: httpx.Client
) -> None:
    sid = box()["id"]
    hc.put(f"/v1/sandboxes/{sid}/files/raw.py", content=RAW_APP.encode())
    service = start(hc, sid, command="python3 raw.py")
    wait_status(hc, service, "ready")
    url = service["preview_url"]
    assert hostile_gateway.log_path is not None
    log_start = hostile_gateway.log_path.stat().st_size
    for path in ("switch", "garbage", "bighead"):
        r = pc.get(url + path)
        assert r.status_code == 502, (path, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "service_unavailable"
    r = pc.get(url + "both")  # chunked wins; its Content-Length is not passed on
    assert r.status_code == 200 and r.content == b"hello", (r.headers, r.content)
    r = pc.get(url + "odd-status")
    assert r.status_code == 599 and r.content == b"odd!"
    with pytest.raises(httpx.RemoteProtocolError):  # cut short, as the service cut it
        pc.get(url + "short")
    with preview_client(timeout=3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(url + "silent")
    assert pc.get(url).content == b"ok"
    logged = hostile_gateway.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in logged, logged[-3000:]
    assert_gateway_fine(hostile_gateway, hc)
