"""A package index tests serve themselves: tiny wheels, a PEP 503 simple index, and a
threaded HTTP server on a host address that records what it was asked for. Shared by the
dependency tests, the hostile install tests and the install benchmark."""

from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import json
import socket
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def build_wheel(folder: Path, dist: str, version: str, module: str, source: str) -> str:
    """A minimal pure-Python wheel; returns its file name."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: petri-test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/top_level.txt": f"{module}\n".encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    name = f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(folder / name, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return name


def write_simple_index(root: Path, project: str, wheels: list[str]) -> None:
    page = root / "simple" / project
    page.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="/{w}">{w}</a><br>\n' for w in wheels)
    (page / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


def host_address() -> str:
    """A non-loopback IPv4 address of this host (Go never proxies loopback): the source
    address of the default route, else the gateway address of Docker's default bridge."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: picks a route, sends nothing
            address = str(s.getsockname()[0])
        except OSError:
            address = ""
    if address and not address.startswith("127."):
        return address
    return bridge_address()


def bridge_address() -> str:
    """The host's address on Docker's default bridge (docker0)."""
    info = json.loads(
        subprocess.run(
            ["docker", "network", "inspect", "bridge"], capture_output=True, check=True
        ).stdout
    )[0]
    name = (info.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", name], capture_output=True, text=True, check=False
    ).stdout.split()
    if "inet" in shown:
        return shown[shown.index("inet") + 1].split("/")[0]
    subnet = info["IPAM"]["Config"][0]["Subnet"]
    return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))


@dataclass
class Server:
    """A `http.server` on `host` (127.0.0.1 unless told) serving a folder; counts the requests
    it got. Paths under `/slow/` answer after 30 s."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    hits: list[str] = field(default_factory=list)
    httpd: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Server:
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, directory=str(server.root), **kw)

            def do_GET(self) -> None:
                server.hits.append(self.path)
                if self.path.startswith("/slow/"):
                    time.sleep(30)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
