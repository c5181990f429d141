"""An in-memory `gateway.backend.Backend`: containers are records, an exec runs a tiny script.

It lives with the tests, not in gateway/: the gateway never runs without an engine, and the
fake's script language is a test device, not a product feature. It keeps the seam honest:
mypy checks it against the Protocol (tests/unit/test_fake_backend.py assigns it to one).

An exec's script is its last `bash -c` argument, or, for `{"code": ...}` and `filename`
execs (`python3 FILE`, …), the file's text read from the workspace the container mounts
at /sandbox. Statements, separated by `;` or newlines:

    echo TEXT       TEXT and a newline on stdout        err TEXT    the same on stderr
    out TEXT        TEXT on stdout, no newline          cat         stdin, back on stdout
    flood N         N bytes of `x` on stdout, 4 KiB per chunk
    sleep S         wait S seconds (a kill ends it)     hang        wait until killed
    exit N          end with code N                     oom         killed by "the kernel"
    escape          leave a process behind the group (only `kill_all` ends it)

Unknown statements print `fake: unknown statement` on stderr and exit 127, like a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.backend import STDERR, STDOUT, Backend, ContainerSpec, Found
from gateway.errors import ContainerGone, NotFound

KILLED = 137


@dataclass
class FakeProcess:
    """One exec: its output queue, its exit, whether a kill reached it."""

    exec_id: str
    argv: list[str]
    env: dict[str, str]
    stdin: bytes | None
    queue: asyncio.Queue[tuple[int, bytes] | None] = field(default_factory=asyncio.Queue)
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    code: int = -1
    escaped: bool = False  # left a process outside its group: only kill_all ends it
    task: asyncio.Task[None] | None = None

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def exit_code(self) -> int:
        await self.ended.wait()
        return self.code


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    running: bool = True
    oom: int = 0
    execs: dict[str, FakeProcess] = field(default_factory=dict)
    kill_marks: set[str] = field(default_factory=set)  # killed before they started

    @property
    def workspace(self) -> Path | None:
        return next((m.source for m in self.spec.mounts if m.target == "/sandbox"), None)


class FakeBackend:
    """Containers and execs in memory. `calls` records every method called (name, args) so
    a test can assert what the domain asked of its engine."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.fail_start: Exception | None = None  # raised by the next start_container
        self.up = True
        self._ids = itertools.count(1)

    def _find(self, name_or_id: str) -> FakeContainer:
        for c in self.containers.values():
            if name_or_id in (c.id, c.spec.name):
                return c
        raise NotFound(f"no container {name_or_id}", code="docker_not_found")

    async def close(self) -> None:
        for c in self.containers.values():
            for p in c.execs.values():
                p.killed.set()

    async def ping(self) -> bool:
        return self.up

    async def image_exists(self, ref: str) -> bool:
        return True

    async def start_container(self, spec: ContainerSpec) -> str:
        self.calls.append(("start_container", (spec.name,)))
        if self.fail_start is not None:
            exc, self.fail_start = self.fail_start, None
            raise exc
        if any(c.spec.name == spec.name for c in self.containers.values()):
            raise AssertionError(f"name {spec.name} in use: the domain must remove it first")
        cid = f"fake{next(self._ids):08d}"
        self.containers[cid] = FakeContainer(cid, spec)
        return cid

    def run_container(self, spec: ContainerSpec, timeout: float) -> FakeProcess:
        """An install: says what it would install, exits 0 (or what its script says)."""
        self.calls.append(("run_container", (spec.name,)))
        proc = FakeProcess(spec.name, list(spec.command), dict(spec.env), None)
        proc.task = asyncio.create_task(_run(proc, ["echo fake install"], None))
        return proc

    async def is_running(self, container_id: str) -> bool:
        self.calls.append(("is_running", (container_id,)))
        try:
            return self._find(container_id).running
        except NotFound:
            return False

    async def remove_container(self, name_or_id: str) -> None:
        self.calls.append(("remove_container", (name_or_id,)))
        with contextlib.suppress(NotFound):
            c = self._find(name_or_id)
            await self.kill_container(c.id)
            del self.containers[c.id]

    async def kill_container(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            c = self._find(container_id)
            c.running = False
            for p in c.execs.values():
                p.killed.set()

    async def list_containers(self, labels: Mapping[str, str]) -> list[Found]:
        return [
            Found(c.id, dict(c.spec.labels))
            for c in self.containers.values()
            if all(c.spec.labels.get(k) == v for k, v in labels.items())
        ]

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
    ) -> FakeProcess:
        self.calls.append(("exec", (container_id, exec_id)))
        c = next((c for c in self.containers.values() if c.id == container_id), None)
        if c is None or not c.running:  # as Docker's 404 / 409
            raise ContainerGone(f"container {container_id} is not running")
        fed = None
        if stdin is not None:  # a file of the workspace, as the Docker backend reads it
            fed = (c.workspace / stdin).read_bytes() if c.workspace is not None else b""
        proc = FakeProcess(exec_id, list(argv), dict(env), fed)
        c.execs[exec_id] = proc
        if exec_id in c.kill_marks:  # a kill came before the exec started
            proc.killed.set()
        proc.task = asyncio.create_task(_run(proc, _script(argv, c.workspace), c))
        return proc

    async def kill_group(self, container_id: str, exec_id: str, user: str) -> None:
        self.calls.append(("kill_group", (container_id, exec_id)))
        c = self._find(container_id)
        proc = c.execs.get(exec_id)
        if proc is None:
            c.kill_marks.add(exec_id)
        elif not proc.escaped:
            proc.killed.set()

    async def kill_all(self, container_id: str, user: str, spare: Sequence[str] = ()) -> None:
        self.calls.append(("kill_all", (container_id, tuple(spare))))
        for exec_id, proc in self._find(container_id).execs.items():
            if exec_id not in spare:
                proc.killed.set()

    async def settle(
        self,
        container_id: str,
        exec_id: str,
        user: str,
        *,
        everything: bool,
        spare: Sequence[str] = (),
    ) -> None:
        self.calls.append(("settle", (container_id, exec_id, everything)))
        with contextlib.suppress(NotFound):
            c = self._find(container_id)
            if everything:
                for other, proc in c.execs.items():
                    if other not in spare:
                        proc.killed.set()
            self.release(container_id, exec_id)

    def release(self, container_id: str, exec_id: str) -> None:
        with contextlib.suppress(NotFound):
            c = self._find(container_id)
            c.kill_marks.discard(exec_id)
            proc = c.execs.get(exec_id)
            if proc is not None and proc.ended.is_set():
                del c.execs[exec_id]

    async def process_count(self, container_id: str) -> int:
        c = self._find(container_id)
        return 2 + sum(not p.ended.is_set() for p in c.execs.values())

    async def oom_kills(self, container_id: str, user: str) -> int:
        return self._find(container_id).oom

    def running(self) -> list[FakeProcess]:
        """Execs whose script has not ended (a leak if a run ended)."""
        return [p for c in self.containers.values() for p in c.execs.values()
                if not p.ended.is_set()]


