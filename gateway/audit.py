"""The audit ledger (DESIGN §11): an append-only, hash-chained table in the registry's SQLite.

Each record is `{seq, at, tenant, key_id, action, target, detail, metadata, prev_hash, hash}`
with `hash = sha256(prev_hash + canonical JSON of the record without hash)`; canonical JSON
is sorted keys, no spaces, UTF-8 (`canonical()`), `seq` counts from 1 without gaps and the
first `prev_hash` is 64 zeros. A change the registry holds (a sandbox, an execution, a secret,
a key) is appended in the same SQLite transaction as the change, so a crash keeps both or
neither. Requests that change only files (uploads, deletes) or nothing stored (kills) are
recorded by `RequestRecorder` once they succeeded.

Retention (`prune`) removes the oldest records and leaves a checkpoint in the place of the
last one removed: it holds that record's `hash`, which the first kept record chains to, so
the ledger still verifies from the checkpoint on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import auth
from .auth import Principal
from .registry import Registry

log = logging.getLogger("petri.audit")
GENESIS = "0" * 64
CHECKPOINT = "ledger.checkpoint"
FIELDS = (
    "seq", "at", "tenant", "key_id", "action", "target", "detail", "metadata", "prev_hash", "hash"
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    metadata TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit (target, action);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, seq);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
"""
# Deleting is for `prune` alone: it drops this trigger inside its own transaction.
NO_DELETE = """
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
"""
POLL_SECONDS = 1.0  # a tail also picks up records other processes appended (`petri keys`)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256((prev_hash + canonical(body)).encode()).hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(FIELDS, row, strict=True))
    record["detail"] = json.loads(record["detail"])
    record["metadata"] = json.loads(record["metadata"])
    return record


@dataclass(slots=True)
class _Note:
    """Per request: whether the domain appended a record for it already."""

    recorded: bool = False
    tenant: str | None = None  # the owner of what the request touched (`touches`)


_request: ContextVar[_Note | None] = ContextVar("petri_audit_request", default=None)


def touches(tenant: str) -> None:
    """The request at hand acts on an object of `tenant` (its fallback record goes there)."""
    note = _request.get()
    if note is not None:
        note.tenant = tenant


class Ledger:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        registry.ensure(SCHEMA + NO_DELETE)
        self._wake: asyncio.Event | None = None

    def append(
        self,
        action: str,
        target: str,
        detail: dict[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        tenant: str | None = None,
        principal: Principal | None = None,
    ) -> dict[str, Any]:
        """Append one record; within an open `registry.transaction()` it commits with it.
        `tenant` is whose record it is (the owner of the target); the key is the caller's."""
        who = principal or auth.acting() or auth.SYSTEM
        with self.registry.transaction() as db:
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            record = {
                "seq": seq,
                "at": _now_iso(),
                "tenant": tenant or who.tenant,
                "key_id": who.key_id,
                "action": action,
                "target": target,
                "detail": detail,
                "metadata": metadata or {},
                "prev_hash": prev,
            }
            record["hash"] = chain_hash(prev, record)
            db.execute(
                "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    record["at"],
                    record["tenant"],
                    record["key_id"],
                    action,
                    target,
                    canonical(detail),
                    canonical(record["metadata"]),
                    prev,
                    record["hash"],
                ),
            )
        note = _request.get()
        if note is not None:
            note.recorded = True
        if self._wake is not None:  # followers wait on the old event; new ones get a new one
            self._wake.set()
            self._wake = asyncio.Event()
        return record

    def find(self, action: str, target: str) -> dict[str, Any] | None:
        row = self.registry.db.execute(
            f"SELECT {', '.join(FIELDS)} FROM audit WHERE target = ? AND action = ? "
            "ORDER BY seq DESC LIMIT 1",
            (target, action),
        ).fetchone()
        return _record(row) if row else None

    def page(self, principal: Principal, *, after: int, limit: int) -> list[dict[str, Any]]:
        """Records after `after` that `principal` may see (its tenant's; all for an admin)."""
        tenant = None if principal.admin else principal.tenant
        rows = self.registry.db.execute(
            f"SELECT {', '.join(FIELDS)} FROM audit WHERE seq > ? AND (? IS NULL OR tenant = ?) "
            "ORDER BY seq LIMIT ?",
            (after, tenant, tenant, limit),
        ).fetchall()
        return [_record(r) for r in rows]

    async def follow(self, principal: Principal, after: int) -> AsyncIterator[dict[str, Any]]:
        """Every visible record after `after`, then each new one as it is appended."""
        if self._wake is None:
            self._wake = asyncio.Event()
        cursor = after
        while True:
            wake = self._wake
            batch = self.page(principal, after=cursor, limit=200)
            for record in batch:
                yield record
                cursor = record["seq"]
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_SECONDS)

    def prune(self, before: str) -> int:
        """Remove records older than `before` (ISO time), but never the newest; the last one
        removed is replaced by a checkpoint holding its hash. Returns how many went."""
        with self.registry.transaction() as db:
            newest = db.execute("SELECT max(seq) FROM audit").fetchone()[0]
            row = db.execute(
                "SELECT max(seq) FROM audit WHERE at < ? AND seq < ?", (before, newest or 0)
            ).fetchone()
            through = row[0]
            if through is None:
                return 0
            first = db.execute("SELECT min(seq) FROM audit").fetchone()[0]
            anchor = db.execute("SELECT at, hash FROM audit WHERE seq = ?", (through,)).fetchone()
            if through == first and _is_checkpoint(db, through):
                return 0
            removed = int(
                db.execute(
                    "SELECT count(*) FROM audit WHERE seq <= ? AND action != ?",
                    (through, CHECKPOINT),
                ).fetchone()[0]
            )
            db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
            db.execute("DELETE FROM audit WHERE seq <= ?", (through,))
            detail = {"through_seq": through, "removed": removed, "before": before}
            db.execute(
                "INSERT INTO audit VALUES (?, ?, 'system', NULL, ?, '', ?, '{}', '', ?)",
                (through, anchor[0], CHECKPOINT, canonical(detail), anchor[1]),
            )
            db.execute(NO_DELETE)
        return removed


