"""Exec latency through the gateway beside the raw Docker floor, measured in the same run.

    python bench/exec_latency.py [--runs 30]

Starts its own gateway (uvicorn subprocess on a free port, temporary directories), creates a
python sandbox, and measures:
  * request -> first `stdout` event for `print('hi')` (SSE), p50/p95 over N runs, beside the
    floor: an aiodocker exec of the same command into the same container, to first output.
  * sandbox create (POST /v1/sandboxes -> 201) beside a raw aiodocker create+start of the
    same image with the same hardening; with the warm pool (a claim) and without (`env` set:
    the cold path), and create + first output (create, then the first exec's first stdout).
  * a naive gateway's path: a fresh container per exec (`docker run --rm`, through aiodocker:
    create, attach, start, first output, remove).
Every ratio is against the raw exec floor of the same run; the numbers are also written to
bench/results/exec_latency.json (bench/chart.py draws them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiodocker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import pct, row
from gateway.backend import ContainerSpec
from gateway.runner import container_config
from tests.conftest import cleanup_containers, make_gateway, remove_tree

COMMAND = ["python3", "-c", "print('hi')"]
SETTLE = 0.3  # seconds between measurements


async def first_stdout_gateway(client: httpx.AsyncClient, sid: str, body: dict[str, str]) -> float:
    started = time.perf_counter()
    async with client.stream(
        "POST", f"/v1/sandboxes/{sid}/exec", json=body, headers={"Accept": "text/event-stream"}
    ) as r:
        took = 0.0
        async for line in r.aiter_lines():  # read to the end of the run
            if line == "event: stdout" and not took:
                took = time.perf_counter() - started
    if not took:
        raise RuntimeError("no stdout event")
    return took


async def first_stdout_raw(docker: aiodocker.Docker, container_id: str) -> float:
    container = docker.containers.container(container_id)
    started = time.perf_counter()
    handle = await container.exec(COMMAND, user="1000:1000", workdir="/sandbox")
    took = 0.0
    async with handle.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            if msg.stream == 1 and not took:
                took = time.perf_counter() - started
    return took


async def raw_create(docker: aiodocker.Docker, image: str, name: str) -> float:
    spec = ContainerSpec(name=name, image=image, labels={"petri.bench": "1"})
    started = time.perf_counter()
    container = await docker.containers.create(container_config(spec), name=name)
    await container.start()
    took = time.perf_counter() - started
    await container.delete(force=True)
    return took


async def naive_run(docker: aiodocker.Docker, image: str, name: str) -> float:
    """A gateway that starts a container per exec: to the first output, then removed."""
    spec = ContainerSpec(name=name, image=image, labels={"petri.bench": "1"}, command=COMMAND)
    started = time.perf_counter()
    container = await docker.containers.create(container_config(spec), name=name)
    took = 0.0
    try:
        async with container.attach(stdout=True, stderr=True, logs=False) as stream:
            await container.start()
            while (msg := await stream.read_out()) is not None:
                if msg.stream == 1 and not took:
                    took = time.perf_counter() - started
    finally:
        await container.delete(force=True)
    return took


async def wait_warm(client: httpx.AsyncClient, size: int = 2, seconds: float = 30) -> None:
    """Until the pool holds `size` ready entries again (`petri_pool_size` in /metrics)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = (await client.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("petri_pool_size "))
        if float(line.split()[1]) >= size:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the pool did not refill")


