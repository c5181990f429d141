"""The event log of one execution: ids 1..n, the output budget, fan-out to any number of
followers, and batched persistence so a follower can replay from any id, live or later.

With persistence on, followers only ever see events that are already in SQLite. A batch is
committed on the loop's next turn after its first event when output is sparse (what arrived
in the same turn joins it), at most every `FLUSH_SECONDS` under load; output of one kind
nobody has seen yet is coalesced meanwhile. Whatever id a client saw survives a gateway
crash, so after a restart the `interrupted` event always comes after it. Memory per
execution is bounded: the in-memory window holds at most `WINDOW_EVENTS` events and
`WINDOW_BYTES` of text; a follower that falls behind it reads from SQLite.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from . import events as ev
from .events import Event
from .registry import Registry
from .vault import Masker

log = logging.getLogger("petri.executions")
FLUSH_SECONDS = 0.02
FLUSH_EVENTS = 256
FLUSH_BYTES = 1024 * 1024
WINDOW_EVENTS = 1024
WINDOW_BYTES = 2 * 1024 * 1024
REPLAY_BATCH = 64
# A follower yields the loop after this many events: sending an event costs tens of µs, and
# a client that reads fast never makes the send wait, so 20 followers of a long run would
# otherwise take turns of whole pages while every other request waits.
TURN_EVENTS = 8
COALESCE_CHARS = 256 * 1024
STREAMED_VIA_EMIT = frozenset({ev.INSTALL, "app"})  # chunked text that arrives through `emit`


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _size(event: Event) -> int:
    text = event.data.get("text")
    return 64 + (len(text) if isinstance(text, str) else 0)


class Tail:
    """The last `limit` bytes of one stream, as chunks tagged with their arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[tuple[int, str]] = deque()
        self.size = 0

    def keep(self, order: int, text: str) -> int:
        """Append; drop the oldest bytes beyond the limit; return how many were dropped."""
        self.chunks.append((order, text))
        self.size += _utf8_len(text)
        dropped = 0
        while self.size > self.limit and self.chunks:
            n, t = self.chunks.popleft()
            size = _utf8_len(t)
            over = self.size - self.limit
            if size > over:
                rest = t.encode("utf-8", "surrogatepass")[over:].decode("utf-8", "ignore")
                self.chunks.appendleft((n, rest))
                size -= _utf8_len(rest)
            self.size -= size
            dropped += size
        return dropped


