"""Install-time code (a `usercustomize.py` the program planted in its user site, which pip's own
Python imports inside the install container) tries to reach everything but the egress proxy:
every TCP service of the host (whatever listens on 0.0.0.0 or a bridge address, plus servers
this test runs there), a host abstract Unix socket, another gateway's proxy while that
gateway runs an install. Only the proxy answers, and it tunnels to the allowlist alone.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import Gateway, remove_tree, running_gateway
from tests.hostile.installs import (
    DEMO,
    STALL,
    demo_index,
    host_listeners,
    install_containers,
    json_file,
    plant,
    put,
    wait_install_running,
)
from tests.index import Server, bridge_address

pytestmark = pytest.mark.docker


@dataclass
class Listener:
    """A TCP server on the host that counts the connections it accepted."""

    host: str
    accepted: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.create_server((self.host, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer[0])
            conn.close()

    def close(self) -> None:
        self.sock.close()


PROBE = """
import json, os, socket, threading, urllib.parse, urllib.request
if os.environ.get("PETRI_PACKAGES") and not os.path.exists("/sandbox/.probe.json"):
    TCP = {tcp}
    OTHER_SOCKETS = {other}
    ABSTRACT = {abstract}
    ALLOWED, DENIED = {allowed}, {denied}
    result = {{"tcp": {{}}, "unix": {{}}}}

    def tcp(host, port):
        try:
            with socket.create_connection((host, port), timeout=3):
                result["tcp"][f"{{host}}:{{port}}"] = "connected"
        except OSError as exc:
            result["tcp"][f"{{host}}:{{port}}"] = f"{{type(exc).__name__}} {{exc.errno}}"

    threads = [threading.Thread(target=tcp, args=t) for t in TCP]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for path in [*OTHER_SOCKETS, ABSTRACT]:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(3)
                s.connect(path)
                result["unix"][path.replace("\\0", "@")] = "connected"
        except OSError as exc:
            result["unix"][path.replace("\\0", "@")] = type(exc).__name__

    # Every Unix socket this container can see in its file system.
    seen = []
    for top, dirs, files in os.walk("/"):
        if top in ("/proc", "/sys", "/dev"):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(top, name)
            try:
                if os.stat(path, follow_symlinks=False).st_mode & 0o170000 == 0o140000:
                    seen.append(path)
            except OSError:
                pass
    result["sockets"] = sorted(seen)

    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    result["proxy"] = [proxy.hostname, proxy.port]

    def connect(target):
        with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as s:
            s.sendall(f"CONNECT {{target}} HTTP/1.1\\r\\nHost: {{target}}\\r\\n\\r\\n".encode())
            return s.recv(200).split(b"\\r\\n")[0].decode()

    result["connect"] = {{t: connect(t) for t in [ALLOWED, *DENIED]}}
    handler = urllib.request.ProxyHandler({{"http": os.environ["HTTP_PROXY"]}})
    opener = urllib.request.build_opener(handler)
    with opener.open(f"http://{{ALLOWED}}/simple/petri-demo-pkg/", timeout=10) as r:
        result["get"] = r.status
    with open("/sandbox/.probe.json", "w") as f:
        json.dump(result, f)
"""


@dataclass
class World:
    gw: Gateway
    client: httpx.Client
    index: Server
    other: Gateway
    other_client: httpx.Client


@pytest.fixture(scope="module")
def world(docker_ready: None) -> Iterator[World]:
    index, root = demo_index()
    allow = f"127.0.0.1:{index.port}"
    try:
        with (
            running_gateway("egress-a", egress_allow=allow) as gw,
            running_gateway("egress-b", egress_allow=allow) as other,
            gw.client(timeout=180) as client,
            other.client(timeout=180) as other_client,
        ):
            yield World(gw, client, index, other, other_client)
    finally:
        index.stop()
        remove_tree(root)


def sandbox(client: httpx.Client, **body: object) -> str:
    r = client.post("/v1/sandboxes", json={"language": "python", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def socket_files(gw: Gateway) -> list[str]:
    """The Unix sockets of a gateway's egress proxy (whatever directory holds them)."""
    found = []
    for path in gw.data_dir.parent.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_socket():
                found.append(str(path))
    return found


