"""The hostile suite's fixtures: one dedicated gateway with a canary secret in its environment,
a `/healthz` latency probe that runs beside an attack, and checks that the host, the gateway
and the sandbox came through it.

Every attack is bounded by the limits it is meant to prove (pids, memory, disk, timeouts), so
the suite can run on a shared CI machine beside other Docker tests.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, container_ids, running_gateway
from tests.sse import Received, check_sequence, stream_events

CANARY_NAME = "CANARY_SECRET"
CANARY_VALUE = f"petri-canary-{secrets.token_hex(12)}"
HEALTH_P99_SECONDS = 0.25
# Settings of the hostile gateway: small enough that every bomb ends fast, and the file-size
# ulimit between the disk quota of the disk-fill test (64 MB) and the default quota (256 MB).
HOSTILE_SETTINGS = {
    "fsize_mb": "96",
    "disk_mb": "256",
    "exec_timeout_seconds": "60",
    "output_budget_bytes": str(8 * 1024 * 1024),
    "output_tail_bytes": str(64 * 1024),
}

Sandbox = dict[str, Any]
MakeSandbox = Callable[..., Sandbox]


@pytest.fixture(scope="session")
def hostile_gateway(docker_ready: None) -> Iterator[Gateway]:
    # The canary is in the gateway's environment and must never be seen by a sandbox.
    with running_gateway("hostile", env={CANARY_NAME: CANARY_VALUE}, **HOSTILE_SETTINGS) as gw:
        yield gw


@pytest.fixture(scope="session")
def hc(hostile_gateway: Gateway) -> Iterator[httpx.Client]:
    with hostile_gateway.client(timeout=300) as c:
        yield c


@pytest.fixture
def box(hc: httpx.Client) -> Iterator[MakeSandbox]:
    """Make sandboxes (python unless told) that are deleted after the test."""
    made: list[str] = []

    def make(language: str = "python", **body: Any) -> Sandbox:
        r = hc.post("/v1/sandboxes", json={"language": language, **body})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        return dict(r.json())

    yield make
    for sid in made:
        r = hc.delete(f"/v1/sandboxes/{sid}")
        assert r.status_code in (204, 404), r.text


# --- running things ---------------------------------------------------------------------------


def run(client: httpx.Client, sid: str, command: str, **body: Any) -> dict[str, Any]:
    """Exec in JSON mode; the whole result."""
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": command, **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def stream(client: httpx.Client, sid: str, **body: Any) -> list[Received]:
    """Exec over SSE; the events, checked: ids 1..n and exactly one terminal event, last."""
    events = stream_events(client, "POST", f"/v1/sandboxes/{sid}/exec", json=body)
    check_sequence(events)
    return events


def container(gw: Gateway, sid: str) -> dict[str, Any]:
    """`docker inspect` of the sandbox's container."""
    ids = container_ids(f"petri.sandbox={sid}")
    assert len(ids) == 1, f"expected one container for {sid}, found {ids}"
    out = subprocess.run(
        ["docker", "inspect", ids[0]], capture_output=True, text=True, check=True
    ).stdout
    info: dict[str, Any] = json.loads(out)[0]
    return info


# --- "and afterwards" checks --------------------------------------------------------------------


def assert_usable(client: httpx.Client, sid: str) -> None:
    """The sandbox runs programs again, can fork, and nothing of the attack is left running."""
    r = run(
        client,
        sid,
        "for i in 1 2 3; do (true); done; echo usable; "
        "ls /proc | grep -c '^[0-9]*$'; "
        "cat /sys/fs/cgroup/pids/pids.current 2>/dev/null || cat /sys/fs/cgroup/pids.current",
        timeout_seconds=30,
    )
    assert r["exit_code"] == 0, r
    lines = r["stdout"].split()
    assert lines[0] == "usable", r
    # PID 1, its sleep, this shell, ls, grep (and cat): nothing the attack left behind.
    assert int(lines[1]) <= 8, f"processes left in the sandbox: {r}"
    assert int(lines[2]) <= 8, f"pids still charged to the sandbox: {r}"


def assert_gateway_fine(gw: Gateway, client: httpx.Client) -> None:
    assert gw.proc is not None and gw.proc.poll() is None, "the gateway process died"
    assert client.get("/healthz", timeout=5).status_code == 200
    assert client.get("/readyz", timeout=10).status_code == 200
    rss_kb = 0
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    assert rss_kb < 1024 * 1024, f"gateway RSS grew to {rss_kb} kB"


# --- /healthz while under attack --------------------------------------------------------------


class HealthProbe:
    """Polls `/healthz` from a thread (a fresh request every `interval` seconds) for as long
    as the `with` block runs; a failed or timed-out request counts as its timeout."""

    def __init__(self, url: str, interval: float = 0.02, timeout: float = 5.0) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as c:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - started
                if not ok:
                    self.failures += 1
                    took = max(took, self.timeout)
                self.latencies.append(took)
                self._stop.wait(self.interval)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def check(self, what: str) -> None:
        """Print the numbers (pytest -s shows them) and assert p99 under the bound."""
        assert len(self.latencies) >= 20, f"{what}: only {len(self.latencies)} probes ran"
        p50, p99, top = self.quantile(0.5), self.quantile(0.99), max(self.latencies)
        print(
            f"\n/healthz during {what}: n={len(self.latencies)} p50={p50 * 1000:.1f}ms "
            f"p99={p99 * 1000:.1f}ms max={top * 1000:.1f}ms failures={self.failures}"
        )
        assert self.failures == 0, f"{what}: /healthz failed {self.failures} times"
        assert p99 < HEALTH_P99_SECONDS, f"{what}: /healthz p99 {p99 * 1000:.0f} ms"


@pytest.fixture
def probe(hostile_gateway: Gateway) -> Callable[[], HealthProbe]:
    return lambda: HealthProbe(hostile_gateway.url)
