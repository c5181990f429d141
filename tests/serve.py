"""Serve-mode helpers for tests: start the test app (`preview_app.py`) as a service, wait for
a status, read a service's events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.sse import Received, stream_events

APP = (Path(__file__).resolve().parent / "preview_app.py").read_bytes()


def upload_app(client: httpx.Client, sid: str, name: str = "app.py") -> None:
    r = client.put(f"/v1/sandboxes/{sid}/files/{name}", content=APP)
    assert r.status_code == 201, r.text


def start(client: httpx.Client, sid: str, **body: Any) -> dict[str, Any]:
    """POST a service (the test app on port 8000 unless told); its 201 body."""
    body.setdefault("command", "python3 app.py 8000")
    body.setdefault("port", 8000)
    r = client.post(f"/v1/sandboxes/{sid}/services", json=body)
    assert r.status_code == 201, r.text
    service: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/v1/sandboxes/{sid}/services/{service['id']}"
    return service


def get(client: httpx.Client, service: dict[str, Any]) -> dict[str, Any]:
    r = client.get(f"/v1/sandboxes/{service['sandbox_id']}/services/{service['id']}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def wait_status(
    client: httpx.Client, service: dict[str, Any], *wanted: str, seconds: float = 60
) -> dict[str, Any]:
    """Poll the service until its status is one of `wanted`; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = get(client, service)
        if found["status"] in wanted:
            return found
        assert time.monotonic() < deadline, f"service stayed {found['status']}: {found}"
        time.sleep(0.1)


def start_ready(client: httpx.Client, sid: str, **body: Any) -> dict[str, Any]:
    """Upload the test app, start it as a service and wait until it is ready."""
    upload_app(client, sid)
    service = start(client, sid, **body)
    return wait_status(client, service, "ready")


def events(client: httpx.Client, service: dict[str, Any]) -> list[Received]:
    """The whole event stream of the service's execution (it must have ended)."""
    url = f"/v1/sandboxes/{service['sandbox_id']}/executions/{service['execution_id']}/events"
    return stream_events(client, "GET", url)


def run(client: httpx.Client, sid: str, command: str, **body: Any) -> dict[str, Any]:
    """An ordinary exec, JSON mode; its result."""
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": command, **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def preview_client(**kw: Any) -> httpx.Client:
    """A client for preview URLs: absolute URLs, no redirects followed, no proxy."""
    return httpx.Client(timeout=kw.pop("timeout", 120), trust_env=False, **kw)
