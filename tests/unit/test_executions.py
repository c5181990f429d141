"""The execution event log against a real SQLite registry: ids, durability before delivery,
fan-out, replay, bounded memory and the output budget."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway import events as ev
from gateway import executions
from gateway.events import Event
from gateway.executions import ExecutionLog, OutputBudget, replay
from gateway.registry import EVENTS_FILE, Registry


class CountingRegistry(Registry):
    """A real registry that counts commits of event batches."""

    commits = 0

    def append_events(self, execution_id: str, events: Sequence[Event]) -> None:
        self.commits += 1
        super().append_events(execution_id, events)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[CountingRegistry]:
    registry = CountingRegistry(tmp_path)
    yield registry
    registry.close()


def old_events(path: Path, rows: list[tuple[str, int, str, str]]) -> None:
    """A file holding `rows` in the events table as data dirs from before the payload files
    (2026-12) have it."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE events (execution_id TEXT NOT NULL, id INTEGER NOT NULL, "
        "type TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (execution_id, id)) WITHOUT ROWID"
    )
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()


KINDS = (ev.STDOUT, ev.STDERR)  # alternating kinds: every chunk is an event of its own


def make_log(registry: Registry, **kw: object) -> ExecutionLog:
    args: dict[str, object] = {"budget": 10**9, "tail_bytes": 1024, **kw}
    return ExecutionLog("ex-1", registry, **args)  # type: ignore[arg-type]


async def collect(log: ExecutionLog, after: int = 0, delay: float = 0) -> list[Event]:
    got = []
    async for event in log.follow(after):
        got.append(event)
        if delay:
            await asyncio.sleep(delay)
    return got


async def test_ids_are_consecutive_and_the_terminal_event_ends_the_stream(
    registry: CountingRegistry,
) -> None:
    log = make_log(registry)
    follower = asyncio.create_task(collect(log))
    log.emit(ev.START, {"execution_id": "ex-1", "sandbox_id": "sb"})
    for i in range(10):
        log.output(KINDS[i % 2], f"line {i}\n".encode())
        await asyncio.sleep(0)
    log.emit(ev.EXIT, {"exit_code": 0})
    got = await asyncio.wait_for(follower, 5)
    assert [e.id for e in got] == list(range(1, 13))
    assert got[-1].type == ev.EXIT and log.done.is_set()
    with pytest.raises(RuntimeError):
        log.emit(ev.STDOUT, {"text": "late"})


async def test_followers_only_see_events_already_stored(registry: CountingRegistry) -> None:
    """A client's Last-Event-ID never runs ahead of SQLite, so it survives a crash."""
    log = make_log(registry)
    seen: list[tuple[int, int]] = []

    async def watch() -> None:
        async for event in log.follow():
            seen.append((event.id, registry.last_event_id("ex-1")))

    follower = asyncio.create_task(watch())
    log.emit(ev.START, {})
    for i in range(300):
        log.output(KINDS[i % 2], f"{i}\n".encode())
        if i % 7 == 0:
            await asyncio.sleep(0.003)
    log.emit(ev.EXIT, {"exit_code": 0})
    await asyncio.wait_for(follower, 5)
    assert len(seen) == 302
    assert all(stored >= event_id for event_id, stored in seen)


async def test_writes_are_batched(registry: CountingRegistry) -> None:
    log = make_log(registry)
    for i in range(1000):
        log.output(KINDS[i % 2], f"{i}\n".encode())
    log.emit(ev.EXIT, {"exit_code": 0})
    assert registry.last_event_id("ex-1") == 1001
    assert registry.commits <= 1000 // executions.FLUSH_EVENTS + 2


async def test_a_lone_event_is_flushed_by_the_timer(registry: CountingRegistry) -> None:
    log = make_log(registry)
    follower = asyncio.create_task(collect(log))
    log.output(ev.STDOUT, b"hello")
    await asyncio.sleep(executions.FLUSH_SECONDS * 3)
    assert registry.last_event_id("ex-1") == 1
    log.emit(ev.EXIT, {"exit_code": 0})
    assert [e.type for e in await follower] == [ev.STDOUT, ev.EXIT]


async def test_many_followers_each_get_every_event_once_in_order(
    registry: CountingRegistry,
) -> None:
    log = make_log(registry)
    fast = [asyncio.create_task(collect(log)) for _ in range(3)]
    slow = asyncio.create_task(collect(log, delay=0.0005))
    chunk = b"x" * 8192
    for i in range(2000):  # 16 MB: far more than the window, so `slow` falls behind it
        if i == 1600:
            late = asyncio.create_task(collect(log, after=1000))
        log.output(ev.STDOUT if i % 3 else ev.STDERR, chunk)
        if i % 50 == 0:
            await asyncio.sleep(0)
    log.emit(ev.EXIT, {"exit_code": 0})
    results = await asyncio.wait_for(asyncio.gather(*fast, slow, late), 60)
    assert log.terminal is not None
    last = log.terminal.id
    stored = [e async for e in replay(registry, "ex-1")]
    assert [e.id for e in stored] == list(range(1, last + 1))
    for got in results[:-1]:
        assert got == stored
    assert len(stored) > 1200 and results[-1] == stored[1000:]
    assert sum(len(e.data.get("text", "")) for e in stored) == 2000 * len(chunk)


