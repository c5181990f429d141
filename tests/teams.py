"""Helpers for the teams tests (§11): keys made with the real CLI against a gateway's data dir,
clients that send them, and an SSE reader with a deadline for streams that never end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.conftest import ROOT, Gateway


def cli(gw: Gateway, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`petri <args>` with the gateway's environment (its PETRI_DATA_DIR)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def new_key(gw: Gateway, tenant: str, *, admin: bool = False) -> str:
    made = cli(gw, "keys", "create", "--tenant", tenant, *(["--admin"] if admin else []))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("petri_") and len(key) >= 50, key
    return key


def client(gw: Gateway, key: str | None, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return gw.client(headers=headers, **kw)


def sse_for(client: httpx.Client, url: str, seconds: float, **kw: Any) -> list[dict[str, Any]]:
    """The events (`{id, event, data}`) a stream sends within `seconds` (a tail never ends)."""
    got: list[dict[str, Any]] = []
    block: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    try:
        with client.stream("GET", url, timeout=httpx.Timeout(seconds, read=seconds), **kw) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line == "" and block:
                    got.append({**block, "data": json.loads(block["data"])})
                    block = {}
                elif line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    block[name] = value
                if time.monotonic() > deadline:
                    break
    except httpx.ReadTimeout:
        pass
    return got


def wait_for(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
