"""Test mode's wall time beside the same steps done by hand with `docker exec`, in one run.

    python bench/testmode.py [--runs 5]

Starts its own gateway, creates a python sandbox and uploads examples/06_test_a_project/python
(a web app and three pytest tests). Then, interleaved so machine drift hits both alike:
  * test mode: `POST .../exec {"test": true, "app": {...}}` over SSE, request to `exit`
    (install check, app start, readiness probe, pytest with JUnit XML, report, app stop);
  * by hand, into the same container, as a person would with the Docker CLI: `docker exec -d`
    the app, `docker exec` one in-sandbox `/dev/tcp` wait loop (the same probe), `docker exec`
    pytest with `--junitxml`, `docker exec cat` the XML (parsed with the same parser), and
    `docker exec` a kill of the app's process group.
Prints p50/p95 of each and the ratio (test mode / by hand).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import row
from gateway.reports import parse_junit
from tests.conftest import cleanup_containers, make_gateway, remove_tree

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "06_test_a_project" / "python"
APP = {"command": "python3 app.py", "port": 5000, "ready_path": "/"}
SETTLE = 0.5
WAIT = (
    "for i in $(seq 600); do "
    "{ printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3; "
    "read -r l <&3; } 3<>/dev/tcp/127.0.0.1/5000 2>/dev/null && exit 0; sleep 0.05; done; exit 1"
)


def via_gateway(client: httpx.Client, sid: str) -> float:
    started = time.perf_counter()
    with client.stream(
        "POST", f"/v1/sandboxes/{sid}/exec", json={"test": True, "app": APP},
        headers={"Accept": "text/event-stream"},
    ) as r:
        last = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                last = line[7:]
    took = time.perf_counter() - started
    if last != "exit":
        raise RuntimeError(f"test mode ended with {last!r}")
    return took


def docker(*argv: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {argv[:3]}: {done.stderr[-300:]}")
    return done.stdout


def by_hand(cid: str) -> float:
    user = ["-u", "1000:1000", "-w", "/sandbox"]
    started = time.perf_counter()
    docker("exec", "-d", *user, "-e", "PORT=5000", cid, "bash", "-c",
           "echo $$ > /tmp/bench-app.pid; exec python3 app.py")
    docker("exec", *user, cid, "bash", "-c", WAIT)
    docker("exec", *user, "-e", "APP_URL=http://127.0.0.1:5000", cid, "python3", "-m", "pytest",
           "-q", "-p", "no:cacheprovider", "--junitxml=/tmp/bench-junit.xml", check=False)
    cases = parse_junit([docker("exec", cid, "cat", "/tmp/bench-junit.xml").encode()])
    docker("exec", *user, cid, "bash", "-c", "kill -KILL -$(cat /tmp/bench-app.pid)")
    took = time.perf_counter() - started
    if cases.counts["passed"] != 3:
        raise RuntimeError(f"by hand: {cases.counts}")
    return took


def main(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="petri-bench-"))
    gw = make_gateway(tmp, log_level="warning")
    gw.start()
    try:
        with httpx.Client(base_url=gw.url, timeout=300) as client:
            sid = client.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            for path in PROJECT.rglob("*"):
                if path.is_file():
                    rel = path.relative_to(PROJECT)
                    client.put(f"/v1/sandboxes/{sid}/files/{rel}", content=path.read_bytes())
            cid = docker("ps", "-q", "--no-trunc", "--filter", f"label=petri.sandbox={sid}").strip()
            via_gateway(client, sid)  # warm both paths (and the install check's cache)
            by_hand(cid)
            gateway_times, hand_times = [], []
            for _ in range(runs):
                time.sleep(SETTLE)
                hand_times.append(by_hand(cid))
                time.sleep(SETTLE)
                gateway_times.append(via_gateway(client, sid))
            client.delete(f"/v1/sandboxes/{sid}")
    finally:
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)
    print(f"test mode, python example (app + 3 pytest tests), request -> exit ({runs} runs each)")
    print(row("by hand: docker exec app, wait, pytest, cat, kill", hand_times, base_label="base"))
    print(row("gateway test mode (SSE, to exit)", gateway_times, hand_times))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    main(parser.parse_args().runs)
