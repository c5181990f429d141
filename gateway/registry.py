"""SQLite (WAL) registry: sandboxes, executions and their events.

Events live in a file of their own (`events.sqlite3`, attached as `log`) with 64 KiB pages:
a stream's output is most of what is ever written, in rows of up to 256 KiB, and with the
registry's 4 KiB pages storing them cost ~3x the CPU (a page write per 4 KiB, twice: WAL
and checkpoint). The registry's small rows keep small pages. Both files are one connection,
so queries name `events` as before. Payloads of `SPILL_BYTES` or more are not in SQLite at
all: their rows point into the execution's append-only file (payloads.py).

Calls are short and run on the event loop's thread; event writes arrive in batches from
`executions`, so one commit carries many events. Replay pages (`read_events`) are read in
a thread of their own (`reads`), on a connection of their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .events import Event
from .models import Execution, Limits, Sandbox, Service
from .payloads import SPILL_BYTES, Payloads

log = logging.getLogger("petri.registry")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    language TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_active_at REAL NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    limits TEXT NOT NULL,
    env TEXT NOT NULL,
    container_id TEXT NOT NULL DEFAULT '',
    tenant TEXT NOT NULL DEFAULT 'default',
    secret_env TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    status TEXT NOT NULL,
    argv TEXT NOT NULL,
    created_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    timed_out INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    test INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    error_code TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_sandbox ON executions (sandbox_id, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS executions_idempotency
    ON executions (sandbox_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS log.events (
    execution_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    at INTEGER,
    size INTEGER,
    PRIMARY KEY (execution_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS services (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    command TEXT NOT NULL,
    port INTEGER NOT NULL,
    ready_path TEXT NOT NULL,
    expires_at REAL NOT NULL,
    token_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    ready_at REAL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS services_by_sandbox ON services (sandbox_id, created_at);
CREATE INDEX IF NOT EXISTS services_by_token ON services (token_hash) WHERE token_hash != '';
CREATE TABLE IF NOT EXISTS kv (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
"""

_SANDBOX_COLUMNS = (
    "id, language, status, created_at, last_active_at, ttl_seconds, limits, env, container_id, "
    "tenant, secret_env"
)
_EXEC_COLUMNS = (
    "id, sandbox_id, status, argv, created_at, ended_at, exit_code, timed_out, truncated, "
    "oom_killed, test, idempotency_key, error_code"
)


EVENTS_FILE = "events.sqlite3"
EVENTS_PAGE_SIZE = 64 * 1024
EVENTS_CACHE_KB = 512
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_BYTES = 2 * 1024 * 1024


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the registry at `path` with the events file attached as `log`."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("ATTACH DATABASE ? AS log", (str(path.with_name(EVENTS_FILE)),))
    # Event pages are written once and rarely read again soon: SQLite's default cache
    # (2 MB) of 64 KiB pages held ~30 MB more of the gateway's memory during a stream.
    db.execute(f"PRAGMA log.cache_size=-{EVENTS_CACHE_KB}")
    return db


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database (and fsyncs it) on a thread of its own, with its own
    connection: done by the writer, as SQLite's automatic checkpoint is, it stalls the event
    loop for tens of milliseconds every few MB of events."""

    def __init__(self, path: Path, before: Callable[[], None]) -> None:
        super().__init__(name="petri-checkpoint", daemon=True)
        self.path = path
        self.before = before
        self.wake = threading.Event()
        self.stopping = False

    def run(self) -> None:
        db = connect(self.path)
        try:
            while not self.stopping:
                self.wake.wait(CHECKPOINT_SECONDS)
                self.wake.clear()
                try:
                    self.before()
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # both files
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed: %s", exc)
                except Exception:  # the thread must outlive anything: the WAL grows without it
                    log.exception("WAL checkpoint failed")
        finally:
            db.close()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.join(10)


def instance_id(data_dir: Path) -> str:
    """This gateway's id, made once and kept in the data dir. Every container carries it as
    `petri.instance`, so gateways side by side (even with equal paths in separate containers)
    never sweep each other's containers."""
    path = data_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".instance-id.{os.getpid()}"
    tmp.write_text(secrets.token_hex(5))
    try:
        os.link(tmp, path)  # atomic: the first writer wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