async def test_memory_stays_bounded_under_a_flood(registry: CountingRegistry) -> None:
    log = make_log(registry)
    follower = asyncio.create_task(collect(log))
    peak = 0
    for _ in range(3000):  # 192 MB through the log
        log.output(ev.STDOUT, b"y" * 65536)
        peak = max(peak, log._window_bytes)  # pending events are in the window too
        await asyncio.sleep(0)
    log.emit(ev.EXIT, {"exit_code": 0})
    got = await asyncio.wait_for(follower, 60)
    assert sum(len(e.data.get("text", "")) for e in got) == 3000 * 65536
    bound = executions.WINDOW_BYTES + executions.FLUSH_BYTES + 65536 + 64
    assert peak <= bound, peak
    assert len(log._window) <= executions.WINDOW_EVENTS


async def test_without_persistence_events_stay_until_every_follower_read_them(
    registry: CountingRegistry,
) -> None:
    log = make_log(registry, persist=False)
    slow = asyncio.create_task(collect(log, delay=0.001))
    await asyncio.sleep(0)
    for _ in range(200):
        log.output(ev.STDOUT, b"z" * 65536)  # 12.5 MB, six times the window
    log.emit(ev.EXIT, {"exit_code": 0})
    got = await asyncio.wait_for(slow, 30)
    assert [e.id for e in got] == list(range(1, 202))
    assert registry.commits == 0 and registry.last_event_id("ex-1") == 0
    # Nobody follows now: the window shrinks back to its bound on the next event.
    log2 = make_log(registry, persist=False)
    for _ in range(200):
        log2.output(ev.STDOUT, b"z" * 65536)
    assert log2._window_bytes <= executions.WINDOW_BYTES + 65536 + 64


async def test_replay_after_the_end_matches_the_live_stream(registry: CountingRegistry) -> None:
    log = make_log(registry)
    live = asyncio.create_task(collect(log))
    for i in range(100):
        log.output(KINDS[i % 2], f"{i}\n".encode())
    log.emit(ev.EXIT, {"exit_code": 0})
    events = await live
    assert [e async for e in replay(registry, "ex-1")] == events
    assert [e async for e in replay(registry, "ex-1", after=95)] == events[95:]
    assert [e async for e in replay(registry, "ex-1", after=101)] == []


async def test_utf8_split_across_chunks_and_invalid_bytes(registry: CountingRegistry) -> None:
    log = make_log(registry)
    data = "héllo ✓ wörld".encode()
    for i in range(len(data)):
        log.output(ev.STDOUT, data[i : i + 1])
    log.output(ev.STDERR, b"bad \xff")
    log.output(ev.STDERR, b"\xe2\x9c")  # an unfinished character at the end
    log.close_output()
    log.emit(ev.EXIT, {"exit_code": 0})
    events = [e async for e in replay(registry, "ex-1")]
    out = "".join(e.data["text"] for e in events if e.type == ev.STDOUT)
    err = "".join(e.data["text"] for e in events if e.type == ev.STDERR)
    assert out == "héllo ✓ wörld"
    assert err == "bad \ufffd\ufffd"


async def test_budget_keeps_head_one_truncated_event_and_the_tail(
    registry: CountingRegistry,
) -> None:
    log = make_log(registry, budget=1000, tail_bytes=300)
    written = "".join(f"{i:04d}\n" for i in range(400))  # 2000 bytes
    for i in range(400):
        log.output(ev.STDOUT, f"{i:04d}\n".encode())
    log.output(ev.STDERR, b"E" * 100)
    log.close_output()
    log.emit(ev.EXIT, {"exit_code": 0, "truncated": log.budget.truncated})
    events = [e async for e in replay(registry, "ex-1")]
    kinds = [e.type for e in events]
    assert kinds.count(ev.TRUNCATED) == 1
    cut = kinds.index(ev.TRUNCATED)
    head = "".join(e.data["text"] for e in events[:cut] if e.type == ev.STDOUT)
    assert head == written[:1000]
    tail = [(e.type, e.data["text"]) for e in events[cut + 1 :] if e.type in ev.OUTPUT]
    # Each stream keeps its own tail: a burst on stderr never pushes stdout's end out.
    assert "".join(t for k, t in tail if k == ev.STDOUT) == written[-300:]
    assert tail[-1] == (ev.STDERR, "E" * 100)
    # 2100 bytes written, 1000 head + 300 + 100 tail kept: only the middle is dropped.
    assert tail[0][0] == ev.STDOUT and log.budget.dropped == 700
    assert events[-1].data["truncated"] is True


