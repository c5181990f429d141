"""The event log of one execution: ids 1..n, the output budget, fan-out to any number of
followers, and batched persistence so a follower can replay from any id, live or later."""

from __future__ import annotations

import asyncio
import codecs
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from . import events as ev
from .events import Event
from .registry import Registry

FLUSH_SECONDS = 0.05
FLUSH_EVENTS = 256
WINDOW_EVENTS = 1024


class OutputBudget:
    """Counts output bytes; past the budget keeps only a rolling tail, in arrival order."""

    def __init__(self, budget: int, tail_bytes: int) -> None:
        self.budget = budget
        self.tail_bytes = tail_bytes
        self.used = 0
        self.truncated = False
        self.dropped = 0
        self._tail: deque[tuple[str, str]] = deque()
        self._tail_size = 0

    def admit(self, kind: str, text: str) -> str:
        """The part of `text` that may be sent now; the rest goes to the tail."""
        if self.truncated:
            self._keep(kind, text)
            return ""
        room = self.budget - self.used
        size = len(text.encode("utf-8", "surrogatepass"))
        if size <= room:
            self.used += size
            return text
        head = text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
        self.used += len(head.encode())
        self.truncated = True
        self._keep(kind, text[len(head) :])
        return head

    def _keep(self, kind: str, text: str) -> None:
        self._tail.append((kind, text))
        self._tail_size += len(text)
        while self._tail_size > self.tail_bytes and self._tail:
            k, t = self._tail.popleft()
            over = self._tail_size - self.tail_bytes
            if len(t) > over:
                self._tail.appendleft((k, t[over:]))
                self._tail_size -= over
                self.dropped += over
            else:
                self._tail_size -= len(t)
                self.dropped += len(t)

    def tail(self) -> list[tuple[str, str]]:
        chunks = list(self._tail)
        self._tail.clear()
        self._tail_size = 0
        return chunks


class ExecutionLog:
    """Events of one execution. `emit` appends (never blocks); `follow` replays, then tails."""

    def __init__(
        self,
        execution_id: str,
        registry: Registry,
        *,
        budget: int,
        tail_bytes: int,
        persist: bool = True,
        first_id: int = 1,
    ) -> None:
        self.execution_id = execution_id
        self.registry = registry
        self.persist = persist
        self.budget = OutputBudget(budget, tail_bytes)
        self.next_id = first_id
        self.done = asyncio.Event()
        self.terminal: Event | None = None
        self._window: deque[Event] = deque()
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._decoders = {
            ev.STDOUT: codecs.getincrementaldecoder("utf-8")("replace"),
            ev.STDERR: codecs.getincrementaldecoder("utf-8")("replace"),
        }

    # --- writing -----------------------------------------------------------------------------

    def emit(self, type_: str, data: dict[str, Any]) -> Event:
        if self.terminal is not None:
            raise RuntimeError(f"execution {self.execution_id} already ended")
        event = Event(self.next_id, type_, data)
        self.next_id += 1
        self._window.append(event)
        self._pending.append(event)
        if event.terminal:
            self.terminal = event
            self.flush()
            self.done.set()
        elif len(self._pending) >= FLUSH_EVENTS:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        self._trim()
        self._wake.set()
        self._wake = asyncio.Event()
        return event

    def output(self, kind: str, raw: bytes) -> None:
        """Decode a chunk incrementally (UTF-8, invalid bytes replaced) and emit what the
        output budget admits; past it, one `truncated` event and a rolling tail."""
        text = self._decoders[kind].decode(raw)
        self._output_text(kind, text)

    def _output_text(self, kind: str, text: str) -> None:
        if not text:
            return
        was_truncated = self.budget.truncated
        admitted = self.budget.admit(kind, text)
        if admitted:
            self.emit(kind, {"text": admitted})
        if self.budget.truncated and not was_truncated:
            self.emit(
                ev.TRUNCATED,
                {
                    "budget_bytes": self.budget.budget,
                    "message": "output budget reached: the middle is dropped, the tail is kept",
                },
            )

    def close_output(self) -> None:
        """End of program output: flush the decoders, then the kept tail."""
        for kind, decoder in self._decoders.items():
            self._output_text(kind, decoder.decode(b"", final=True))
        for kind, text in self.budget.tail():
            self.emit(kind, {"text": text})

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending and self.persist:
            self.registry.append_events(self.execution_id, self._pending)
        self._pending = []
        self._trim()

    def _trim(self) -> None:
        # Only persisted events leave memory, so a follower can always find them in SQLite.
        limit = len(self._window) - WINDOW_EVENTS
        unflushed = len(self._pending)
        while limit > 0 and len(self._window) > unflushed and self.persist:
            self._window.popleft()
            limit -= 1

    # --- reading -----------------------------------------------------------------------------

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event with id > `after`, exactly once and in order, until the terminal one."""
        cursor = after
        while True:
            wake = self._wake
            if self._window and cursor + 1 < self._window[0].id:
                batch = self.registry.events(self.execution_id, cursor, limit=500)
            else:
                batch = [e for e in self._window if e.id > cursor]
            for event in batch:
                yield event
                cursor = event.id
                if event.terminal:
                    return
            if not batch:
                if self.terminal is not None and cursor >= self.terminal.id:
                    return
                await wake.wait()


async def replay(registry: Registry, execution_id: str, after: int = 0) -> AsyncIterator[Event]:
    """Events of an execution that is no longer live, from SQLite."""
    cursor = after
    while True:
        batch = registry.events(execution_id, cursor, limit=500)
        if not batch:
            return
        for event in batch:
            yield event
            cursor = event.id
