"""Preview proxy overhead: requests through a service's preview URL beside the same requests
sent straight to the service's relay socket from the host, measured in the same run.

    python bench/preview_proxy.py [--requests 300] [--mb 50] [--runs 5]

Starts its own gateway (uvicorn subprocess on a free port, temporary directories), creates a
python sandbox and runs `tests/preview_app.py` in it as a service. Then, interleaved so
machine drift hits both alike:
  * latency: `GET /x` (a ~40-byte JSON answer), keep-alive on both paths, p50/p95; and
    `GET /work?ms=20`, an endpoint that takes 20 ms, as a web app's pages do;
  * download: `GET /bytes?n=<mb>` read to the end, MB/s;
  * upload: `POST /sink` with a <mb> body (Content-Length), MB/s.
"Direct" is an HTTP client on the host connected to the relay's Unix socket in the workspace
(`.petri/services/<id>.sock`): the service, its relay and nothing of the gateway.

`--quiet-app` starts the app without its stderr line per request (the gateway stores each
line as an event, on the event loop the proxy runs on). `--floor` adds a third path to the
latency loop: a raw asyncio byte splice in a process of its own (a TCP port to the same
socket, nothing parsed): what one more process in the pipeline costs before any proxy
logic; the same relay in C (`socat`, when installed): one more hop without Python; and
`GET /healthz` on the gateway (its HTTP stack alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import pct, row
from tests.conftest import cleanup_containers, make_gateway, remove_tree
from tests.serve import start_ready

MB = 1024 * 1024


def timed_get(client: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    r = client.get(url)
    took = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
    return took


def download(client: httpx.Client, url: str, size: int) -> float:
    """MB/s of reading `size` bytes."""
    started = time.perf_counter()
    got = 0
    with client.stream("GET", url) as r:
        for chunk in r.iter_raw(1024 * 1024):
            got += len(chunk)
    took = time.perf_counter() - started
    if got != size:
        raise RuntimeError(f"read {got} bytes of {size}")
    return size / MB / took


def upload(client: httpx.Client, url: str, body: bytes) -> float:
    """MB/s of sending `body` with a Content-Length, 1 MiB at a time (httpx copies the rest
    of a bytes body after every partial send: a 50 MiB body in one piece measures that)."""
    view = memoryview(body)
    chunks = (bytes(view[at : at + MB]) for at in range(0, len(body), MB))
    started = time.perf_counter()
    r = client.post(url, content=chunks, headers={"Content-Length": str(len(body))})
    took = time.perf_counter() - started
    if r.json()["bytes"] != len(body):
        raise RuntimeError(r.text)
    return len(body) / MB / took


def _splice(sock: str, ports: multiprocessing.Queue[int]) -> None:
    """A byte relay, TCP port to the Unix socket, one connection to it per client connection."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024 * 1024):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(sock)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(serve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def rate_row(name: str, values: list[float], base: list[float] | None) -> str:
    median = statistics.median(values)
    ratio = f"{median / statistics.median(base):5.2f}x" if base else "direct"
    return f"{name:<46} median {median:8.1f} MB/s   min {min(values):8.1f} MB/s   {ratio}"