def test_budget_counts_bytes_not_characters() -> None:
    budget = OutputBudget(10, 8)
    assert budget.admit(ev.STDOUT, "ééééé") == "ééééé"  # 10 bytes
    assert budget.admit(ev.STDOUT, "é") == "" and budget.truncated
    budget.admit(ev.STDOUT, "✓✓✓✓")  # 12 bytes past the budget
    kept = budget.tail()
    assert "".join(t for _, t in kept) == "✓✓"  # the last 8 bytes, whole characters only
    assert budget.dropped == 2 + 3 + 3  # "é", one check, and the check split at the cut


def test_budget_never_splits_a_character_at_the_head() -> None:
    budget = OutputBudget(5, 100)
    assert budget.admit(ev.STDOUT, "abcdé") == "abcd"
    assert budget.truncated
    assert budget.tail() == [(ev.STDOUT, "é")]


async def test_unseen_output_of_one_kind_is_coalesced_and_seen_events_never_change(
    registry: CountingRegistry,
) -> None:
    log = make_log(registry)
    received: list[tuple[int, str]] = []

    async def watch() -> None:
        async for event in log.follow():
            received.append((event.id, event.data.get("text", "")))

    follower = asyncio.create_task(watch())
    log.output(ev.STDOUT, b"out2")
    log.output(ev.STDOUT, b"\n")  # print() writes the end separately: one event still
    log.output(ev.STDERR, b"err")
    log.output(ev.STDOUT, b"a")
    await asyncio.sleep(executions.FLUSH_SECONDS * 3)  # now seen by the follower
    log.output(ev.STDOUT, b"b")  # so this must be a new event, not a change to a seen one
    log.output(ev.STDOUT, b"c" * executions.COALESCE_CHARS)  # too big to join "b"
    log.emit(ev.EXIT, {"exit_code": 0})
    await asyncio.wait_for(follower, 5)
    stored = [(e.id, e.data.get("text", "")) async for e in replay(registry, "ex-1")]
    assert received == stored
    assert [t for _, t in stored] == [
        "out2\n",
        "err",
        "a",
        "b",
        "c" * executions.COALESCE_CHARS,
        "",
    ]


async def test_the_wal_is_checkpointed_off_the_writer(registry: CountingRegistry) -> None:
    """SQLite's own checkpoint is off (it stalls the loop); a thread copies the WAL over.
    (Events under `SPILL_BYTES` stay in SQLite: these do.)"""
    log = make_log(registry)
    for i in range(1600):  # 25 MB
        log.output(KINDS[i % 2], b"w" * 16384)
    log.emit(ev.EXIT, {"exit_code": 0})
    deadline = asyncio.get_running_loop().time() + 10
    events_file = registry.path.with_name(EVENTS_FILE)
    while events_file.stat().st_size < 20 * 2**20:
        assert asyncio.get_running_loop().time() < deadline, "the WAL was never checkpointed"
        await asyncio.sleep(0.05)
    assert registry.last_event_id("ex-1") == 1601


def test_events_live_in_a_file_of_their_own_with_large_pages(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    try:
        registry.append_events("ex-1", [Event(1, ev.STDOUT, {"text": "x" * 300_000})])
        assert registry.events("ex-1")[0].data["text"] == "x" * 300_000
        tables = registry.db.execute("SELECT name FROM main.sqlite_master").fetchall()
        assert ("events",) not in tables
        assert registry.db.execute("PRAGMA log.page_size").fetchone()[0] == 64 * 1024
        assert registry.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    finally:
        registry.close()


def test_a_data_dir_from_before_the_events_file_keeps_its_events(tmp_path: Path) -> None:
    """Events stored in the registry's own file (before `events.sqlite3`) move there once;
    an interrupted move (rows in both) is finished without duplicates."""
    stdout = ("ex-1", 1, "stdout", '{"text":"a"}')
    old_events(tmp_path / "petri.sqlite3", [stdout, ("ex-1", 2, "exit", '{"exit_code":0}')])
    old_events(tmp_path / EVENTS_FILE, [stdout])  # the move got as far as one row
    for _ in range(2):  # and a second start changes nothing
        registry = Registry(tmp_path)
        try:
            assert [(e.id, e.type, e.data) for e in registry.events("ex-1")] == [
                (1, ev.STDOUT, {"text": "a"}),
                (2, ev.EXIT, {"exit_code": 0}),
            ]
            assert registry.last_event_id("ex-1") == 2
            # Stored as text then (new rows are UTF-8 bytes): sent the same way.
            sent = registry.events("ex-1")[0].sse()
            assert sent == b'id: 1\nevent: stdout\ndata: {"text":"a"}\n\n'
        finally:
            registry.close()
