"""A small Python client for the Petri gateway. Imports nothing from the server side.

    from petri_sdk import Petri

    with Petri("http://127.0.0.1:8000") as petri:
        sandbox = petri.create("python")
        for event in sandbox.stream(code="print('hi')"):
            print(event.type, event.data)
        sandbox.delete()

`stream` resumes by itself: if the connection drops it reconnects to the execution's events
with `Last-Event-ID`, so every event arrives exactly once, in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

__all__ = ["Event", "Petri", "PetriAPIError", "Sandbox"]

TERMINAL = ("exit", "error")


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


class Petri:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 300) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)

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
        """Run and wait: `{exit_code, stdout, stderr, install, ...}`."""
        result: dict[str, Any] = _check(self.petri.http.post(f"{self.url}/exec", json=body)).json()
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
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _check(source.response)
                    for sse in source.iter_sse():
                        event = Event(int(sse.id), sse.event, json.loads(sse.data))
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
