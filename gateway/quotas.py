"""Per-tenant quotas (DESIGN §11): live sandboxes and running executions. Over one: 429
`quota_exceeded` with `Retry-After`. Checks and reservations happen without an await in
between, so a burst of requests cannot overshoot a quota."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from .config import Settings
from .errors import QuotaExceeded
from .registry import Registry

SANDBOX_RETRY_SECONDS = 30  # sandboxes go when deleted or idle past their TTL
RUNNING_RETRY_SECONDS = 5  # executions end within seconds to minutes


class Quotas:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._creating: Counter[str] = Counter()  # sandboxes being created, per tenant

    @contextlib.contextmanager
    def sandbox(self, tenant: str) -> Iterator[None]:
        """Hold one of `tenant`'s sandbox slots while it is created (until its row exists)."""
        most = self.settings.tenant_max_sandboxes
        if most and self.registry.count_sandboxes(tenant) + self._creating[tenant] >= most:
            raise QuotaExceeded(
                f"tenant {tenant!r} may hold at most {most} sandboxes (PETRI_TENANT_MAX_SANDBOXES)"
                "; delete one or wait for one to expire",
                retry_after=SANDBOX_RETRY_SECONDS,
            )
        self._creating[tenant] += 1
        try:
            yield
        finally:
            self._creating[tenant] -= 1
            if self._creating[tenant] <= 0:
                del self._creating[tenant]

    def execution(self, tenant: str) -> None:
        """Refuse a new execution when `tenant` runs its quota already."""
        most = self.settings.tenant_max_running
        if not most:
            return
        running = self.registry.db.execute(
            "SELECT count(*) FROM executions e JOIN sandboxes s ON s.id = e.sandbox_id "
            "WHERE e.status = 'running' AND s.tenant = ?",
            (tenant,),
        ).fetchone()[0]
        if running >= most:
            raise QuotaExceeded(
                f"tenant {tenant!r} may run at most {most} executions at once "
                "(PETRI_TENANT_MAX_RUNNING)",
                retry_after=RUNNING_RETRY_SECONDS,
            )
