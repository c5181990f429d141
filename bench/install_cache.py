"""What dependency installs cost: a cached install must cost an exec nothing.

    python bench/install_cache.py [--runs 20] [--installs 5] [--pypi]

Starts its own gateway (free port, temporary directories) and its own package index on
127.0.0.1 (a one-module wheel, PEP 503 simple index), allowlisted for that gateway, and
measures:
  * exec latency, request -> first `stdout` event of `{"code": "print('hi')"}` over SSE,
    p50/p95 over N runs, in a python sandbox whose one-package requirements.txt is installed
    (every run is a cache hit) beside one with no manifest at all. Runs are interleaved so
    machine drift hits both alike. Target: cached p50 within 10% of no-manifest p50.
  * the gateway's own cost of deciding "cached" or "nothing to install" before an exec
    (`ContainerInstaller.prepare`, in process, no Docker), which is all a cache hit adds.
  * first install of a one-package requirements.txt (fresh sandbox each time): request ->
    `exit`, and the install's own time (container start to package list), from the local
    index and, with --pypi, `six` from PyPI through the egress proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import _report as report
from gateway import deps
from gateway import installer as installer_mod
from gateway.config import DEFAULT_EGRESS_ALLOW, Settings
from gateway.installer import ContainerInstaller
from gateway.models import Limits, Sandbox
from gateway.registry import Registry
from gateway.runner import Runner
from gateway.runtimes import load_runtimes
from gateway.workspace import Workspaces
from tests.conftest import cleanup_containers, make_gateway, remove_tree
from tests.index import Server, build_wheel, write_simple_index

HI = {"code": "print('hi')"}
pct = report.pct
row = functools.partial(report.row, base_label="base", width=52)


async def first_stdout(client: httpx.AsyncClient, sid: str, body: dict[str, Any]) -> float:
    """Request -> first stdout event; also checks the install was a cache hit or skip."""
    started = time.perf_counter()
    took = 0.0
    installs = 0
    async with client.stream(
        "POST", f"/v1/sandboxes/{sid}/exec", json=body, headers={"Accept": "text/event-stream"}
    ) as r:
        async for line in r.aiter_lines():  # read to the end of the run
            if line == "event: stdout" and not took:
                took = time.perf_counter() - started
            installs += line == "event: install"
    if not took or installs:
        raise RuntimeError(f"no stdout event, or an install ran ({installs} install events)")
    return took


async def sandbox(
    client: httpx.AsyncClient, env: dict[str, str], files: dict[str, str] | None = None
) -> str:
    r = await client.post("/v1/sandboxes", json={"language": "python", "env": env})
    r.raise_for_status()
    sid = str(r.json()["id"])
    for path, content in (files or {}).items():
        put = await client.put(f"/v1/sandboxes/{sid}/files/{path}", content=content.encode())
        put.raise_for_status()
    return sid


async def first_install(
    client: httpx.AsyncClient, env: dict[str, str], requirement: str
) -> tuple[float, float]:
    """(request -> exit, the install's own seconds) of a first install in a fresh sandbox."""
    sid = await sandbox(client, env, {"requirements.txt": requirement + "\n"})
    started = time.perf_counter()
    r = await client.post(f"/v1/sandboxes/{sid}/exec", json=HI, timeout=600)
    took = time.perf_counter() - started
    body = r.json()
    await client.delete(f"/v1/sandboxes/{sid}")
    if body.get("install", {}).get("status") != "installed" or body.get("stdout") != "hi\n":
        raise RuntimeError(f"install did not work: {body}")
    own = re.search(r"installed in ([0-9.]+)s", body["install"]["log"])
    return took, float(own.group(1)) if own else float("nan")


class Sink:
    def emit(self, type_: str, data: dict[str, Any]) -> None:
        raise AssertionError(f"no install output expected: {data}")


async def check_cost(rounds: int = 1000) -> None:
    """`prepare` on a cache hit (requirements.txt unchanged) and with no manifest."""
    tmp = Path(tempfile.mkdtemp(prefix="petri-bench-check-"))
    settings = Settings.from_env({}, data_dir=tmp / "data", workspace_root=tmp / "ws")
    registry = Registry(settings.data_dir)
    workspaces = Workspaces(settings.workspace_root, settings.uid, settings.gid)
    installer = ContainerInstaller(settings, registry, Runner(), workspaces, "bench")
    runtime = load_runtimes(settings.runtimes_dir)["python"]
    assert runtime.install is not None
    for name in ("hit", "bare"):
        (settings.workspace_root / f"sb-{name}").mkdir(parents=True)
        workspaces.get(f"sb-{name}").write(".petri/code/ex-1/main.py", b"print('hi')\n", 99)
    hit = workspaces.get("sb-hit")
    hit.write("requirements.txt", b"petri-demo-pkg==1.0\n", 99)
    choice = deps.choose(runtime.install, hit)
    assert choice is not None
    record = {"plan": choice.plan.name, "key": choice.key, "found": [], "packages": []}
    registry.put_value("sb-hit", installer_mod.RECORD, record)
    hit.write(installer_mod.STAMP_FILE, choice.key.encode(), 99)
    print("gateway-side install check before each exec (in process)")
    for name, status in (("hit", "cached"), ("bare", "skipped")):
        box = Sandbox(f"sb-{name}", "python", "running", 0, 0, 60, Limits(512, 1.0, 64, 0))
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = await installer.prepare(box, runtime, Sink())
            times.append(time.perf_counter() - started)
            assert result.status == status
        label = "requirements.txt unchanged -> cached" if name == "hit" else "no manifest"
        p50, p95 = pct(times, 0.5) * 1e6, pct(times, 0.95) * 1e6
        print(f"{label:<52} p50 {p50:8.0f} us   p95 {p95:8.0f} us")
    registry.close()
    remove_tree(tmp)
    print()


async def main(runs: int, installs: int, pypi: bool) -> None:
    await check_cost()
    tmp = Path(tempfile.mkdtemp(prefix="petri-bench-install-"))
    files = tmp / "index"
    files.mkdir()
    wheel = build_wheel(files, "petri-demo-pkg", "1.0", "petri_demo_pkg", "VALUE = 1\n")
    write_simple_index(files, "petri-demo-pkg", [wheel])
    index = Server(files).start()
    (tmp / "gw").mkdir()
    gw = make_gateway(tmp / "gw", egress_allow=f"{DEFAULT_EGRESS_ALLOW},127.0.0.1:{index.port}")
    gw.start()
    local = {"PIP_INDEX_URL": f"{index.url}/simple"}
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
            # Three sandboxes in strict rotation: each sees the same gap between its execs
            # (the gateway cleans up after an exec before the sandbox's next one starts).
            manifest = {"requirements.txt": "petri-demo-pkg==1.0\n"}
            cached = await sandbox(client, local, manifest)
            bare = await sandbox(client, local)
            control = await sandbox(client, local)  # A/A: a second no-manifest sandbox
            importing = await sandbox(client, local, manifest)
            made = (cached, bare, control, importing)
            for sid in made:  # warm up; installs the package
                r = await client.post(f"/v1/sandboxes/{sid}/exec", json=HI, timeout=600)
                assert r.json()["stdout"] == "hi\n", r.text
            timings: dict[str, list[float]] = {}
            use = {"code": "import petri_demo_pkg\nprint('hi')\n"}
            order = [
                ("cached", cached, HI),
                ("bare", bare, HI),
                ("control", control, HI),
                ("cached+import", importing, use),
            ]
            for i in range(runs):  # the order turns each round: no one always goes first
                for name, sid, body in order[i % 4 :] + order[: i % 4]:
                    timings.setdefault(name, []).append(await first_stdout(client, sid, body))
            print(f"exec latency, request -> first stdout event ({runs} runs, interleaved)")
            print(row("no manifest", timings["bare"]))
            print(
                row(
                    "no manifest, a second sandbox (A/A noise)", timings["control"], timings["bare"]
                )
            )
            print(row("requirements.txt installed (cache hit)", timings["cached"], timings["bare"]))
            print(
                row(
                    "cache hit, program imports the package",
                    timings["cached+import"],
                    timings["bare"],
                )
            )
            print(f"\nfirst install of a one-package requirements.txt ({installs} fresh sandboxes)")
            sources = [("local index", local, "petri-demo-pkg==1.0")]
            if pypi:
                sources.append(("PyPI via the egress proxy", {}, "six==1.16.0"))
            for name, env, requirement in sources:
                results = [await first_install(client, env, requirement) for _ in range(installs)]
                print(row(f"{name}: request -> exit", [r[0] for r in results]))
                print(row(f"{name}: install container, start to done", [r[1] for r in results]))
            for sid in made:
                await client.delete(f"/v1/sandboxes/{sid}")
    finally:
        gw.stop()
        index.stop()
        cleanup_containers(tmp / "gw")
        remove_tree(tmp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--installs", type=int, default=5)
    parser.add_argument("--pypi", action="store_true", help="also install `six` from PyPI")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.installs, args.pypi))
