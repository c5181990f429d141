"""The seam between the domain and the container engine: what Sandboxes, Runs, the installer
and test mode ask of it (`Backend`), and the small typed records they exchange.

`runner.Runner` is the Docker implementation (the only importer of aiodocker);
`tests/fake_backend.py` is an in-memory one for fast tests; docs/scale-out.md maps every
method to Kubernetes. Nothing here imports an engine's client library.

Container names and labels are spelled here and nowhere else: a sweep, a test's clean-up and
the operator's `docker ps --filter label=…` all mean the same containers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .config import Settings
from .models import Sandbox

STDOUT, STDERR = 1, 2
Stream = Literal[1, 2]

# --- labels and names: the one place they are spelled ------------------------------------------

MANAGED = "petri.managed"  # "1" on every container a gateway made
INSTANCE = "petri.instance"  # which gateway (a hash of its data dir: registry.instance_id)
SANDBOX = "petri.sandbox"  # the sandbox a container belongs to
ROLE = "petri.role"  # what it is for: `sandbox` (long-lived) or `install` (short-lived)
Role = Literal["sandbox", "install"]


def instance_labels(instance: str) -> dict[str, str]:
    """Labels every container of one gateway carries (what its sweeps filter on)."""
    return {MANAGED: "1", INSTANCE: instance}


def container_labels(instance: str, sandbox_id: str, role: Role) -> dict[str, str]:
    return {**instance_labels(instance), SANDBOX: sandbox_id, ROLE: role}


def container_name(instance: str, sandbox_id: str, role: Role) -> str:
    """A stable name per (gateway, sandbox, role): a leftover of a crashed gateway is found,
    and replaced, by name."""
    base = f"petri-{instance}-{sandbox_id}"
    return base if role == "sandbox" else f"{base}-{role}"


# PID 1 of a sandbox: a shell that reaps orphans (`wait` reaps any child). The kernel drops a
# signal sent from inside to a PID namespace's init unless init handles it; dash handles only
# SIGINT (ignored here) and SIGCHLD (harmless), so `kill 1`, `kill -KILL 1` or `kill -INT 1`
# from the sandbox cannot end it. The engine kills it from outside.
KEEPER = ("/bin/sh", "-c", "trap '' INT; while :; do sleep 86400 & wait; done")


@dataclass(frozen=True, slots=True)
class Mount:
    """A host directory or socket made visible inside a container."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One container, engine-neutral: its image, hardening and limits. The hardening that
    is not a field (read-only root, all capabilities dropped, no-new-privileges, a /tmp
    tmpfs, no core dumps, no logs kept) is what every backend applies to every container."""

    name: str
    image: str
    labels: Mapping[str, str]
    mounts: Sequence[Mount] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = "1000:1000"
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    nofile: int = 1024
    fsize_mb: int = 512
    tmpfs_mb: int = 256
    network: Literal["none"] = "none"  # no network but loopback; installs get a proxy socket
    runtime: str = ""  # the OCI runtime (e.g. runsc), "" for the engine's default
    command: Sequence[str] = KEEPER
    workdir: str = "/sandbox"
    dns: Sequence[str] = ()

    @classmethod
    def for_sandbox(cls, settings: Settings, sandbox: Sandbox, **fields: Any) -> ContainerSpec:
        """A container with the sandbox's hardening and limits (its own or an install's)."""
        return cls(
            user=settings.sandbox_user,
            memory_mb=sandbox.limits.memory_mb,
            cpus=sandbox.limits.cpus,
            pids=sandbox.limits.pids,
            nofile=settings.nofile,
            fsize_mb=settings.fsize_mb,
            tmpfs_mb=settings.tmpfs_mb,
            runtime=settings.docker_runtime,
            **fields,
        )


@dataclass(frozen=True, slots=True)
class Found:
    """A labelled container a listing found."""

    id: str
    labels: Mapping[str, str]


class Process(Protocol):
    """A running exec (or short-lived container): its demultiplexed output, then its exit."""

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(STDOUT|STDERR, chunk) as they arrive, never waiting for a newline, until EOF."""
        ...

    async def exit_code(self) -> int:
        """The exit code once output ended (-1 when the engine does not know it)."""
        ...


class Backend(Protocol):
    """What the domain needs of a container engine. Errors are PetriErrors: `NotFound` (the
    container is gone), `DockerUnavailable` (the engine is unreachable), `RunnerError`."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the engine answers (GET /readyz)."""
        ...

    async def image_exists(self, ref: str) -> bool: ...

    # --- containers ---------------------------------------------------------------------------

    async def start_container(self, spec: ContainerSpec) -> str:
        """Create and start a long-lived container; its id."""
        ...

    def run_container(self, spec: ContainerSpec, timeout: float) -> Process:
        """A short-lived container (an install) as a Process, removed once it ended."""
        ...

    async def is_running(self, container_id: str) -> bool: ...

    async def remove_container(self, name_or_id: str) -> None:
        """Remove it, running or not (no error when it is already gone)."""
        ...

    async def kill_container(self, container_id: str) -> None:
        """The last resort: end every process of the container (it stops; workspace kept)."""
        ...

    async def list_containers(self, labels: Mapping[str, str]) -> list[Found]:
        """Every container, running or not, carrying all `labels`."""
        ...

    # --- execs --------------------------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        exec_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        user: str,
        workdir: str = "/sandbox",
        stdin: str | None = None,
    ) -> Process:
        """Start `argv` in the container as its own killable process group, named `exec_id`
        (the domain's id: kill_group and settle take it). `stdin` is a file (relative to
        `workdir`) the program reads as its standard input; without it, an empty one."""
        ...

    async def kill_group(self, container_id: str, exec_id: str, user: str) -> None:
        """SIGKILL the process group of one exec (also when it has not started yet)."""
        ...

    async def kill_all(self, container_id: str, user: str, spare: Sequence[str] = ()) -> None:
        """SIGKILL every process of the sandbox user but PID 1, except the process groups of
        the execs in `spare` (running services)."""
        ...

    async def settle(
        self,
        container_id: str,
        exec_id: str,
        user: str,
        *,
        everything: bool,
        spare: Sequence[str] = (),
    ) -> None:
        """After an exec ended: kill what is left of its group and, with `everything`, every
        process of the user but PID 1 and `spare`; forget whatever the exec left behind."""
        ...

    def release(self, container_id: str, exec_id: str) -> None:
        """An exec (a helper, a probe) ended and nothing of it needs killing: forget it."""
        ...

    async def process_count(self, container_id: str) -> int:
        """How many processes the container runs (seen from outside: costs no pid)."""
        ...

    async def oom_kills(self, container_id: str, user: str) -> int:
        """How many OOM kills the container's memory cgroup has seen."""
        ...