class Registry:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "petri.sqlite3"
        self._db = connect(self.path)
        self._after_commit: list[Callable[[], None]] = []  # steps of the open transaction
        self._db.execute(f"PRAGMA log.page_size={EVENTS_PAGE_SIZE}")  # before its first table
        for schema in ("main", "log"):
            self._db.execute(f"PRAGMA {schema}.journal_mode=WAL")
            self._db.execute(f"PRAGMA {schema}.synchronous=NORMAL")
            self._db.execute(f"PRAGMA {schema}.journal_size_limit={64 * 1024 * 1024}")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # `_Checkpointer` does it
        self._migrate()
        self._db.executescript(SCHEMA)
        self._move_events()
        self.payloads = Payloads(data_dir)
        self._sweep_payloads()
        self._checkpointer = _Checkpointer(self.path, self.payloads.sync)
        self._checkpointer.start()
        self._unchecked = 0
        # Replay pages are read in worker threads, on a connection of their own (WAL: a
        # reader never waits for the writer, nor the writer for it).
        self._reader = connect(self.path)
        self._reader_lock = threading.Lock()
        # The thread replay pages are read in: one, of its own (no other work can hold it up).
        self.reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petri-replay")

    def _migrate(self) -> None:
        """Columns added since a data dir was made: its tables get them before use."""
        listed = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {r[0] for r in listed}
        if "sandboxes" in tables:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(sandboxes)")}
            added = {"tenant": "'default'", "secret_env": "'{}'"}
            for name, default in added.items():
                if name not in columns:
                    self._db.execute(
                        f"ALTER TABLE sandboxes ADD COLUMN {name} TEXT NOT NULL DEFAULT {default}"
                    )
        listed = self._db.execute("SELECT 1 FROM log.sqlite_master WHERE name = 'events'")
        if listed.fetchone() is not None:
            columns = {r[1] for r in self._db.execute("PRAGMA log.table_info(events)")}
            for name in ("at", "size"):  # where a spilled payload is (payloads.py)
                if name not in columns:
                    self._db.execute(f"ALTER TABLE log.events ADD COLUMN {name} INTEGER")

    def _move_events(self) -> None:
        """A data dir from before the events file keeps its events in the registry's own
        file: they move over once (rerun safely if the move was interrupted)."""
        listed = self._db.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'events'")
        if listed.fetchone() is None:
            return
        log.info("moving stored events into %s (once)", EVENTS_FILE)
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO log.events (execution_id, id, type, data) "
                "SELECT execution_id, id, type, data FROM main.events"
            )
            self._db.execute("DROP TABLE main.events")

    def _sweep_payloads(self) -> None:
        """Remove payload files no stored event points into (a crash between a file's
        write and its rows' commit, or events deleted by a gateway that died before it
        removed the file)."""
        orphans = [
            eid
            for eid in self.payloads.stored()
            if self._db.execute(
                "SELECT 1 FROM events WHERE execution_id = ? AND at IS NOT NULL LIMIT 1", (eid,)
            ).fetchone()
            is None
        ]
        self.payloads.remove(orphans)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for modules that own tables of their own (keys, audit, secrets):
        their writes join `transaction()`, so a change and its audit record commit together."""
        return self._db

    def ensure(self, schema: str) -> None:
        self._db.executescript(schema)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the write lock first, so another process,
        e.g. `petri keys`, cannot slip a write in between a read and the write that follows);
        nested, it joins the one open."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._after_commit.clear()
            self._db.rollback()
            raise
        self._db.commit()
        done, self._after_commit = self._after_commit, []
        for step in done:  # the change is committed: a failed step must not undo or hide it
            try:
                step()
            except Exception:
                log.exception("a step after a commit failed")

    def after_commit(self, step: Callable[[], None]) -> None:
        """Run `step` once the open transaction commits (never if it rolls back)."""
        assert self._db.in_transaction, "after_commit outside a transaction"
        self._after_commit.append(step)

    def close(self) -> None:
        self._checkpointer.stop()
        self.reads.shutdown(wait=True, cancel_futures=True)
        with self._reader_lock:
            self._reader.close()
        self.payloads.sync()  # before the rows that point into them reach the database file
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self._db.close()

    def _written(self, size: int) -> None:
        """Count bytes written; wake the checkpointer every `CHECKPOINT_BYTES`."""
        self._unchecked += size
        if self._unchecked >= CHECKPOINT_BYTES:
            self._unchecked = 0
            self._checkpointer.wake.set()

    # --- sandboxes ---------------------------------------------------------------------------

    def put_sandbox(self, s: Sandbox) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO sandboxes ({_SANDBOX_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.id,
                s.language,
                s.status,
                s.created_at,
                s.last_active_at,
                s.ttl_seconds,
                json.dumps(asdict(s.limits)),
                json.dumps(s.env),
                s.container_id,
                s.tenant,
                json.dumps(s.secret_env),
            ),
        )

    def touch_sandbox(self, sandbox_id: str, at: float) -> None:
        self._db.execute("UPDATE sandboxes SET last_active_at = ? WHERE id = ?", (at, sandbox_id))

    def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        row = self._db.execute(
            f"SELECT {_SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?", (sandbox_id,)
        ).fetchone()
        return _sandbox(row) if row else None

    def list_sandboxes(
        self, *, limit: int = -1, after: str = "", tenant: str | None = None
    ) -> list[Sandbox]:
        """Sandboxes by id; with `tenant`, only that tenant's."""
        rows = self._db.execute(
            f"SELECT {_SANDBOX_COLUMNS} FROM sandboxes WHERE id > ? AND (? IS NULL OR tenant = ?) "
            "ORDER BY id LIMIT ?",
            (after, tenant, tenant, limit),
        ).fetchall()
        return [_sandbox(r) for r in rows]

    def count_sandboxes(self, tenant: str | None = None) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM sandboxes WHERE ? IS NULL OR tenant = ?", (tenant, tenant)
        ).fetchone()
        return int(row[0])

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self.transaction():
            rows = self._db.execute("SELECT id FROM executions WHERE sandbox_id = ?", (sandbox_id,))
            self.delete_events([r[0] for r in rows])
            self._db.execute("DELETE FROM executions WHERE sandbox_id = ?", (sandbox_id,))
            self._db.execute("DELETE FROM kv WHERE scope = ?", (sandbox_id,))
            self._db.execute("DELETE FROM services WHERE sandbox_id = ?", (sandbox_id,))
            self._db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    # --- executions --------------------------------------------------------------------------

    def put_execution(self, e: Execution) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO executions ({_EXEC_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.id,
                e.sandbox_id,
                e.status,
                json.dumps(e.argv),
                e.created_at,
                e.ended_at,
                e.exit_code,
                e.timed_out,
                e.truncated,
                e.oom_killed,
                e.test,
                e.idempotency_key,
                e.error_code,
            ),
        )

    def get_execution(self, sandbox_id: str, execution_id: str) -> Execution | None:
        row = self._db.execute(
            f"SELECT {_EXEC_COLUMNS} FROM executions WHERE id = ? AND sandbox_id = ?",
            (execution_id, sandbox_id),
        ).fetchone()
        return _execution(row) if row else None

    def find_idempotent(self, sandbox_id: str, key: str) -> Execution | None:
        row = self._db.execute(
            f"SELECT {_EXEC_COLUMNS} FROM executions WHERE sandbox_id = ? AND idempotency_key = ?",
            (sandbox_id, key),
        ).fetchone()
        return _execution(row) if row else None

    def list_executions(self, sandbox_id: str, *, limit: int = 100) -> list[Execution]:
        rows = self._db.execute(
            f"SELECT {_EXEC_COLUMNS} FROM executions WHERE sandbox_id = ? "
            "ORDER BY created_at DESC LIMIT ?",
            (sandbox_id, limit),
        ).fetchall()
        return [_execution(r) for r in rows]

    def running_executions(self) -> list[Execution]:
        rows = self._db.execute(
            f"SELECT {_EXEC_COLUMNS} FROM executions WHERE status = 'running'"
        ).fetchall()
        return [_execution(r) for r in rows]

    # --- events ------------------------------------------------------------------------------

    def append_events(self, execution_id: str, events: Sequence[Event]) -> None:
        """Store a batch: large payloads in the execution's file first (payloads.py), then
        every row in one commit. Raises OSError or sqlite3.Error (e.g. a full disk)."""
        datas = [e.data_bytes() for e in events]
        spilled = [n for n, data in enumerate(datas) if len(data) >= SPILL_BYTES]
        where: dict[int, int] = {}
        if spilled:
            offsets = self.payloads.append(execution_id, [datas[n] for n in spilled])
            where = dict(zip(spilled, offsets, strict=True))
        rows = [
            (execution_id, e.id, e.type, b"", where[n], len(datas[n]))
            if n in where
            else (execution_id, e.id, e.type, datas[n], None, None)
            for n, e in enumerate(events)
        ]
        with self.transaction():
            self._db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._written(sum(len(r[3]) for r in rows))

    def delete_events(self, execution_ids: Sequence[str]) -> None:
        """Delete the executions' events, in the open transaction; their payload files go
        once it commits."""
        ids = list(execution_ids)
        with self.transaction():
            self._db.executemany("DELETE FROM events WHERE execution_id = ?", [(e,) for e in ids])
            self.after_commit(lambda: self.payloads.remove(ids))

    def events(self, execution_id: str, after: int = 0, limit: int = 500) -> list[Event]:
        return self._events(self._db, execution_id, after, limit)

    def read_events(self, execution_id: str, after: int = 0, limit: int = 500) -> list[Event]:
        """`events`, for the `reads` thread (the replay of a long run is many pages)."""
        with self._reader_lock:
            return self._events(self._reader, execution_id, after, limit)

    def _events(
        self, db: sqlite3.Connection, execution_id: str, after: int, limit: int
    ) -> list[Event]:
        rows = db.execute(
            "SELECT id, type, data, at, size FROM events WHERE execution_id = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (execution_id, after, limit),
        ).fetchall()
        out = []
        with self.payloads.reader() as files:
            for id_, type_, data, at, size in rows:
                if at is not None:
                    data = files.read(execution_id, at, size)
                    if data is None:  # lost with its file (logged): the replay goes on
                        continue
                out.append(Event(id_, type_, json.loads(data), data))
        return out

    def last_event_id(self, execution_id: str) -> int:
        row = self._db.execute(
            "SELECT max(id) FROM events WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        return int(row[0] or 0)

    # --- small per-sandbox values (install hashes, package lists) ---------------------------

    def put_value(self, scope: str, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (scope, key, json.dumps(value))
        )

    def get_value(self, scope: str, key: str) -> Any:
        row = self._db.execute(
            "SELECT value FROM kv WHERE scope = ? AND key = ?", (scope, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    # --- services (serve mode) ---------------------------------------------------------------

    def put_service(self, s: Service) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO services ({_SERVICE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.id,
                s.sandbox_id,
                s.execution_id,
                s.command,
                s.port,
                s.ready_path,
                s.expires_at,
                s.token_hash,
                s.status,
                s.created_at,
                s.ready_at,
                s.ended_at,
            ),
        )

    def update_service(self, s: Service) -> None:
        """Write a service's status and times back (a no-op once its sandbox is deleted)."""
        self._db.execute(
            "UPDATE services SET status = ?, ready_at = ?, ended_at = ? WHERE id = ?",
            (s.status, s.ready_at, s.ended_at, s.id),
        )

    def revoke_service(self, service_id: str) -> None:
        """Forget the preview token's hash: its URL is unknown (404) from now on."""
        self._db.execute("UPDATE services SET token_hash = '' WHERE id = ?", (service_id,))

    def get_service(self, sandbox_id: str, service_id: str) -> Service | None:
        row = self._db.execute(
            f"SELECT {_SERVICE_COLUMNS} FROM services WHERE id = ? AND sandbox_id = ?",
            (service_id, sandbox_id),
        ).fetchone()
        return Service(*row) if row else None

    def service_by_token(self, token_hash: str) -> Service | None:
        row = self._db.execute(
            f"SELECT {_SERVICE_COLUMNS} FROM services WHERE token_hash = ? AND token_hash != ''",
            (token_hash,),
        ).fetchone()
        return Service(*row) if row else None

    def service_exists(self, service_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM services WHERE id = ?", (service_id,)).fetchone()
        return row is not None

    def list_services(self, sandbox_id: str) -> list[Service]:
        rows = self._db.execute(
            f"SELECT {_SERVICE_COLUMNS} FROM services WHERE sandbox_id = ? ORDER BY created_at",
            (sandbox_id,),
        ).fetchall()
        return [Service(*r) for r in rows]

    def live_services(self) -> list[Service]:
        rows = self._db.execute(
            f"SELECT {_SERVICE_COLUMNS} FROM services WHERE status IN ('starting', 'ready')"
        ).fetchall()
        return [Service(*r) for r in rows]


_SERVICE_COLUMNS = (
    "id, sandbox_id, execution_id, command, port, ready_path, expires_at, token_hash, status, "
    "created_at, ready_at, ended_at"
)


def _sandbox(row: Iterable[Any]) -> Sandbox:
    (id_, language, status, created, active, ttl, limits, env, container, tenant, secret_env) = row
    return Sandbox(
        id_,
        language,
        status,
        created,
        active,
        ttl,
        Limits(**json.loads(limits)),
        json.loads(env),
        container,
        tenant,
        json.loads(secret_env),
    )


def _execution(row: Iterable[Any]) -> Execution:
    (
        id_,
        sandbox_id,
        status,
        argv,
        created,
        ended,
        code,
        timed_out,
        truncated,
        oom,
        test,
        key,
        error_code,
    ) = row
    return Execution(
        id_,
        sandbox_id,
        json.loads(argv),
        status,
        created,
        ended,
        code,
        bool(timed_out),
        bool(truncated),
        bool(oom),
        bool(test),
        key,
        error_code,
    )
