"""`sb.services`: long-running processes the gateway exposes at a preview URL (serve mode)."""

from __future__ import annotations

import builtins
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING, Any

from .._base import quoted, seconds
from ..errors import ServiceFailed, ServiceNotFound
from ..events import ReadyEvent
from ..executions import Collector, OutputCallback
from ..records import Service
from . import _io

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox


class AsyncServices:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    @property
    def _path(self) -> str:
        return f"{self._sandbox.path}/services"

    async def start(
        self,
        command: str,
        port: int,
        *,
        ready_path: str | None = None,
        ready_timeout: float | None = None,
        preview_ttl: float | None = None,
        wait: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Service:
        """Start `command` (it must listen on `port`) and return once it answers HTTP there
        (`wait=False`: at once, status "starting"). A service that exits or never answers
        raises `ServiceFailed`, whose `execution` holds its output."""
        body: dict[str, Any] = {"command": command, "port": port}
        if ready_path is not None:
            body["ready_path"] = ready_path
        if ready_timeout is not None:
            body["ready_timeout_seconds"] = seconds(ready_timeout)
        if preview_ttl is not None:
            body["preview_ttl_seconds"] = seconds(preview_ttl)
        service = Service.from_json(await self._sandbox.client.json("POST", self._path, json=body))
        if not wait:
            return service
        collector = Collector(on_stdout=on_stdout, on_stderr=on_stderr)
        client = self._sandbox.client
        try:
            async with aclosing(client.follow(self._sandbox.id, service.execution_id)) as events:
                async for event in events:
                    for fn, arg in collector.add(event):
                        await _io.call(fn, arg)
                    if isinstance(event, ReadyEvent):
                        return await self.get(service.id)
        except BaseException:
            # Cancelled, interrupted, a callback raised or the stream broke: the caller never
            # gets the Service, so nothing else could stop it. Stop it, then re-raise.
            with suppress(Exception):
                await self.stop(service.id)
            raise
        execution = collector.result()
        why = execution.error.message if execution.error else f"exit code {execution.exit_code}"
        code = execution.error.code if execution.error else "service_exited"
        exc = ServiceFailed(f"service {service.id} ended before it was ready: {why}", code=code)
        exc.execution = execution
        raise exc

    async def list(self) -> builtins.list[Service]:
        answer = await self._sandbox.client.json("GET", self._path)
        return [Service.from_json(s) for s in answer.get("services", [])]

    async def get(self, service_id: str) -> Service:
        return Service.from_json(
            await self._sandbox.client.json(
                "GET", f"{self._path}/{quoted(service_id)}", not_found=ServiceNotFound
            )
        )

    async def stop(self, service: str | Service) -> None:
        """Stop a service and revoke its preview URL."""
        service_id = service.id if isinstance(service, Service) else service
        await self._sandbox.client.request(
            "DELETE", f"{self._path}/{quoted(service_id)}", not_found=ServiceNotFound
        )
