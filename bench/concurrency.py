"""Many at once: a burst of creates, then many concurrent streams over many sandboxes.

    python bench/concurrency.py [--creates 50] [--sandboxes 32] [--streams 128]

Starts its own gateway (warm pool `python=4`, temporary directories) and measures:
  * a burst of `--creates` concurrent `POST /v1/sandboxes`: each one's latency (p50/p99), the
    wall time of the burst, and that every one answered 201;
  * `--streams` concurrent SSE execs spread over `--sandboxes` of them: each program prints
    numbered lines; every stream is checked (ids 1..n, one terminal event last, every line
    exactly once and in order). Reported: first-output latency p50/p99 under that load, the
    total bytes per second, the gateway's RSS before and at its peak;
  * the floor: the same number of raw aiodocker execs of the same program at once, straight
    into the same containers (first output p50/p99).
Results go to bench/results/concurrency.json as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiodocker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import pct
from bench.event_throughput import RssSampler, rss_kb
from bench.exec_latency import save, wait_warm
from tests.conftest import cleanup_containers, make_gateway, remove_tree

LINES = 2000
PROGRAM = (
    "import sys\n"
    f"for i in range({LINES}):\n"
    "    sys.stdout.write(f'{i:06d} ' + 'y' * 93 + '\\n')\n"
)
EXPECTED = "".join(f"{i:06d} " + "y" * 93 + "\n" for i in range(LINES))


async def one_stream(client: httpx.AsyncClient, sid: str) -> tuple[float, int]:
    """(seconds to the first stdout event, bytes of stdout), the whole stream checked."""
    started = time.perf_counter()
    first = 0.0
    ids: list[int] = []
    kinds: list[str] = []
    out: list[str] = []
    block: dict[str, str] = {}
    async with client.stream(
        "POST", f"/v1/sandboxes/{sid}/exec", json={"code": PROGRAM, "timeout_seconds": 600},
        headers={"Accept": "text/event-stream"},
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"exec answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if line == "":
                if block:
                    ids.append(int(block["id"]))
                    kinds.append(block["event"])
                    if block["event"] == "stdout":
                        if not first:
                            first = time.perf_counter() - started
                        out.append(json.loads(block["data"])["text"])
                    block = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                block[name] = value
    if ids != list(range(1, len(ids) + 1)):
        raise RuntimeError("event ids not 1..n")
    if kinds[-1] != "exit" or kinds.count("exit") + kinds.count("error") != 1:
        raise RuntimeError(f"terminal events wrong: {kinds[-3:]}")
    text = "".join(out)
    if text != EXPECTED:
        raise RuntimeError(f"stdout differs ({len(text)} of {len(EXPECTED)} chars)")
    return first, len(text)


async def raw_stream(docker: aiodocker.Docker, container_id: str) -> float:
    container = docker.containers.container(container_id)
    started = time.perf_counter()
    handle = await container.exec(["python3", "-c", PROGRAM], user="1000:1000")
    first = 0.0
    got = 0
    async with handle.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            if msg.stream == 1 and not first:
                first = time.perf_counter() - started
            got += len(msg.data)
    if got != len(EXPECTED):
        raise RuntimeError(f"raw read {got} of {len(EXPECTED)}")
    return first


async def main(creates: int, sandboxes: int, streams: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="petri-bench-conc-"))
    gw = make_gateway(tmp, pool_size="python=4", max_sandboxes=str(max(creates, sandboxes) + 8))
    gw.start()
    assert gw.proc is not None
    docker = aiodocker.Docker()
    try:
        limits = httpx.Limits(max_connections=streams + creates, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=gw.url, timeout=600, limits=limits) as client:
            await wait_warm(client, 4)

            async def create() -> tuple[float, int, str]:
                started = time.perf_counter()
                r = await client.post("/v1/sandboxes", json={"language": "python"})
                took = time.perf_counter() - started
                return took, r.status_code, r.json().get("id", "")

            started = time.perf_counter()
            made = await asyncio.gather(*(create() for _ in range(creates)))
            burst_wall = time.perf_counter() - started
            ok = [sid for _, status, sid in made if status == 201]
            if len(ok) != creates:
                raise RuntimeError(f"{creates - len(ok)} create(s) failed")
            create_times = [t for t, _, _ in made]
            sids = ok[:sandboxes]
            for sid in ok[sandboxes:]:
                await client.delete(f"/v1/sandboxes/{sid}")
            ids = {}
            for sid in sids:
                ids[sid] = subprocess.run(  # noqa: ASYNC221 (before timing)
                    ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=petri.sandbox={sid}"],
                    capture_output=True, text=True, check=True,
                ).stdout.strip()
            for sid in sids:  # warm each sandbox once
                await client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true"})

            floor = await asyncio.gather(
                *(raw_stream(docker, ids[sids[k % sandboxes]]) for k in range(streams))
            )
            await asyncio.sleep(1)
            sampler = RssSampler(gw.proc.pid)
            rss_before = rss_kb(gw.proc.pid)
            sampler.start()
            started = time.perf_counter()
            try:
                results = await asyncio.gather(
                    *(one_stream(client, sids[k % sandboxes]) for k in range(streams))
                )
            finally:
                sampler.stop()
            wall = time.perf_counter() - started
            firsts = [f for f, _ in results]
            total = sum(n for _, n in results)
            for sid in sids:
                await client.delete(f"/v1/sandboxes/{sid}")
    finally:
        await docker.close()
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)

    def ms(values: list[float], q: float) -> float:
        return pct(values, q) * 1000

    print(f"burst of {creates} concurrent creates (warm pool python=4): all 201")
    print(f"  create p50 {ms(create_times, 0.5):7.1f} ms  p99 {ms(create_times, 0.99):7.1f} ms"
          f"  burst wall {burst_wall:5.2f} s")
    print(f"{streams} concurrent streams over {sandboxes} sandboxes, {LINES} lines each: "
          "every event delivered, in order")
    print(f"  raw aiodocker first output   p50 {ms(floor, 0.5):7.1f} ms  "
          f"p99 {ms(floor, 0.99):7.1f} ms")
    print(f"  gateway SSE first output     p50 {ms(firsts, 0.5):7.1f} ms  "
          f"p99 {ms(firsts, 0.99):7.1f} ms  ({ms(firsts, 0.5) / ms(floor, 0.5):.2f}x floor p50)")
    print(f"  {total / 2**20:.1f} MiB in {wall:.2f} s: {total / 2**20 / wall:.1f} MiB/s; "
          f"gateway RSS {rss_before // 1024} -> peak {sampler.peak // 1024} MB")
    save(
        "concurrency",
        {
            "creates": creates,
            "create_p50_ms": ms(create_times, 0.5),
            "create_p99_ms": ms(create_times, 0.99),
            "burst_wall_s": burst_wall,
            "streams": streams,
            "sandboxes": sandboxes,
            "floor_first_p50_ms": ms(floor, 0.5),
            "floor_first_p99_ms": ms(floor, 0.99),
            "first_p50_ms": ms(firsts, 0.5),
            "first_p99_ms": ms(firsts, 0.99),
            "mib_per_s": total / 2**20 / wall,
            "rss_before_mb": rss_before / 1024,
            "rss_peak_mb": sampler.peak / 1024,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--sandboxes", type=int, default=32)
    parser.add_argument("--streams", type=int, default=128)
    args = parser.parse_args()
    asyncio.run(main(args.creates, args.sandboxes, args.streams))