def _is_checkpoint(db: sqlite3.Connection, seq: int) -> bool:
    row = db.execute("SELECT action FROM audit WHERE seq = ?", (seq,)).fetchone()
    return row is not None and row[0] == CHECKPOINT


# --- verification and export: also used by `petri audit` against a data dir ---------------


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    records: int
    head: str
    bad_seq: int | None = None
    reason: str = ""


def rows(db: sqlite3.Connection, after: int = 0) -> Iterator[dict[str, Any]]:
    cursor = after
    while True:
        batch = db.execute(
            f"SELECT {', '.join(FIELDS)} FROM audit WHERE seq > ? ORDER BY seq LIMIT 1000",
            (cursor,),
        ).fetchall()
        if not batch:
            return
        for row in batch:
            yield _record(row)
        cursor = batch[-1][0]


def verify(db: sqlite3.Connection) -> Verdict:
    """Walk the chain; the first record that does not chain is named. A checkpoint may stand
    only first (where retention left it)."""
    prev: str | None = None
    last_seq = 0
    count = 0
    for record in rows(db):
        seq = record["seq"]
        count += 1
        if prev is None:
            if record["action"] == CHECKPOINT:
                prev, last_seq = record["hash"], seq
                continue
            if seq != 1 or record["prev_hash"] != GENESIS:
                return Verdict(
                    False, count, "", seq,
                    "the ledger does not start at record 1 or a checkpoint: records before "
                    "it were removed",
                )
        elif seq != last_seq + 1:
            missing = f"records {last_seq + 1}..{seq - 1} are missing"
            return Verdict(False, count, prev or "", seq, missing)
        if record["action"] == CHECKPOINT:
            return Verdict(False, count, prev or "", seq, "a checkpoint amid the ledger")
        if record["prev_hash"] != (prev if prev is not None else GENESIS):
            return Verdict(
                False, count, prev or "", seq,
                "prev_hash is not the previous record's hash (reordered or replaced)",
            )
        if chain_hash(record["prev_hash"], record) != record["hash"]:
            return Verdict(False, count, prev or "", seq, "hash does not match the record")
        prev, last_seq = record["hash"], seq
    return Verdict(True, count, prev or GENESIS)


def export(db: sqlite3.Connection, after: int = 0) -> Iterator[str]:
    """The ledger as JSON lines (for a SIEM): one record a line, in order."""
    for record in rows(db, after):
        yield canonical(record)


# --- requests that change files or nothing stored: recorded once they succeeded -------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestRecorder:
    """Appends `http <METHOD> <route>` for a successful state-changing request that the
    domain did not record itself (a file written, an execution killed). Not in the same
    transaction as a file write: a crash between the two can lose that one record."""

    def __init__(self, app: ASGIApp, ledger: Callable[[Scope], Ledger | None]) -> None:
        self.app = app
        self.ledger = ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES or auth.acting() is None:
            await self.app(scope, receive, send)
            return
        note = _Note()
        token = _request.set(note)
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            _request.reset(token)
            ledger = self.ledger(scope)
            if ledger is not None and 200 <= status < 400 and not note.recorded:
                self._record(ledger, scope, status, note.tenant)

    @staticmethod
    def _record(ledger: Ledger, scope: Scope, status: int, tenant: str | None) -> None:
        route = getattr(scope.get("route"), "path", scope["path"])
        params = {k: str(v)[:256] for k, v in dict(scope.get("path_params") or {}).items()}
        target = params.get("sid") or params.get("name") or scope["path"][:256]
        try:
            ledger.append(
                f"http {scope['method']} {route}",
                target,
                {"status": status, "params": params},
                tenant=tenant,
            )
        except sqlite3.Error:
            log.exception("could not append the audit record of %s %s", scope["method"], route)