def test_install_code_reaches_only_the_proxy_and_the_proxy_only_the_allowlist(
    world: World,
) -> None:
    c, index = world.client, world.index
    # Host services the test runs: one on every address, one on Docker's bridge address.
    bridge_ip = bridge_address()
    anywhere, on_bridge = Listener("0.0.0.0"), Listener(bridge_ip)
    abstract = socket.socket(socket.AF_UNIX)
    abstract_name = f"\0petri-test-{secrets.token_hex(6)}"
    abstract.bind(abstract_name)
    abstract.listen()
    # Another gateway on this host runs an install now: its proxy listens for it.
    stalled = sandbox(world.other_client, env={"PIP_INDEX_URL": f"{index.url}/simple"})
    try:
        plant(world.other_client, stalled, STALL)
        put(world.other_client, stalled, "requirements.txt", "petri-demo-pkg==1.0\n")
        r = world.other_client.post(
            f"/v1/sandboxes/{stalled}/exec", json={"command": "true", "wait": False}
        )
        assert r.status_code == 202, r.text
        wait_install_running(f"petri.sandbox={stalled}")
        other_sockets = socket_files(world.other)
        tcp = sorted(set(host_listeners()))[:200]
        assert (bridge_ip, on_bridge.port) in tcp and (bridge_ip, anywhere.port) in tcp
        probe = PROBE.format(
            tcp=repr(tcp),
            other=repr(other_sockets),
            abstract=repr(abstract_name),
            allowed=repr(f"127.0.0.1:{index.port}"),
            denied=repr(
                [f"127.0.0.1:{anywhere.port}", f"{bridge_ip}:{on_bridge.port}", "example.com:443"]
            ),
        )
        sid = sandbox(c, env={"PIP_INDEX_URL": f"{index.url}/simple"})
        plant(c, sid, probe)
        put(c, sid, "requirements.txt", "petri-demo-pkg==1.0\n")
        result = c.post(f"/v1/sandboxes/{sid}/exec", json={"code": DEMO}).json()
        # The allowlisted index is reachable through the proxy: the install works.
        assert result["install"]["status"] == "installed", result
        assert result["stdout"] == "demo 1.0\n", result
        found = json_file(c, sid, ".probe.json")
    finally:
        world.other_client.delete(f"/v1/sandboxes/{stalled}")
        anywhere.close()
        on_bridge.close()
        abstract.close()
    print(f"\nprobed {len(tcp)} host TCP listeners, {len(other_sockets)} other-gateway sockets")
    reached = {t: v for t, v in found["tcp"].items() if v == "connected"}  # type: ignore[union-attr]
    assert reached == {}, f"install-time code reached host services directly: {reached}"
    assert anywhere.accepted == [] and on_bridge.accepted == []
    assert all(v != "connected" for v in found["unix"].values()), found["unix"]  # type: ignore[union-attr]
    # The only socket in the install container is its own proxy relay's target.
    assert found["sockets"] == ["/run/petri/egress.sock"], found["sockets"]
    assert found["connect"] == {
        f"127.0.0.1:{index.port}": "HTTP/1.1 200 Connection established",
        f"127.0.0.1:{anywhere.port}": "HTTP/1.1 403 Forbidden",
        f"{bridge_ip}:{on_bridge.port}": "HTTP/1.1 403 Forbidden",
        "example.com:443": "HTTP/1.1 403 Forbidden",
    }, found["connect"]
    assert found["get"] == 200
    assert install_containers(f"petri.sandbox={sid}") == []
    c.delete(f"/v1/sandboxes/{sid}")


def test_install_container_has_no_network_but_loopback(world: World) -> None:
    """Docker's own view of an install container while it runs: network mode `none`, the
    proxy's socket the only bind mount besides the workspace (and the CA bundle)."""
    sid = sandbox(world.client)
    try:
        plant(world.client, sid, STALL)
        put(world.client, sid, "requirements.txt", "petri-demo-pkg==1.0\n")
        r = world.client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true", "wait": False})
        assert r.status_code == 202, r.text
        cid = wait_install_running(f"petri.sandbox={sid}")
        info = json.loads(
            subprocess.run(["docker", "inspect", cid], capture_output=True, check=True).stdout
        )[0]
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert list(info["NetworkSettings"]["Networks"]) in ([], ["none"])
        targets = sorted(b.split(":")[1] for b in host["Binds"])
        assert targets in (
            ["/run/petri/egress.sock", "/sandbox"],
            ["/etc/petri/ca-bundle.crt", "/run/petri/egress.sock", "/sandbox"],
        ), host["Binds"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert info["Config"]["User"] == "1000:1000"
    finally:
        world.client.delete(f"/v1/sandboxes/{sid}")
    assert install_containers(f"petri.sandbox={sid}") == []