def main(requests: int, mb: int, runs: int, floor: bool = False, quiet: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="petri-bench-"))
    gw = make_gateway(tmp, log_level="warning")
    gw.start()
    try:
        with gw.client() as c:
            sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            command = "python3 app.py 8000" + (" --quiet" if quiet else "")
            service = start_ready(c, sid, command=command)
        sock = gw.workspace_root / sid / ".petri/services" / f"{service['id']}.sock"
        preview = service["preview_url"]
        proxied = httpx.Client(timeout=120, trust_env=False)
        direct = httpx.Client(
            timeout=120, trust_env=False, transport=httpx.HTTPTransport(uds=str(sock))
        )
        size = mb * MB
        body = bytes(range(256)) * (size // 256)
        for client, base in ((proxied, preview), (direct, "http://service/")):
            for _ in range(20):  # warm up: connections, the app's threads
                timed_get(client, base + "x")
        lat_p: list[float] = []
        lat_d: list[float] = []
        work_p: list[float] = []
        work_d: list[float] = []
        floors: dict[str, tuple[httpx.Client, str, list[float]]] = {}
        relays: list[subprocess.Popen[bytes]] = []
        if floor:
            ports: multiprocessing.Queue[int] = multiprocessing.Queue()
            splicer = multiprocessing.Process(target=_splice, args=(str(sock), ports), daemon=True)
            splicer.start()
            floors["GET /x through a raw byte splice"] = (
                httpx.Client(timeout=120, trust_env=False),
                f"http://127.0.0.1:{ports.get(timeout=30)}/x",
                [],
            )
            if shutil.which("socat"):  # the same relay in C: a hop without Python
                port = free_port()
                relays.append(
                    subprocess.Popen(
                        [
                            "socat",
                            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                            f"UNIX-CONNECT:{sock}",
                        ]
                    )
                )
                wait_for_port(port)
                floors["GET /x through socat (C byte relay)"] = (
                    httpx.Client(timeout=120, trust_env=False),
                    f"http://127.0.0.1:{port}/x",
                    [],
                )
            floors["GET /healthz on the gateway"] = (
                httpx.Client(timeout=120, trust_env=False), gw.url + "/healthz", []
            )
            for client, url, _ in floors.values():
                for _ in range(20):
                    timed_get(client, url)
        for _ in range(requests):
            lat_d.append(timed_get(direct, "http://service/x"))
            lat_p.append(timed_get(proxied, preview + "x"))
            for client, url, took in floors.values():
                took.append(timed_get(client, url))
        for _ in range(max(20, requests // 5)):
            work_d.append(timed_get(direct, "http://service/work?ms=20"))
            work_p.append(timed_get(proxied, preview + "work?ms=20"))
        down_p: list[float] = []
        down_d: list[float] = []
        up_p: list[float] = []
        up_d: list[float] = []
        for _ in range(runs):
            down_d.append(download(direct, f"http://service/bytes?n={size}", size))
            down_p.append(download(proxied, f"{preview}bytes?n={size}", size))
            up_d.append(upload(direct, "http://service/sink", body))
            up_p.append(upload(proxied, f"{preview}sink", body))
        print(f"preview proxy, {requests} requests, {runs} x {mb} MiB each way")
        print(row("GET /x direct to the relay socket", lat_d, base_label="direct"))
        print(row("GET /x through the preview URL", lat_p, lat_d))
        for name, (client, _, took) in floors.items():
            print(row(name, took, lat_d))
            client.close()
        print(row("GET /work?ms=20 direct", work_d, base_label="direct"))
        print(row("GET /work?ms=20 through the preview URL", work_p, work_d))
        extra = (pct(lat_p, 0.5) - pct(lat_d, 0.5)) * 1000
        print(f"the proxy adds {extra:.1f} ms per request (p50 against p50)")
        print(rate_row(f"download {mb} MiB direct", down_d, None))
        print(rate_row(f"download {mb} MiB through the preview URL", down_p, down_d))
        print(rate_row(f"upload {mb} MiB direct", up_d, None))
        print(rate_row(f"upload {mb} MiB through the preview URL", up_p, up_d))
        lat_ratio = pct(lat_p, 0.5) / pct(lat_d, 0.5)
        down_ratio = statistics.median(down_p) / statistics.median(down_d)
        up_ratio = statistics.median(up_p) / statistics.median(up_d)
        print(
            f"targets: latency <= 1.30x ({lat_ratio:.2f}x), "
            f"throughput >= 0.70x (down {down_ratio:.2f}x, up {up_ratio:.2f}x)"
        )
        proxied.close()
        direct.close()
    finally:
        for relay in relays:
            relay.kill()
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--floor", action="store_true", help="also time a raw byte splice")
    parser.add_argument(
        "--quiet-app", action="store_true", help="the app logs no line per request"
    )
    args = parser.parse_args()
    main(args.requests, args.mb, args.runs, args.floor, args.quiet_app)
