"""The event model of an execution and its Server-Sent Events wire format.

Imports nothing from the server side: the SDK and tests use it to parse streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

START, INSTALL, STDOUT, STDERR, EXIT, ERROR, TRUNCATED = (
    "start",
    "install",
    "stdout",
    "stderr",
    "exit",
    "error",
    "truncated",
)
TERMINAL = frozenset({EXIT, ERROR})
OUTPUT = frozenset({STDOUT, STDERR})


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    def data_json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))

    def sse(self) -> bytes:
        """The event as SSE bytes. The data is one JSON line, so no `\\r`/`\\n` can split it."""
        return f"id: {self.id}\nevent: {self.type}\ndata: {self.data_json()}\n\n".encode()

    @classmethod
    def from_sse(cls, id: str, type: str, data: str) -> Event:
        return cls(int(id), type, json.loads(data))


def keepalive() -> bytes:
    return b": keep-alive\n\n"
