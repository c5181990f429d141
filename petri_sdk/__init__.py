"""A small Python client for the Petri gateway. Imports nothing from the server side.

    from petri_sdk import Petri

    with Petri("http://127.0.0.1:8000") as petri:
        sandbox = petri.create("python")
        for event in sandbox.stream(code="print('hi')"):
            print(event.type, event.data)
        sandbox.delete()

`stream` resumes by itself: if the connection drops it reconnects to the execution's events
with `Last-Event-ID`, so every event arrives exactly once, in order. It yields only what it
can read as a Petri event (a known type, an integer id past the last one, a JSON object as
data) and skips anything else, such as the empty event some SSE readers make of a keep-alive.

Timeouts follow the run, not a fixed number: streams have no read timeout (the gateway sends
keep-alives while a run is silent, and a run always ends), and `run` (which waits for the
JSON result) allows `timeout_seconds` plus `wait_margin` seconds for container start and the
dependency install; without `timeout_seconds` it waits as long as the gateway lets it run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

__all__ = ["Event", "Petri", "PetriAPIError", "Sandbox"]

TERMINAL = ("exit", "error")
# Every type of the event stream (DESIGN.md §4); other types are skipped, as clients must.
EVENT_TYPES = frozenset(
    {"start", "install", "stdout", "stderr", "truncated", "app", "ready", "report", *TERMINAL}
)


class PetriAPIError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            raise PetriAPIError(r.status_code, err["code"], err["message"])
        except (ValueError, KeyError):
            raise PetriAPIError(r.status_code, "http_error", r.text[:200]) from None
    return r


def _parse(sse: ServerSentEvent, last: int) -> Event | None:
    """A Petri event, or None for what is not one (or repeats an id already seen)."""
    if sse.event not in EVENT_TYPES or not (sse.id.isascii() and sse.id.isdigit()):
        return None
    try:
        data = json.loads(sse.data)
    except ValueError:
        return None
    if not isinstance(data, dict) or int(sse.id) <= last:
        return None
    return Event(int(sse.id), sse.event, data)


class Petri:
    """`timeout`: seconds for ordinary calls (uploads included). Streams have no read timeout;
    `run` waits `timeout_seconds + wait_margin` (container start, dependency install)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 300,
        wait_margin: float = 660,
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)
        self.timeout, self.wait_margin = timeout, wait_margin

    def __enter__(self) -> Petri:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def create(self, language: str, **options: Any) -> Sandbox:
        body = _check(self.http.post("/v1/sandboxes", json={"language": language, **options}))
        return Sandbox(self, body.json())

    def get(self, sandbox_id: str) -> Sandbox:
        return Sandbox(self, _check(self.http.get(f"/v1/sandboxes/{sandbox_id}")).json())


class Sandbox:
    def __init__(self, petri: Petri, info: dict[str, Any]) -> None:
        self.petri, self.info, self.id = petri, info, info["id"]
        self.url = f"/v1/sandboxes/{self.id}"

    # files
    def write(self, path: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        _check(self.petri.http.put(f"{self.url}/files/{path}", content=raw))

    def read(self, path: str) -> bytes:
        return _check(self.petri.http.get(f"{self.url}/files/{path}")).content

    def files(self) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = _check(self.petri.http.get(f"{self.url}/files")).json()[
            "files"
        ]
        return files

    def upload_zip(self, archive: bytes) -> list[str]:
        r = self.petri.http.post(
            f"{self.url}/upload", content=archive, headers={"Content-Type": "application/zip"}
        )
        names: list[str] = _check(r).json()["files"]
        return names

    # executions
    def run(self, **body: Any) -> dict[str, Any]:
        """Run and wait: `{exit_code, stdout, stderr, install, ...}`. Waits as long as the run
        may take: `timeout_seconds` (and `idle_timeout_seconds`) plus the client's margin."""
        seconds = body.get("timeout_seconds")
        read = None
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            read = float(seconds) + self.petri.wait_margin
        timeout = httpx.Timeout(self.petri.timeout, read=read)
        r = self.petri.http.post(f"{self.url}/exec", json=body, timeout=timeout)
        result: dict[str, Any] = _check(r).json()
        return result

    def start(self, **body: Any) -> str:
        """Start without waiting; returns the execution id."""
        r = _check(self.petri.http.post(f"{self.url}/exec", json={**body, "wait": False}))
        execution_id: str = r.json()["execution_id"]
        return execution_id

    def stream(self, idempotency_key: str | None = None, **body: Any) -> Iterator[Event]:
        """Start an execution and yield its events until the terminal one, resuming on drops."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = _check(
            self.petri.http.post(f"{self.url}/exec", json={**body, "wait": False}, headers=headers)
        )
        yield from self.follow(r.json()["execution_id"])

    def follow(self, execution_id: str, after: int = 0, retries: int = 5) -> Iterator[Event]:
        last, failures = after, 0
        while True:
            try:
                with connect_sse(
                    self.petri.http,
                    "GET",
                    f"{self.url}/executions/{execution_id}/events",
                    headers={"Last-Event-ID": str(last)},
                    # No read timeout: a silent run sends keep-alives, and every run ends.
                    timeout=httpx.Timeout(self.petri.timeout, read=None),
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _check(source.response)
                    for sse in source.iter_sse():
                        event = _parse(sse, last)
                        if event is None:
                            continue
                        last, failures = event.id, 0
                        yield event
                        if event.type in TERMINAL:
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > retries:
                    raise
                time.sleep(min(2.0, 0.2 * 2**failures))

    def kill(self, execution_id: str) -> None:
        _check(self.petri.http.post(f"{self.url}/executions/{execution_id}/kill"))

    def delete(self) -> None:
        r = self.petri.http.delete(self.url)
        if r.status_code != 404:
            _check(r)
