"""Large event payloads in a file per execution (gateway/payloads.py), against a real SQLite
registry: what is stored where, that replay gives back the same bytes, and that no file
outlives its events or points past what was written."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import events as ev
from gateway.events import Event
from gateway.executions import ExecutionLog
from gateway.models import Execution
from gateway.payloads import SPILL_BYTES, Payloads
from gateway.registry import EVENTS_FILE, Registry
from tests.unit.test_executions import old_events

BIG = "é" * SPILL_BYTES  # past the threshold in UTF-8 bytes, not in characters only


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path)
    yield registry
    registry.close()


def batch() -> list[Event]:
    return [
        Event(1, ev.START, {"execution_id": "ex-1", "sandbox_id": "sb-1"}),
        Event(2, ev.STDOUT, {"text": BIG}),
        Event(3, ev.STDERR, {"text": "small"}),
        Event(4, ev.STDOUT, {"text": BIG + "\u2028"}),
        Event(5, ev.EXIT, {"exit_code": 0}),
    ]


def rows(registry: Registry, execution_id: str = "ex-1") -> list[tuple[int, int, int | None]]:
    return registry.db.execute(
        "SELECT id, length(data), at FROM events WHERE execution_id = ? ORDER BY id",
        (execution_id,),
    ).fetchall()


def test_large_payloads_go_to_the_file_and_replay_gives_the_same_bytes(
    registry: Registry,
) -> None:
    sent = batch()
    registry.append_events("ex-1", sent)
    stored = rows(registry)
    assert [(i, at is not None) for i, _, at in stored] == [
        (1, False),
        (2, True),
        (3, False),
        (4, True),
        (5, False),
    ]
    assert all(length == 0 for _, length, at in stored if at is not None)
    path = registry.payloads.path("ex-1")
    assert path.stat().st_size == len(sent[1].data_bytes()) + len(sent[3].data_bytes())
    assert path.stat().st_mode & 0o777 == 0o600
    for read in (registry.events("ex-1"), registry.read_events("ex-1")):
        assert [(e.id, e.type, e.data) for e in read] == [(e.id, e.type, e.data) for e in sent]
        assert [e.sse() for e in read] == [e.sse() for e in sent]
    assert [e.id for e in registry.read_events("ex-1", after=2, limit=2)] == [3, 4]
    registry.append_events("ex-1", [Event(6, ev.STDOUT, {"text": BIG})])  # appended after
    assert registry.events("ex-1", after=5)[0].data["text"] == BIG


def test_events_deleted_take_their_file_along_once_committed(registry: Registry) -> None:
    registry.append_events("ex-1", batch())
    path = registry.payloads.path("ex-1")
    with pytest.raises(RuntimeError), registry.transaction():
        registry.delete_events(["ex-1"])
        raise RuntimeError("rolled back")
    assert path.exists() and len(registry.events("ex-1")) == 5  # a refused change changes nothing
    registry.delete_events(["ex-1"])
    assert not path.exists() and registry.events("ex-1") == []


def test_a_deleted_sandbox_takes_its_executions_files_along(registry: Registry) -> None:
    for eid, sid in (("ex-1", "sb-1"), ("ex-2", "sb-2")):
        registry.put_execution(Execution(id=eid, sandbox_id=sid, argv=["true"]))
        registry.append_events(eid, batch())
    registry.delete_sandbox("sb-1")
    assert not registry.payloads.path("ex-1").exists()
    assert registry.payloads.path("ex-2").exists() and len(registry.events("ex-2")) == 5


def test_a_restart_removes_files_no_event_points_into(tmp_path: Path) -> None:
    """A crash between a file's write and its rows' commit leaves bytes no row names."""
    registry = Registry(tmp_path)
    registry.append_events("ex-1", batch())
    registry.payloads.append("ex-9", [b'{"text":"never committed"}'])
    registry.close()
    registry = Registry(tmp_path)
    try:
        assert registry.payloads.stored() == ["ex-1"]
        assert len(registry.events("ex-1")) == 5
    finally:
        registry.close()


def test_a_payload_cut_short_is_skipped_not_fatal(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """After a power loss a row may outlive its bytes: replay logs it and goes on."""
    sent = batch()
    registry.append_events("ex-1", sent)
    with registry.payloads.path("ex-1").open("r+b") as f:
        f.truncate(len(sent[1].data_bytes()) + 10)  # the second payload is cut short
    with caplog.at_level(logging.WARNING, "petri.payloads"):
        assert [e.id for e in registry.read_events("ex-1")] == [1, 2, 3, 5]
    assert "cut short" in caplog.text
    registry.payloads.path("ex-1").unlink()
    assert [e.id for e in registry.events("ex-1")] == [1, 3, 5]


def test_an_events_table_from_before_gets_the_columns(tmp_path: Path) -> None:
    old_events(tmp_path / EVENTS_FILE, [("ex-0", 1, "stdout", '{"text":"old"}')])
    for _ in range(2):  # and a second start changes nothing
        registry = Registry(tmp_path)
        try:
            registry.append_events("ex-1", batch())
            assert registry.events("ex-0")[0].data == {"text": "old"}
            assert [e.data for e in registry.events("ex-1")] == [e.data for e in batch()]
            registry.delete_events(["ex-1"])
        finally:
            registry.close()


@pytest.mark.parametrize("bad", ["../ex-1", "ex/1", "", ".", "ex-1\x00", "a" * 65])
def test_only_execution_ids_name_a_file(tmp_path: Path, bad: str) -> None:
    payloads = Payloads(tmp_path)
    with pytest.raises(ValueError):
        payloads.path(bad)
    payloads.remove([bad])  # ignored, never a path
    with payloads.reader() as files:
        assert files.read(bad, 0, 1) is None
    assert list(tmp_path.iterdir()) == [tmp_path / "payloads"]


def test_a_symlink_in_place_of_a_file_is_never_followed(tmp_path: Path) -> None:
    payloads = Payloads(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"secret")
    payloads.path("ex-1").symlink_to(target)
    with pytest.raises(OSError):
        payloads.append("ex-1", [b"x"])
    with payloads.reader() as files:
        assert files.read("ex-1", 0, 6) is None
    assert target.read_bytes() == b"secret"


async def test_a_full_disk_never_stops_the_live_stream(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The payload file cannot be written (ENOSPC): the batch is logged and skipped, the
    live follower still gets every event once, in order, and later batches are stored."""
    def full(execution_id: str, payloads: object) -> list[int]:
        raise OSError(errno.ENOSPC, "No space left on device")

    log = ExecutionLog("ex-1", registry, budget=10**9, tail_bytes=1024)
    got: list[Event] = []

    async def follow() -> None:
        async for event in log.follow():
            got.append(event)

    follower = asyncio.create_task(follow())
    with monkeypatch.context() as m, caplog.at_level(logging.ERROR, "petri.executions"):
        m.setattr(registry.payloads, "append", full)
        log.output(ev.STDOUT, b"x" * (SPILL_BYTES + 1))
        log.flush()
    assert "could not store events of ex-1" in caplog.text
    log.output(ev.STDERR, b"y" * (SPILL_BYTES + 1))
    log.emit(ev.EXIT, {"exit_code": 0})
    await asyncio.wait_for(follower, 5)
    assert [(e.id, e.type) for e in got] == [(1, ev.STDOUT), (2, ev.STDERR), (3, ev.EXIT)]
    assert [e.id for e in registry.events("ex-1")] == [2, 3]  # the refused batch is not stored
    assert not any(r[2] is not None and r[0] == 1 for r in rows(registry))


def test_a_file_that_cannot_be_removed_or_synced_is_logged_not_raised(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the deletion commits, a file that will not go (here a folder in its place) is
    logged; the deletion stands. The checkpoint thread's fsync meets a link: logged too."""
    registry.append_events("ex-1", batch())
    path = registry.payloads.path("ex-1")
    path.unlink()
    path.mkdir()
    with caplog.at_level(logging.WARNING, "petri.payloads"):
        registry.delete_events(["ex-1"])
    assert registry.events("ex-1") == [] and "could not remove" in caplog.text
    path.rmdir()
    path.symlink_to(registry.path)
    registry.payloads._unsynced.add("ex-1")
    with caplog.at_level(logging.WARNING, "petri.payloads"):
        registry.payloads.sync()
    assert "could not fsync" in caplog.text
