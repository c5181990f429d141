"""Wires the parts of one gateway together: registry, runner, workspaces, sandboxes, reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from .config import Settings
from .errors import PetriError
from .installer import ContainerInstaller
from .reaper import reap_forever
from .registry import Registry
from .runner import Runner
from .runtimes import load_runtimes
from .sandboxes import Sandboxes
from .workspace import Workspaces

log = logging.getLogger("petri")


@contextlib.asynccontextmanager
async def open_gateway(settings: Settings) -> AsyncIterator[Sandboxes]:
    registry = Registry(settings.data_dir)
    runner = Runner(settings.docker_url, settings.max_concurrent_starts)
    workspaces = Workspaces(settings.workspace_root, settings.uid, settings.gid)
    installer = make_installer(settings, registry, runner, workspaces)
    sandboxes = Sandboxes(
        settings,
        registry,
        runner,
        workspaces,
        load_runtimes(settings.runtimes_dir),
        installer,
    )
    installer.labels = dict(sandboxes.labels)  # install containers are swept like the rest
    try:
        await sandboxes.recover()
    except PetriError as exc:
        log.warning("start-up recovery incomplete (%s); continuing", exc.message)
    await installer.start()  # the egress proxy's socket directory
    reaper = asyncio.create_task(reap_forever(sandboxes, settings.reaper_interval_seconds))
    try:
        yield sandboxes
    finally:
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await sandboxes.shutdown()
        await installer.close()
        await runner.close()
        registry.close()


def make_installer(
    settings: Settings, registry: Registry, runner: Runner, workspaces: Workspaces
) -> ContainerInstaller:
    return ContainerInstaller(settings, registry, runner, workspaces)