def _script(argv: Sequence[str], workspace: Path | None) -> list[str]:
    """The statements an exec runs: `bash -c SCRIPT [NAME ARGS]`'s SCRIPT, else the text of
    the file it runs (its last argument that is a file of the workspace)."""
    args = list(argv)
    if len(args) >= 3 and args[1] == "-c" and args[0].endswith("sh"):
        text = args[2]
    else:
        text = ""
        for arg in reversed(args[1:]):
            path = (workspace / arg) if workspace is not None else None
            if path is not None and path.is_file():
                text = path.read_text()
                break
    return [s.strip() for s in text.replace("\n", ";").split(";") if s.strip()]


async def _run(proc: FakeProcess, statements: list[str], container: FakeContainer | None) -> None:
    """Interpret the statements; a kill (the `killed` event) ends it with 137 at any await."""
    code = 0

    async def until_killed(seconds: float | None) -> bool:
        try:
            await asyncio.wait_for(proc.killed.wait(), seconds)
            return True
        except TimeoutError:
            return False

    try:
        if proc.killed.is_set():
            code = KILLED
            return
        for statement in statements:
            word, _, rest = statement.partition(" ")
            await asyncio.sleep(0)  # output arrives as it is written, not all at once
            if proc.killed.is_set():
                code = KILLED
                return
            if word == "echo":
                proc.queue.put_nowait((STDOUT, (rest + "\n").encode()))
            elif word == "out":
                proc.queue.put_nowait((STDOUT, rest.encode()))
            elif word == "err":
                proc.queue.put_nowait((STDERR, (rest + "\n").encode()))
            elif word == "cat":
                if proc.stdin:
                    proc.queue.put_nowait((STDOUT, proc.stdin))
            elif word == "flood":
                left = int(rest)
                while left > 0:
                    n = min(4096, left)
                    proc.queue.put_nowait((STDOUT, b"x" * n))
                    left -= n
                    await asyncio.sleep(0)
            elif word == "sleep":
                if await until_killed(float(rest)):
                    code = KILLED
                    return
            elif word == "hang":
                await proc.killed.wait()
                code = KILLED
                return
            elif word == "escape":
                proc.escaped = True
            elif word == "exit":
                code = int(shlex.split(rest)[0]) if rest else 0
                return
            elif word == "oom":
                if container is not None:
                    container.oom += 1
                code = KILLED
                return
            else:
                proc.queue.put_nowait((STDERR, f"fake: unknown statement {word}\n".encode()))
                code = 127
                return
    finally:
        proc.code = code
        proc.ended.set()
        proc.queue.put_nowait(None)


def _is_backend(backend: FakeBackend) -> Backend:
    return backend  # mypy: the fake satisfies the Protocol the gateway programs against
