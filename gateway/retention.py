"""Retention (DESIGN §11): events of finished executions are kept for
`PETRI_EVENTS_RETENTION_HOURS` and within `PETRI_EVENTS_MAX_MB`, oldest first; the execution's
record stays, and replaying it is 410 `expired`. The audit ledger has its own, longer
retention (`PETRI_AUDIT_RETENTION_DAYS`) and stays verifiable across it (`Ledger.prune`).

Each pass sizes the executions that ended since the last one (their events' bytes, read
once), so the cap is kept without summing the events table."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import UTC, datetime

from .audit import Ledger
from .config import Settings
from .registry import Registry

log = logging.getLogger("petri.retention")
SCHEMA = """
CREATE TABLE IF NOT EXISTS event_retention (
    execution_id TEXT PRIMARY KEY,
    ended_at REAL NOT NULL,
    bytes INTEGER NOT NULL,
    evicted_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_retention_by_age ON event_retention (evicted_at, ended_at);
"""


class Retention:
    def __init__(self, settings: Settings, registry: Registry, ledger: Ledger) -> None:
        self.settings = settings
        self.registry = registry
        self.ledger = ledger
        registry.ensure(SCHEMA)

    def evicted(self, execution_id: str) -> bool:
        row = self.registry.db.execute(
            "SELECT evicted_at FROM event_retention WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        return row is not None and row[0] is not None

    def run_once(self, at: float | None = None) -> list[str]:
        """One pass; the execution ids whose events were evicted."""
        at = time.time() if at is None else at
        db = self.registry.db
        with self.registry.transaction():
            db.execute(
                "INSERT INTO event_retention SELECT e.id, e.ended_at, (SELECT "
                "coalesce(sum(coalesce(v.size, length(CAST(v.data AS BLOB)))), 0) FROM events v "
                "WHERE v.execution_id = e.id), NULL FROM executions e "
                "WHERE e.status != 'running' AND e.ended_at IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM event_retention r WHERE r.execution_id = e.id)"
            )
            db.execute(
                "DELETE FROM event_retention WHERE NOT EXISTS "
                "(SELECT 1 FROM executions e WHERE e.id = event_retention.execution_id)"
            )
        victims: list[str] = []
        hours = self.settings.events_retention_hours
        if hours > 0:
            rows = db.execute(
                "SELECT execution_id FROM event_retention WHERE evicted_at IS NULL "
                "AND ended_at < ? ORDER BY ended_at",
                (at - hours * 3600,),
            ).fetchall()
            victims += [r[0] for r in rows]
        cap = int(self.settings.events_max_mb * 1024 * 1024)
        if cap > 0:
            rows = db.execute(
                "SELECT execution_id, bytes FROM event_retention WHERE evicted_at IS NULL "
                "ORDER BY ended_at"
            ).fetchall()
            total = sum(r[1] for r in rows if r[0] not in victims)
            for execution_id, size in rows:
                if total <= cap:
                    break
                if execution_id not in victims:
                    victims.append(execution_id)
                    total -= size
        if victims:
            self._evict(victims, at)
        self._prune_ledger(at)
        return victims

    def _evict(self, victims: list[str], at: float) -> None:
        db = self.registry.db
        with self.registry.transaction():
            freed = 0
            for execution_id in victims:
                row = db.execute(
                    "SELECT bytes FROM event_retention WHERE execution_id = ?", (execution_id,)
                ).fetchone()
                freed += row[0] if row else 0
                db.execute(
                    "UPDATE event_retention SET evicted_at = ? WHERE execution_id = ?",
                    (at, execution_id),
                )
            self.registry.delete_events(victims)
            self.ledger.append(
                "events.evict",
                "events",
                {
                    "executions": len(victims),
                    "bytes": freed,
                    "retention_hours": self.settings.events_retention_hours,
                    "max_mb": self.settings.events_max_mb,
                },
                tenant="system",
            )
        log.info("evicted the events of %d execution(s), %d bytes", len(victims), freed)

    def _prune_ledger(self, at: float) -> None:
        days = self.settings.audit_retention_days
        if days <= 0:
            return
        before = datetime.fromtimestamp(at - days * 86400, UTC).isoformat(timespec="microseconds")
        removed = self.ledger.prune(before.replace("+00:00", "Z"))
        if removed:
            log.info("audit retention removed %d record(s); a checkpoint anchors the rest", removed)


async def retain_forever(retention: Retention, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            retention.run_once()
        except sqlite3.Error:
            log.exception("retention pass failed; retried next round")
