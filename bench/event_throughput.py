"""Event throughput of one SSE stream, with persistence on and off, and the gateway's memory.

    python bench/event_throughput.py [--mb 64] [--runs 2]

For each mode it starts its own gateway (uvicorn subprocess, temporary directories), creates
a python sandbox and runs a program that writes `--mb` MiB to stdout in 4 KiB writes, read
through one SSE stream (`POST .../exec` with `Accept: text/event-stream`). Persistence on is
the default (`PETRI_PERSIST_EVENTS=true`, every event in SQLite, batched); off is
`PETRI_PERSIST_EVENTS=false`. The output budget is raised so that nothing is truncated.

While the stream runs, the gateway's RSS is sampled from /proc/<pid>/status (VmRSS) every
20 ms; the table shows it before the run, at each quarter of the output, and its peak. The
stream's bytes are checked against what the program wrote, so a fast wrong answer cannot
pass. With persistence on it also times a full replay of the stored stream. After each run
the same program's output is read straight from Docker (aiodocker, no gateway): the floor,
and each run's MB/s is printed as a ratio of that run's floor. Results also go to
bench/results/event_throughput.json (bench/chart.py draws them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import cleanup_containers, make_gateway, remove_tree

WRITE = 4096
PROGRAM = (
    "import os\nline = (b'x' * {w} + b'\\n')[-{w}:]\nfor _ in range({n}):\n    os.write(1, line)\n"
)


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.last = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.last = rss_kb(self.pid)
            self.peak = max(self.peak, self.last)
            time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Result:
    mode: str
    seconds: float
    events: int
    stdout_bytes: int
    rss_before: int
    rss_peak: int
    rss_quarters: list[int] = field(default_factory=list)
    replay_seconds: float | None = None
    floor_mb_s: float = 0.0
    db_mb: float | None = None
    wal_mb: float | None = None

    @property
    def mb_per_s(self) -> float:
        return self.stdout_bytes / 2**20 / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def stream_once(
    client: httpx.Client, sid: str, total: int, sampler: RssSampler, reader: str = "sdk"
) -> Result:
    """One run through one SSE stream; returns counts, time and RSS at each quarter."""
    if reader == "sdk":
        return _stream_sdk(str(client.base_url), sid, total, sampler)
    code = PROGRAM.format(w=WRITE, n=total // WRITE)
    events = got = 0
    quarters: list[int] = []
    terminal = ""
    started = time.perf_counter()
    with client.stream(
        "POST",
        f"/v1/sandboxes/{sid}/exec",
        json={"code": code, "timeout_seconds": 600},
        headers={"Accept": "text/event-stream"},
    ) as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
                events += 1
            elif line.startswith("data: "):
                if kind == "stdout":
                    got += len(json.loads(line[6:])["text"])
                    _mark_quarters(quarters, got, total, sampler)
                elif kind in ("exit", "error"):
                    terminal = line[6:]
    seconds = time.perf_counter() - started
    end = json.loads(terminal)
    if got != total or end.get("exit_code") != 0 or end.get("truncated"):
        raise RuntimeError(f"stream incomplete: {got} of {total} bytes, end {end}")
    return Result("", seconds, events, got, 0, 0, quarters)


def _mark_quarters(quarters: list[int], got: int, total: int, sampler: RssSampler) -> None:
    """The RSS sampled as the stream passes each quarter of its output."""
    while len(quarters) < 4 and got >= total * (len(quarters) + 1) / 4:
        quarters.append(sampler.last)


def _stream_sdk(url: str, sid: str, total: int, sampler: RssSampler) -> Result:
    """The same run read by the Python SDK (`Sandbox.stream`), as an agent reads it."""
    from petri_sdk import ExitEvent, Sandbox, StdoutEvent

    code = PROGRAM.format(w=WRITE, n=total // WRITE)
    events = got = 0
    quarters: list[int] = []
    end = None
    started = time.perf_counter()
    sandbox = Sandbox.connect(sid, url=url, timeout=600)
    try:  # (not `with`: leaving that deletes the sandbox)
        for event in sandbox.stream(code, timeout=600):
            events += 1
            if isinstance(event, StdoutEvent):
                got += len(event.text)
                _mark_quarters(quarters, got, total, sampler)
            elif event.terminal:
                end = event
    finally:
        sandbox.close()
    seconds = time.perf_counter() - started
    if got != total or not isinstance(end, ExitEvent) or end.exit_code != 0 or end.truncated:
        raise RuntimeError(f"stream incomplete: {got} of {total} bytes, end {end}")
    return Result("", seconds, events, got, 0, 0, quarters)


async def _raw_floor(container_id: str, code: str) -> tuple[float, int]:
    import aiodocker

    async with aiodocker.Docker() as docker:
        container = docker.containers.container(container_id)
        started = time.perf_counter()
        handle = await container.exec(["python3", "-c", code], user="1000:1000")
        got = 0
        async with handle.start(detach=False) as stream:
            while (msg := await stream.read_out()) is not None:
                got += len(msg.data)
        return time.perf_counter() - started, got


def docker_floor(sid: str, total: int) -> float:
    """The same program's output read straight from Docker (aiodocker, no gateway): MB/s."""
    import asyncio

    container_id = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=petri.sandbox={sid}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    code = PROGRAM.format(w=WRITE, n=total // WRITE)
    seconds, got = asyncio.run(_raw_floor(container_id, code))
    if got != total:
        raise RuntimeError(f"floor read {got} of {total} bytes")
    return total / 2**20 / seconds


def replay_seconds(client: httpx.Client, sid: str, total: int) -> float:
    eid = client.get(f"/v1/sandboxes/{sid}/executions").json()["executions"][0]["id"]
    started = time.perf_counter()
    got = 0
    with client.stream(
        "GET",
        f"/v1/sandboxes/{sid}/executions/{eid}/events",
        headers={"Accept": "text/event-stream"},
    ) as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "stdout":
                got += len(json.loads(line[6:])["text"])
    if got != total:
        raise RuntimeError(f"replay incomplete: {got} of {total}")
    return time.perf_counter() - started


def bench_mode(
    mode: str, persist: bool, total: int, runs: int, floors: list[float], reader: str = "sdk"
) -> list[Result]:
    tmp = Path(tempfile.mkdtemp(prefix=f"petri-bench-{mode}-"))
    gw = make_gateway(
        tmp,
        persist_events="true" if persist else "false",
        output_budget_bytes=str(2 * total),
        disk_mb="0",
    )
    gw.start()
    assert gw.proc is not None
    results = []
    try:
        with gw.client(timeout=600) as client:
            sid = client.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true"})  # warm
            for _ in range(runs):
                sampler = RssSampler(gw.proc.pid)
                before = rss_kb(gw.proc.pid)
                sampler.start()
                try:
                    result = stream_once(client, sid, total, sampler, reader)
                finally:
                    sampler.stop()
                result.mode, result.rss_before, result.rss_peak = mode, before, sampler.peak
                if persist:
                    result.replay_seconds = replay_seconds(client, sid, total)
                    db = gw.data_dir / "events.sqlite3"
                    wal = db.with_name(db.name + "-wal")
                    result.db_mb = db.stat().st_size / 2**20
                    result.wal_mb = (wal.stat().st_size if wal.exists() else 0) / 2**20
                results.append(result)
                floors.append(docker_floor(sid, total))
                result.floor_mb_s = floors[-1]
    finally:
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="MiB the program writes")
    parser.add_argument("--runs", type=int, default=2, help="runs per mode (same gateway)")
    parser.add_argument(
        "--reader",
        choices=("sdk", "lines"),
        default="sdk",
        help="sdk: the Python SDK's Sandbox.stream; lines: httpx iter_lines + json.loads",
    )
    args = parser.parse_args()
    total = args.mb * 2**20
    subprocess.run(["docker", "info"], capture_output=True, check=True)
    floors: list[float] = []
    results = bench_mode("persist on", True, total, args.runs, floors, args.reader)
    results += bench_mode("persist off", False, total, args.runs, floors, args.reader)

    print(
        f"\n{args.mb} MiB to stdout in {WRITE}-byte writes, one SSE stream read by "
        f"{'the SDK' if args.reader == 'sdk' else 'httpx iter_lines'}, {args.runs} run(s)"
    )
    head = (
        f"{'mode':<12} {'run':>3} {'seconds':>8} {'MB/s':>7} {'events':>7} {'events/s':>9} "
        f"{'RSS before':>10} {'RSS @25/50/75/100%':>23} {'RSS peak':>9} {'replay s':>8} "
        f"{'floor MB/s':>10} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    runs: dict[str, int] = {}
    for r in results:
        runs[r.mode] = runs.get(r.mode, 0) + 1
        quarters = "/".join(f"{q // 1024}" for q in r.rss_quarters)
        replay = f"{r.replay_seconds:8.2f}" if r.replay_seconds is not None else f"{'-':>8}"
        print(
            f"{r.mode:<12} {runs[r.mode]:>3} {r.seconds:8.2f} {r.mb_per_s:7.1f} {r.events:7d} "
            f"{r.events_per_s:9.0f} {r.rss_before // 1024:>7} MB {quarters + ' MB':>23} "
            f"{r.rss_peak // 1024:>6} MB {replay} {r.floor_mb_s:10.1f} "
            f"{r.mb_per_s / r.floor_mb_s:5.2f}x"
        )
    print(
        f"Docker floor (same program, aiodocker exec, no gateway): "
        f"{min(floors):.1f}-{max(floors):.1f} MB/s over {len(floors)} run(s)"
    )
    for r in results:
        if r.db_mb is not None:
            print(
                f"events.sqlite3 after the first {r.mode} run: {r.db_mb:.0f} MiB, "
                f"WAL {r.wal_mb:.0f} MiB"
            )
            break
    from bench.exec_latency import save

    save(
        "event_throughput",
        {
            "mb": args.mb,
            "reader": args.reader,
            "runs": [
                {
                    "mode": r.mode,
                    "mb_per_s": r.mb_per_s,
                    "floor_mb_per_s": r.floor_mb_s,
                    "events": r.events,
                    "rss_before_mb": r.rss_before / 1024,
                    "rss_peak_mb": r.rss_peak / 1024,
                }
                for r in results
            ],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
