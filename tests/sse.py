"""A strict reader of the SSE wire format, for tests: every field is checked, nothing guessed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.events import TERMINAL


@dataclass
class Received:
    id: int
    type: str
    data: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


def parse_wire(lines: Iterator[str], comments: list[str] | None = None) -> Iterator[Received]:
    """Parse `id:`/`event:`/`data:` blocks strictly: each event has exactly one of each, data
    is one JSON object, blocks end with a blank line, comments start with ':'."""
    block: dict[str, str] = {}
    for line in lines:
        if line == "":
            if block:
                assert set(block) == {"id", "event", "data"}, f"incomplete event block: {block}"
                data = json.loads(block["data"])
                assert isinstance(data, dict)
                yield Received(int(block["id"]), block["event"], data)
                block = {}
            continue
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        name, sep, value = line.partition(": ")
        assert sep, f"malformed SSE line: {line!r}"
        assert name in ("id", "event", "data"), f"unexpected field {name!r}"
        assert name not in block, f"field {name} repeated in one event"
        block[name] = value
    assert not block, f"stream ended inside an event: {block}"


def stream_events(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    after: int | None = None,
    stop_after: int | None = None,
    comments: list[str] | None = None,
    **kw: Any,
) -> list[Received]:
    """Open an SSE stream and collect its events (checking ids are 1..n without gaps)."""
    headers = {"Accept": "text/event-stream", **kw.pop("headers", {})}
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    got: list[Received] = []
    with client.stream(method, url, headers=headers, **kw) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in parse_wire(r.iter_lines(), comments):
            got.append(event)
            if stop_after is not None and len(got) >= stop_after:
                break
    return got


def check_sequence(events: list[Received], first: int = 1) -> None:
    ids = [e.id for e in events]
    assert ids == list(range(first, first + len(ids))), f"ids not consecutive: {ids}"
    terminals = [e for e in events if e.type in TERMINAL]
    assert len(terminals) == 1 and events[-1] is terminals[0], "exactly one terminal event, last"


def text(events: list[Received], kind: str) -> str:
    return "".join(e.data["text"] for e in events if e.type == kind)
