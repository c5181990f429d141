"""Wires the parts of one gateway together: registry, runner, workspaces, sandboxes, reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from . import auth
from .backend import Backend
from .config import Settings
from .errors import PetriError
from .installer import ContainerInstaller
from .pool import Pool, sizes_for
from .reaper import reap_forever
from .registry import Registry, instance_id
from .retention import retain_forever
from .runner import Runner
from .runtimes import load_runtimes
from .sandboxes import Sandboxes
from .teams import Teams
from .workspace import Workspaces

log = logging.getLogger("petri")


@contextlib.asynccontextmanager
async def open_gateway(
    settings: Settings, backend: Backend | None = None
) -> AsyncIterator[Sandboxes]:
    """The gateway's domain, over Docker (`runner.Runner`) unless another `backend` is given
    (tests: an in-memory one, tests/fake_backend.py)."""
    registry = Registry(settings.data_dir)
    teams = Teams.open(settings, registry)
    try:
        teams.check_exposure()
    except BaseException:
        registry.close()
        raise
    # What the gateway does by itself (recovery, the reaper, retention) acts as `SYSTEM`;
    # requests run in tasks of their own, each with the principal its key gave (auth.Gate).
    with auth.acting_as(auth.SYSTEM):
        async with _serve(settings, registry, teams, backend) as sandboxes:
            yield sandboxes


@contextlib.asynccontextmanager
async def _serve(
    settings: Settings, registry: Registry, teams: Teams, backend: Backend | None
) -> AsyncIterator[Sandboxes]:
    if backend is None:
        backend = Runner(settings.docker_url, settings.max_concurrent_starts)
    workspaces = Workspaces(settings.workspace_root, settings.uid, settings.gid)
    installer = ContainerInstaller(
        settings, registry, backend, workspaces, instance_id(settings.data_dir)
    )
    sandboxes = Sandboxes(
        settings,
        registry,
        backend,
        workspaces,
        load_runtimes(settings.runtimes_dir),
        installer,
        teams,
    )
    pool = Pool(
        settings, sizes_for(settings, sandboxes.runtimes), sandboxes, settings.data_dir / "pool"
    )
    sandboxes.pool = pool
    teams.metrics.pool_size.set_function(lambda: float(sum(pool.ready().values())))
    try:
        await sandboxes.recover()  # the orphan sweep takes a killed run's pool containers
    except PetriError as exc:
        log.warning("start-up recovery incomplete (%s); continuing", exc.message)
    await pool.sweep()  # and this their workspaces (it raises nothing)
    pool.start()
    await installer.start()  # the egress proxy's socket directory
    reaper = asyncio.create_task(reap_forever(sandboxes, settings.reaper_interval_seconds))
    retention = asyncio.create_task(
        retain_forever(teams.retention, settings.reaper_interval_seconds)
    )
    try:
        yield sandboxes
    finally:
        for task in (reaper, retention):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
        await sandboxes.shutdown()
        await installer.close()
        await backend.close()
        registry.close()

