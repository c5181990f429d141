"""The long-lived container of each sandbox, over a `Backend`: started with the sandbox's
hardening, replaced when it died (the workspace survives), removed with the sandbox, and the
sweep of containers no sandbox owns. Sandboxes and Runs share one `Containers`; neither
spells a container name, a label or a mount."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from .backend import (
    ROLE,
    SANDBOX,
    Backend,
    ContainerSpec,
    Mount,
    container_labels,
    container_name,
    instance_labels,
)
from .config import Settings
from .errors import NotFound
from .models import Sandbox
from .registry import Registry
from .runtimes import Runtime
from .workspace import Workspaces

log = logging.getLogger("petri.containers")
SANDBOX_ROOT = "/sandbox"  # where the workspace is mounted in every container


class Containers:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        backend: Backend,
        workspaces: Workspaces,
        runtimes: dict[str, Runtime],
        instance: str,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.workspaces = workspaces
        self.runtimes = runtimes
        self.instance = instance
        self.labels = instance_labels(instance)
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def locked(self, sandbox_id: str) -> AsyncIterator[None]:
        """The sandbox's container does not change while this is held."""
        async with self._locks.setdefault(sandbox_id, asyncio.Lock()):
            yield

    def forget(self, sandbox_id: str) -> None:
        self._locks.pop(sandbox_id, None)

    def workspace_mount(self, sandbox_id: str) -> Mount:
        return Mount(self.workspaces.get(sandbox_id).root, SANDBOX_ROOT)

    async def start(self, sandbox: Sandbox) -> str:
        """A new container for the sandbox (one of that name is replaced); its id, recorded."""
        container_id = await self.launch(sandbox)
        sandbox.container_id = container_id
        self.registry.put_sandbox(sandbox)
        return container_id

    async def launch(self, sandbox: Sandbox) -> str:
        """Start the sandbox's container (one of that name is replaced); its id, not recorded
        (the warm pool records it when a create claims it)."""
        runtime = self.runtimes[sandbox.language]
        spec = ContainerSpec.for_sandbox(
            self.settings,
            sandbox,
            name=container_name(self.instance, sandbox.id, "sandbox"),
            image=runtime.image,
            labels=container_labels(self.instance, sandbox.id, "sandbox"),
            mounts=[self.workspace_mount(sandbox.id)],
            env={**runtime.env, **sandbox.env},
        )
        await self.backend.remove_container(spec.name)
        return await self.backend.start_container(spec)  # within the backend's slots

    async def ensure(self, sandbox: Sandbox, *, trust: bool = False) -> str:
        """The sandbox's running container; a dead one is replaced, workspace intact. With
        `trust`, the recorded one without asking the engine (an inspect is ~5 ms of an exec's
        start): the exec then meets a dead one as `ContainerGone` and calls again without."""
        async with self.locked(sandbox.id):
            fresh = self.registry.get_sandbox(sandbox.id)
            if fresh is None:
                raise NotFound(f"sandbox {sandbox.id} was deleted", code="sandbox_gone")
            if fresh.container_id and trust:
                return fresh.container_id
            if fresh.container_id and await self.backend.is_running(fresh.container_id):
                return fresh.container_id
            log.info("sandbox %s has no running container; starting a new one", sandbox.id)
            return await self.start(fresh)

    async def remove(self, sandbox_id: str) -> None:
        await self.backend.remove_container(container_name(self.instance, sandbox_id, "sandbox"))

    async def sweep(self, known: set[str]) -> list[str]:
        """Remove this gateway's containers of unknown sandboxes, and every install container
        (after a restart, no install of ours runs)."""
        removed = []
        for found in await self.backend.list_containers(self.labels):
            if found.labels.get(SANDBOX) not in known or found.labels.get(ROLE) == "install":
                await self.backend.remove_container(found.id)
                removed.append(found.id)
        return removed
