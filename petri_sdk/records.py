"""The typed records the API answers with: a sandbox, a file, a service, a package.
Timestamps are ISO 8601 strings as the gateway sends them; `data` keeps the whole answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FileInfo", "Package", "SandboxInfo", "Service"]


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    language: str
    status: str
    created_at: str | None = None
    last_active_at: str | None = None
    expires_at: str | None = None
    ttl_seconds: int | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    env: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxInfo:
        return cls(
            id=str(d["id"]),
            language=str(d.get("language", "")),
            status=str(d.get("status", "")),
            created_at=d.get("created_at"),
            last_active_at=d.get("last_active_at"),
            expires_at=d.get("expires_at"),
            ttl_seconds=d.get("ttl_seconds"),
            limits=dict(d.get("limits") or {}),
            env=[str(e) for e in d.get("env") or []],
            data=d,
        )


@dataclass(frozen=True)
class FileInfo:
    """A file in a sandbox's workspace; `path` is relative to /sandbox."""

    path: str
    size: int
    modified_at: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileInfo:
        return cls(str(d["path"]), int(d.get("size") or 0), d.get("modified_at"))


@dataclass(frozen=True)
class Service:
    """A long-running process the gateway exposes at `preview_url` (serve mode). `status` is
    starting, ready, exited or stopped; its output is the events of `execution_id`."""

    id: str
    sandbox_id: str
    command: str
    port: int
    status: str
    preview_url: str | None
    expires_at: str | None
    execution_id: str
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Service:
        return cls(
            id=str(d["id"]),
            sandbox_id=str(d.get("sandbox_id", "")),
            command=str(d.get("command", "")),
            port=int(d.get("port") or 0),
            status=str(d.get("status", "")),
            preview_url=d.get("preview_url"),
            expires_at=d.get("expires_at"),
            execution_id=str(d.get("execution_id", "")),
            data=d,
        )


@dataclass(frozen=True)
class Package:
    """An installed dependency (the sandbox's bill of materials)."""

    name: str
    version: str
    language: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Package:
        return cls(str(d.get("name", "")), str(d.get("version", "")), str(d.get("language", "")))
