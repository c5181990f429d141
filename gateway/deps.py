"""Per-language dependency plans: manifest first, auto-detect as a fallback.

The install itself runs in a short-lived container of the sandbox's image; its output is
emitted as `install` events, never as program output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .models import Sandbox
from .runtimes import Runtime


class InstallSink(Protocol):
    def emit(self, type_: str, data: dict[str, Any]) -> Any: ...


@dataclass(slots=True)
class InstallResult:
    status: str  # installed | cached | skipped | failed
    packages: list[dict[str, str]] = field(default_factory=list)
    log: str = ""

    def public(self) -> dict[str, Any]:
        return {"status": self.status, "packages": self.packages, "log": self.log}


class Installer:
    """Prepares a sandbox's dependencies before an exec. The foundation installs nothing."""

    async def prepare(self, sandbox: Sandbox, runtime: Runtime, sink: InstallSink) -> InstallResult:
        return InstallResult("skipped")

    def exec_env(self, sandbox: Sandbox, runtime: Runtime) -> dict[str, str]:
        """Environment every exec of the sandbox needs to see installed dependencies."""
        return {}
