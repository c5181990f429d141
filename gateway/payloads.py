"""Large event payloads, in one append-only file per execution (`<data dir>/payloads/`).

A stream's output is most of what the gateway ever stores. Written into SQLite, each byte
was written twice (the WAL, then the checkpoint into the database), page by page, on the
event loop's thread: over half of the gateway's CPU for a 64 MiB stream. Here a batch of
large payloads is one `write` at the end of the execution's file; the event's row in SQLite
keeps its id, type and where its bytes are (`at`, `size`), and is committed after the bytes
are written, so a row never points past what a crashed gateway left. Small events stay
inline in their rows (most executions never make a file).

Bytes a crash left without a row are never read; files of executions that have no spilled
rows any more are removed at start-up (`Registry._sweep_payloads`). Before each WAL
checkpoint the checkpoint thread fsyncs the files written since the last one (`sync`), so
rows that reach the database file find their bytes after a power loss too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("petri.payloads")
FOLDER = "payloads"
SPILL_BYTES = 32 * 1024  # an event's JSON from this size on goes to the file
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class Payloads:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / FOLDER
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self._unsynced: set[str] = set()
        self._lock = threading.Lock()

    def path(self, execution_id: str) -> Path:
        if not _ID.fullmatch(execution_id):  # ids are made by the gateway: never a path
            raise ValueError(f"not an execution id: {execution_id!r}")
        return self.folder / f"{execution_id}.out"

    def append(self, execution_id: str, payloads: Sequence[bytes]) -> list[int]:
        """Write `payloads` at the end of the execution's file, in one go; their offsets."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path(execution_id), flags, 0o600)
        try:
            at = os.fstat(fd).st_size
            offsets = []
            for payload in payloads:
                offsets.append(at)
                at += len(payload)
            _write_all(fd, payloads)
        finally:
            os.close(fd)
        with self._lock:
            self._unsynced.add(execution_id)
        return offsets

    def reader(self) -> _Reader:
        """Reads for one page of events: each file opened once, closed at the end."""
        return _Reader(self)

    def remove(self, execution_ids: Iterable[str]) -> None:
        """Remove the executions' files; one that cannot go is logged, never raised."""
        for execution_id in execution_ids:
            try:
                self.path(execution_id).unlink()
            except (FileNotFoundError, ValueError):
                pass
            except OSError as exc:
                log.warning("could not remove the payloads of %s: %s", execution_id, exc)

    def sync(self) -> None:
        """fsync the files written since the last call (the checkpoint thread calls it)."""
        with self._lock:
            written, self._unsynced = self._unsynced, set()
        for execution_id in written:
            try:
                fd = os.open(self.path(execution_id), _READ)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except FileNotFoundError:  # removed meanwhile
                pass
            except (OSError, ValueError) as exc:
                log.warning("could not fsync the payloads of %s: %s", execution_id, exc)

    def stored(self) -> list[str]:
        """The execution ids that have a file."""
        return [p.name.removesuffix(".out") for p in self.folder.glob("*.out")]


class _Reader:
    def __init__(self, payloads: Payloads) -> None:
        self.payloads = payloads
        self._open: dict[str, int] = {}

    def read(self, execution_id: str, at: int, size: int) -> bytes | None:
        """The payload's bytes; None when they are gone (the file removed or cut short)."""
        fd = self._open.get(execution_id)
        try:
            if fd is None:
                fd = os.open(self.payloads.path(execution_id), _READ)
                self._open[execution_id] = fd
            data = os.pread(fd, size, at)
        except (OSError, ValueError) as exc:
            log.warning("payload of %s at %d unreadable: %s", execution_id, at, exc)
            return None
        if len(data) != size:
            log.warning("payload of %s at %d cut short", execution_id, at)
            return None
        return data

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    if len(chunks) > 256:  # within any system's IOV_MAX
        chunks = [b"".join(chunks)]
    total = sum(len(c) for c in chunks)
    done = os.writev(fd, chunks)
    if done < total:  # a short write (rare on a regular file): the rest, byte exact
        rest = memoryview(b"".join(chunks))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]