async def main(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="petri-bench-"))
    gw = make_gateway(tmp, log_level="warning", pool_size="python=2")
    gw.start()
    docker = aiodocker.Docker()
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            sb = (await client.post("/v1/sandboxes", json={"language": "python"})).json()
            sid = sb["id"]
            container_id = subprocess.run(  # noqa: ASYNC221 (once, before timing)
                ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=petri.sandbox={sid}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for _ in range(3):  # warm both paths
                await first_stdout_raw(docker, container_id)
                await first_stdout_gateway(client, sid, {"command": "python3 -c \"print('hi')\""})
            cmd = {"command": "python3 -c \"print('hi')\""}
            floor, via_cmd, via_code, back_to_back = [], [], [], []
            for _ in range(runs):  # interleaved, so drift hits all three alike
                # Each measured exec starts in a ready sandbox: the clean-up the gateway runs
                # after an exec (an exec of its own) is over and does not compete with it.
                await asyncio.sleep(SETTLE)
                floor.append(await first_stdout_raw(docker, container_id))
                await asyncio.sleep(SETTLE)
                via_cmd.append(await first_stdout_gateway(client, sid, cmd))
                await asyncio.sleep(SETTLE)
                via_code.append(await first_stdout_gateway(client, sid, {"code": "print('hi')"}))
            for _ in range(runs):  # an agent firing execs one after another, no pause
                back_to_back.append(await first_stdout_gateway(client, sid, cmd))

            creates, raw_creates, creates_noquota, claims, claim_first, cold_first = (
                [], [], [], [], [], []
            )
            naive = []
            for i in range(max(5, runs // 2)):
                await asyncio.sleep(SETTLE)
                floor_i = await first_stdout_raw(docker, container_id)
                floor.append(floor_i)
                raw_creates.append(
                    await raw_create(docker, "petri-python:latest", f"petri-bench-{i}")
                )
                naive.append(await naive_run(docker, "petri-python:latest", f"petri-bench-n{i}"))
                cold = {"language": "python", "env": {"COLD": "1"}}  # `env`: never a claim
                started = time.perf_counter()
                r = await client.post("/v1/sandboxes", json=cold)
                creates.append(time.perf_counter() - started)
                cold_first.append(
                    creates[-1] + await first_stdout_gateway(client, r.json()["id"], cmd)
                )
                await client.delete(f"/v1/sandboxes/{r.json()['id']}")
                started = time.perf_counter()
                r = await client.post(
                    "/v1/sandboxes",
                    json={"language": "python", "limits": {"disk_mb": 16}},
                )
                creates_noquota.append(time.perf_counter() - started)
                await client.delete(f"/v1/sandboxes/{r.json()['id']}")
                await wait_warm(client)
                started = time.perf_counter()
                r = await client.post("/v1/sandboxes", json={"language": "python"})
                claims.append(time.perf_counter() - started)
                claim_first.append(
                    claims[-1] + await first_stdout_gateway(client, r.json()["id"], cmd)
                )
                await client.delete(f"/v1/sandboxes/{r.json()['id']}")
                await wait_warm(client)
            await client.delete(f"/v1/sandboxes/{sid}")
    finally:
        await docker.close()
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)

    print(f"exec latency, request -> first stdout event ({runs} runs each, interleaved)")
    print(row("raw aiodocker exec (floor)", floor))
    print(row("gateway SSE exec {command}", via_cmd, floor))
    print(row("gateway SSE exec {code} (writes a file first)", via_code, floor))
    print(row("gateway SSE exec {command}, back to back", back_to_back, floor))
    print()
    print(f"sandbox create ({len(creates)} runs each), against the raw exec floor")
    print(row("raw aiodocker create+start", raw_creates, floor))
    print(row("gateway create, warm pool (a claim)", claims, floor))
    print(row("gateway create + first output, warm pool", claim_first, floor))
    print(row("gateway create, cold (quota 256 MB)", creates, floor))
    print(row("gateway create, cold (quota 16 MB)", creates_noquota, floor))
    print(row("gateway create + first output, cold", cold_first, floor))
    print(row("naive: a fresh container per exec, to first output", naive, floor))
    print("(cold create = workspace + loop-mounted ext4 quota + container create/start)")
    print(f"\nmedian of floor: {statistics.median(floor) * 1000:.1f} ms")
    series = {
        "raw exec (floor)": floor,
        "exec": via_cmd,
        "exec {code}": via_code,
        "exec back to back": back_to_back,
        "create, warm (claim)": claims,
        "create + first output, warm": claim_first,
        "create, cold": creates,
        "create + first output, cold": cold_first,
        "raw create+start": raw_creates,
        "naive run per exec": naive,
    }
    save(
        "exec_latency",
        {
            name: {"p50_ms": pct(v, 0.5) * 1000, "p95_ms": pct(v, 0.95) * 1000, "n": len(v)}
            for name, v in series.items()
        },
    )


def save(name: str, data: dict[str, object]) -> None:
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    data = {"load_average": os.getloadavg()[0], "measured_at": time.time(), **data}
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"written: {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(main(parser.parse_args().runs))