class OutputBudget:
    """Counts output bytes; past the budget keeps only a rolling tail of each stream, so a
    flood on one stream never pushes the other's last words out."""

    def __init__(self, budget: int, tail_bytes: int) -> None:
        self.budget = budget
        self.tail_bytes = tail_bytes
        self.used = 0
        self.truncated = False
        self.dropped = 0
        self._tails: dict[str, Tail] = {}
        self._order = 0

    def admit(self, kind: str, text: str) -> str:
        """The part of `text` that may be sent now; the rest goes to the tail."""
        if self.truncated:
            self._keep(kind, text)
            return ""
        room = self.budget - self.used
        size = _utf8_len(text)
        if size <= room:
            self.used += size
            return text
        head = text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
        self.used += _utf8_len(head)
        self.truncated = True
        self._keep(kind, text[len(head) :])
        return head

    def _keep(self, kind: str, text: str) -> None:
        if text:
            self._order += 1
            tail = self._tails.setdefault(kind, Tail(self.tail_bytes))
            self.dropped += tail.keep(self._order, text)

    def tail(self) -> list[tuple[str, str]]:
        """Every stream's kept tail, merged back into arrival order; then empty."""
        merged = sorted((n, kind, text) for kind, t in self._tails.items() for n, text in t.chunks)
        self._tails.clear()
        return [(kind, text) for _, kind, text in merged]


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
        self.durable = first_id - 1  # followers see events up to this id
        self.done = asyncio.Event()
        self.terminal: Event | None = None
        self._window: deque[Event] = deque()
        self._window_bytes = 0
        self._pending: list[Event] = []
        self._pending_bytes = 0
        self._cursors: dict[object, int] = {}  # live followers (used when not persisting)
        self._wake = asyncio.Event()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushed_at = 0.0
        self._decoders = {
            ev.STDOUT: codecs.getincrementaldecoder("utf-8")("replace"),
            ev.STDERR: codecs.getincrementaldecoder("utf-8")("replace"),
        }
        # Test mode's app under test: `app` events, with a budget of their own so a chatty
        # app never truncates the test runner's output (made on first use).
        self._app: tuple[OutputBudget, dict[str, codecs.IncrementalDecoder]] | None = None
        self._budget_bytes, self._tail_bytes = budget, tail_bytes
        # Secrets of this run (vault.py): masked in every event before it is stored or sent.
        self.masker: Masker | None = None
        self._started = time.monotonic()
        self.first_output: float | None = None  # seconds from creation to the first output

    # --- writing -----------------------------------------------------------------------------

    def emit(self, type_: str, data: dict[str, Any]) -> Event:
        if self.terminal is not None:
            raise RuntimeError(f"execution {self.execution_id} already ended")
        if self.masker is not None:
            masked = self._mask(type_, data)
            if masked is None:  # all of it held back: it may begin a secret
                return Event(0, type_, data)
            data = masked
        return self._append(type_, data)

    def _append(self, type_: str, data: dict[str, Any]) -> Event:
        event = Event(self.next_id, type_, data)
        self.next_id += 1
        size = _size(event)
        self._window.append(event)
        self._window_bytes += size
        if event.terminal:
            self.terminal = event
        if not self.persist:
            self.durable = event.id
            self._trim()
            self._wake_followers()
        else:
            self._pending.append(event)
            self._pending_bytes += size
            if (
                event.terminal
                or len(self._pending) >= FLUSH_EVENTS
                or self._pending_bytes >= FLUSH_BYTES
            ):
                self.flush()
            elif self._flush_handle is None:
                loop = asyncio.get_running_loop()
                due = self._flushed_at + FLUSH_SECONDS - time.monotonic()
                self._flush_handle = loop.call_later(max(0.0, due), self.flush)
        if event.terminal:
            self.done.set()
        return event

    def _mask(self, type_: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """`data` with the run's secrets masked. Text streamed in chunks through `emit`
        (`install`; `app`, keyed by its stream) keeps the end that may begin a secret for the
        next chunk; any other event first sends what such streams hold."""
        masker = self.masker
        assert masker is not None
        text = data.get("text")
        if type_ in STREAMED_VIA_EMIT and isinstance(text, str):
            key = f"{type_}:{data.get('stream', '')}"
            text = masker.stream(key, text)
            return {**masker.value(data), "text": text} if text else None
        if type_ not in ev.OUTPUT:  # a milestone: what streams hold comes first
            for key in masker.held():
                kind, _, stream = key.partition(":")
                rest = masker.flush(key)
                if not rest:
                    continue
                if kind in STREAMED_VIA_EMIT:
                    data_ = {"stream": stream, "text": rest} if stream else {"text": rest}
                    self._append(kind, data_)
                elif kind in ev.OUTPUT:  # a run that ended before `close_output`
                    self._output_text(kind, rest)
        return dict(masker.value(data))

    def output(self, kind: str, raw: bytes) -> None:
        """Decode a chunk incrementally (UTF-8, invalid bytes replaced) and emit what the
        output budget admits; past it, one `truncated` event and a rolling tail. With
        secrets, masked first (a chunk's end that may begin one waits for the next)."""
        text = self._decoders[kind].decode(raw)
        if self.masker is not None:
            text = self.masker.stream(kind, text)
        if text and self.first_output is None:
            self.first_output = time.monotonic() - self._started
        self._output_text(kind, text)

    def _output_text(self, kind: str, text: str) -> None:
        if not text:
            return
        was_truncated = self.budget.truncated
        admitted = self.budget.admit(kind, text)
        if admitted and not self._coalesce(kind, admitted):
            self.emit(kind, {"text": admitted})
        if self.budget.truncated and not was_truncated:
            self.emit(
                ev.TRUNCATED,
                {
                    "budget_bytes": self.budget.budget,
                    "message": "output budget reached: the middle is dropped, the tail is kept",
                },
            )

    def _coalesce(self, kind: str, text: str, stream: str | None = None) -> bool:
        """Append to the last event if it is output of the same kind (and, for `app` events,
        stream) nobody has seen yet (pending, so not yet visible): fewer, larger events under
        load, same bytes."""
        if not self._pending:
            return False
        last = self._pending[-1]
        if last.type != kind or last.data.get("stream") != stream:
            return False
        if len(last.data["text"]) + len(text) > COALESCE_CHARS:
            return False
        merged = Event(last.id, kind, {**last.data, "text": last.data["text"] + text})
        self._pending[-1] = self._window[-1] = merged  # the newest event is last in both
        self._pending_bytes += len(text)
        self._window_bytes += len(text)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        return True

    def close_output(self) -> None:
        """End of program output: flush the decoders, then the kept tail."""
        for kind, decoder in self._decoders.items():
            text = decoder.decode(b"", final=True)
            if self.masker is not None:
                text = self.masker.stream(kind, text) + self.masker.flush(kind)
            self._output_text(kind, text)
        for kind, text in self.budget.tail():
            self.emit(kind, {"text": text})

    def app_output(self, stream: str, raw: bytes) -> None:
        """Output of test mode's app under test (`stream` is "stdout" or "stderr"), as `app`
        events: decoded like program output, under a budget of its own (past it, one
        `truncated` event with `"source": "app"` and a rolling tail)."""
        if self._app is None:
            decoders: dict[str, codecs.IncrementalDecoder] = {
                s: codecs.getincrementaldecoder("utf-8")("replace") for s in (ev.STDOUT, ev.STDERR)
            }
            self._app = OutputBudget(self._budget_bytes, self._tail_bytes), decoders
        decoders = self._app[1]
        self._app_text(stream, decoders[stream].decode(raw))

    def _app_text(self, stream: str, text: str) -> None:
        if not text or self._app is None:
            return
        budget = self._app[0]
        was_truncated = budget.truncated
        admitted = budget.admit(stream, text)
        # With secrets, every chunk goes through `emit`, which masks (coalescing would not).
        masked = self.masker is not None
        if admitted and (masked or not self._coalesce(ev.APP, admitted, stream)):
            self.emit(ev.APP, {"stream": stream, "text": admitted})
        if budget.truncated and not was_truncated:
            self.emit(
                ev.TRUNCATED,
                {
                    "budget_bytes": budget.budget,
                    "message": "the app's output budget was reached: the middle is dropped, "
                    "the tail is kept",
                    "source": "app",
                },
            )

    def close_app_output(self) -> None:
        """End of the app's output: flush its decoders, then its kept tail."""
        if self._app is None:
            return
        for stream, decoder in self._app[1].items():
            self._app_text(stream, decoder.decode(b"", final=True))
        for stream, text in self._app[0].tail():
            self.emit(ev.APP, {"stream": stream, "text": text})

    def recent_output(self, limit: int = 4000) -> str:
        """The last `limit` characters of stdout and stderr still in memory (for messages)."""
        parts: list[str] = []
        size = 0
        for event in reversed(self._window):
            if event.type in ev.OUTPUT:
                parts.append(event.data["text"])
                size += len(event.data["text"])
                if size >= limit:
                    break
        return "".join(reversed(parts))[-limit:]

    def flush(self) -> None:
        """Commit pending events in one transaction, then let followers see them."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        try:
            self.registry.append_events(self.execution_id, self._pending)
        except (sqlite3.Error, OSError):  # a full disk must not stop the stream; replay misses them
            log.exception("could not store events of %s", self.execution_id)
        self.durable = self._pending[-1].id
        self._flushed_at = time.monotonic()
        self._pending = []
        self._pending_bytes = 0
        self._trim()
        self._wake_followers()

    def _wake_followers(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _trim(self) -> None:
        """Drop the oldest events beyond the window's bounds. Persisted, only stored ones
        leave (a follower finds them in SQLite); not persisted, only ones every follower read."""
        cursors = self._cursors.values()
        floor = self.durable if self.persist else min(cursors, default=self.durable)
        window = self._window
        while window and window[0].id <= floor:
            if len(window) <= WINDOW_EVENTS and self._window_bytes <= WINDOW_BYTES:
                break
            self._window_bytes -= _size(window.popleft())

    # --- reading -----------------------------------------------------------------------------

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event with id > `after`, exactly once and in order, until the terminal one."""
        cursor = after
        token = object()
        try:
            while True:
                wake = self._wake
                if not self.persist:
                    self._cursors[token] = cursor
                batch = await self._stored(cursor) or self._batch(cursor)
                for n, event in enumerate(batch, 1):
                    yield event
                    cursor = event.id
                    if event.terminal:
                        return
                    if n % TURN_EVENTS == 0:
                        await asyncio.sleep(0)
                if not batch:
                    if self.terminal is not None and cursor >= self.terminal.id:
                        return
                    await wake.wait()
        finally:
            self._cursors.pop(token, None)

    async def _stored(self, cursor: int) -> list[Event]:
        """Events after `cursor` that already left the window, read from SQLite in a worker
        thread (a follower far behind reads many pages); [] when the window has them."""
        window = self._window
        if not (self.persist and window and cursor + 1 < window[0].id):
            return []
        return await _read(self.registry, self.execution_id, cursor)

    def _batch(self, cursor: int) -> list[Event]:
        window = self._window
        if window and cursor + 1 < window[0].id:
            # Not stored (persistence off, or a failed write): continue from the window.
            cursor = window[0].id - 1
        if not window or cursor >= self.durable:
            return []
        start = max(0, cursor + 1 - window[0].id)
        stop = min(len(window), self.durable + 1 - window[0].id, start + REPLAY_BATCH * 4)
        return [window[i] for i in range(start, stop)]


async def replay(registry: Registry, execution_id: str, after: int = 0) -> AsyncIterator[Event]:
    """Events of an execution that is no longer live, from SQLite: page by page, each read
    in a worker thread, so many clients replaying long runs never stall the event loop."""
    cursor = after
    while True:
        batch = await _read(registry, execution_id, cursor)
        if not batch:
            return
        for n, event in enumerate(batch, 1):
            yield event
            cursor = event.id
            if n % TURN_EVENTS == 0:
                await asyncio.sleep(0)


async def _read(registry: Registry, execution_id: str, cursor: int) -> list[Event]:
    """One page of stored events, read in the registry's reader thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        registry.reads, registry.read_events, execution_id, cursor, REPLAY_BATCH
    )
