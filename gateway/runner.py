"""The one importer of aiodocker: hardened containers, execs, and their demultiplexed output.

The Docker implementation of `backend.Backend`. Everything Docker-specific (API shapes,
error types, bind strings, the exec wrapper that makes a process group killable, its files
in /tmp) stays here; the domain sees `ContainerSpec`, `Process` and `PetriError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, cast

import aiodocker
import aiohttp

from .backend import STDERR, STDOUT, ContainerSpec, Found, Mount
from .errors import ContainerGone, DockerUnavailable, NotFound, RunnerError

KEEPER_PROCESSES = 2  # the keeper shell and its sleep
# Every exec runs as the leader of its own process group (Docker execs are session leaders);
# the wrapper records that group so a kill or timeout can take the whole group down.
# A kill that comes before the pid file is written leaves a `.kill` marker the wrapper obeys.
# `$1` lists files of ended execs to remove on the way (their clean-up found nothing to kill);
# `$2` names the file the program reads as its stdin (none: empty, as Docker gives).
_WRAP = (
    'echo $$ > "/tmp/.petri-$0.pid" 2>/dev/null; '
    '[ -e "/tmp/.petri-$0.kill" ] && kill -KILL $$; '
    '[ -n "$1" ] && rm -f $1 2>/dev/null; f=$2; shift 2; '
    '[ -n "$f" ] && exec "$@" < "$f"; exec "$@"'
)
# Helpers must not fork: under a fork bomb the pids limit is spent, but an exec can still
# start (joining a cgroup ignores pids.max) and run shell builtins (`read`, `kill`) and `exec`.
_KILL_GROUP = (
    ': > "/tmp/.petri-$0.kill" 2>/dev/null; '
    '{ read p < "/tmp/.petri-$0.pid"; } 2>/dev/null && kill -KILL -"$p" 2>/dev/null; exit 0'
)
# Every process of the sandbox user but PID 1 (and this helper), except the process groups of
# the running services whose exec ids are the arguments ($@). With no service, one `kill -1`;
# else a scan of /proc (builtins only), repeated while it finds something to kill. A service
# whose pid file is missing (it is starting, or its program removed it) spares everything.
_KILL_REST = (
    'if [ $# -eq 0 ]; then kill -KILL -1 2>/dev/null; else '
    'keep=" "; ok=1; '
    'for e; do { read g < "/tmp/.petri-$e.pid"; } 2>/dev/null && keep="$keep$g " || ok=; done; '
    'n=0; while [ -n "$ok" ] && [ $n -lt 8 ]; do n=$((n+1)); hit=; '
    'for d in /proc/[0-9]*; do q=${d#/proc/}; '
    '[ "$q" = 1 ] || [ "$q" = $$ ] && continue; '
    '{ read s < "$d/stat"; } 2>/dev/null || continue; '
    'set -- ${s##*) }; [ "$1" = Z ] && continue; '
    'case "$keep" in *" $3 "*) continue;; esac; '
    'kill -KILL "$q" 2>/dev/null && hit=1; done; '
    '[ -n "$hit" ] || break; done; fi'
)
_KILL_ALL = _KILL_REST + "; exit 0"
# After an exec ended: kill what is left of its group (and, with "all", every process of the
# sandbox user but PID 1 and running services: daemons that left the group), then remove its
# pid file.
_SETTLE = (
    '{ read p < "/tmp/.petri-$0.pid"; } 2>/dev/null && kill -KILL -"$p" 2>/dev/null; '
    f'if [ "$1" = all ]; then shift; {_KILL_REST}; fi; '
    'exec rm -f "/tmp/.petri-$0.pid" "/tmp/.petri-$0.kill"'
)
# A container's pids count on the host: cgroup v1, v2 with cgroupfs, v2 with systemd.
_PIDS_CURRENT = tuple(
    "/sys/fs/cgroup/" + path + "/pids.current"
    for path in ("pids/docker/{id}", "docker/{id}", "system.slice/docker-{id}.scope")
)
MERGE_BYTES = 256 * 1024
# Ended execs whose files in /tmp (a pid file, maybe a kill marker: a tmpfs page each) wait
# for one exec's wrapper to remove them together.
STALE_BATCH = 16
HELPER_SECONDS = 15.0
_OOM = re.compile(rb"^oom_kill (\d+)$", re.M)


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The Docker API's create body of a spec: the hardening every container gets."""
    memory = spec.memory_mb * 1024 * 1024
    fsize = spec.fsize_mb * 1024 * 1024
    # tmpfs pages are charged to the memory cgroup and cannot be reclaimed without swap:
    # a full /tmp (or /dev/shm) must leave room to run, or the sandbox would OOM forever.
    tmpfs_mb = max(1, min(spec.tmpfs_mb, spec.memory_mb // 2))
    shm_mb = max(1, min(64, spec.memory_mb // 8))
    host: dict[str, Any] = {
        "Binds": [_bind(m) for m in spec.mounts],
        "NetworkMode": spec.network,
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,exec,size={tmpfs_mb}m,mode=1777"},
        "ShmSize": shm_mb * 1024 * 1024,
        # Under host memory pressure the kernel picks sandbox processes before the
        # gateway, dockerd or anything else on the host.
        "OomScoreAdj": 500,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": int(spec.cpus * 1e9),
        "PidsLimit": spec.pids,
        "Ulimits": [
            {"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile},
            {"Name": "fsize", "Soft": fsize, "Hard": fsize},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "LogConfig": {"Type": "none"},
        "Init": False,
    }
    if spec.runtime:
        host["Runtime"] = spec.runtime
    if spec.dns:
        host["Dns"] = list(spec.dns)
    return {
        "Image": spec.image,
        "Cmd": list(spec.command),
        "User": spec.user,
        "WorkingDir": spec.workdir,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": dict(spec.labels),
        "Hostname": "sandbox",
        "AttachStdout": True,
        "AttachStderr": True,
        "NetworkDisabled": spec.network == "none",
        "HostConfig": host,
    }


@contextlib.contextmanager
def _docker_errors(what: str) -> Iterator[None]:
    """Map aiodocker/aiohttp failures to the gateway's errors."""
    try:
        yield
    except aiodocker.DockerError as exc:
        if exc.status == 900:  # aiodocker's code for "cannot connect"
            raise DockerUnavailable(f"{what}: Docker is unreachable ({exc.message})") from None
        if exc.status == 404:
            raise NotFound(f"{what}: {exc.message}", code="docker_not_found") from None
        raise RunnerError(f"{what}: Docker said {exc.status}: {exc.message}") from None
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise DockerUnavailable(f"{what}: Docker is unreachable ({exc})") from None


def _bind(mount: Mount) -> str:
    return f"{mount.source}:{mount.target}:{'ro' if mount.read_only else 'rw'}"


# --- aiodocker internals ---------------------------------------------------------------------
# The only place that reaches into aiodocker's private attributes. Checked against aiodocker
# 0.27.0 (pyproject.toml bounds it below 0.28): `Stream._queue` (the frames already read off
# the socket and not yet consumed: a flood is merged from it without waiting).
# tests/integration/test_exec.py (flood merging) fails if it changes.


def _buffered(stream: Any) -> int:
    """How many demultiplexed frames are already buffered behind the current one."""
    return len(stream._queue or ())


# ---------------------------------------------------------------------------------------------


class _ExecProcess:
    """A running exec or attached container: demultiplexed output, then an exit code."""

    def __init__(self, stream: Any, exit_code: Any) -> None:
        self._stream = stream
        self._exit_code = exit_code

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (STDOUT|STDERR, chunk) as Docker delivers frames, until EOF.

        A frame is yielded as soon as it arrives; frames that are already buffered behind it
        (a flood) are merged, per stream, into chunks of up to `MERGE_BYTES`.
        """
        with _docker_errors("reading output"):
            async with self._stream:
                async for item in _merged(self._stream):
                    yield item

    async def exit_code(self) -> int:
        with _docker_errors("reading exit code"):
            code = await self._exit_code()
        return -1 if code is None else int(code)


class _ContainerProcess:
    """A short-lived container, attached before its start."""

    def __init__(self, stream_fn: Any, exit_code: Any) -> None:
        self._stream_fn = stream_fn
        self._exit_code = exit_code

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for item in self._stream_fn():
            yield item

    async def exit_code(self) -> int:
        with _docker_errors("reading exit code"):
            return int(await self._exit_code())


class Runner:
    """The Docker `Backend`. `max_starts` bounds the containers being created and started at
    once (a burst would overload Docker); a slot is held for the create and start only.

    The kill protocol is the exec wrapper's (`_WRAP`): each exec leaves `/tmp/.petri-<id>.pid`
    (its process group) for kills and `.kill` markers; the files of an exec whose clean-up
    found nothing to kill are removed by a later exec of the container (`_stale`), sixteen
    at a time."""

    def __init__(self, url: str = "", max_starts: int = 4) -> None:
        self._url = url or None
        self._docker: aiodocker.Docker | None = None
        self._starts = asyncio.Semaphore(max_starts)
        self._stale: dict[str, list[str]] = {}  # container id -> ended execs' /tmp files
        self._names: dict[str, str] = {}  # container name -> id, of the ones started here

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self.docker.system.info(), 5)
            return True
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False

    async def image_exists(self, ref: str) -> bool:
        try:
            with _docker_errors("inspecting image"):
                await self.docker.images.inspect(ref)
            return True
        except NotFound:
            return False

    async def start_container(self, spec: ContainerSpec) -> str:
        """Create and start a long-lived container; return its id."""
        with _docker_errors(f"starting container {spec.name}"):
            async with self._starts:
                config = container_config(spec)
                container = await self.docker.containers.create(config, name=spec.name)
                try:
                    await container.start()
                except aiodocker.DockerError:
                    await container.delete(force=True)
                    raise
            self._names[spec.name] = str(container.id)
            return str(container.id)

    def run_container(self, spec: ContainerSpec, timeout: float) -> _ContainerProcess:
        """A short-lived container as a `Process`: attached before start, removed at the end."""
        state: dict[str, Any] = {}

        async def setup_and_stream() -> AsyncIterator[tuple[int, bytes]]:
            with _docker_errors(f"running container {spec.name}"):
                async with contextlib.AsyncExitStack() as stack:
                    async with self._starts:
                        container = await self.docker.containers.create(
                            container_config(spec), name=spec.name
                        )
                        state["container"] = container
                        # Attached before start: nothing to replay (and with the `none` log
                        # driver, `logs=True` fails the attach).
                        stream = container.attach(stdout=True, stderr=True, logs=False)
                        await stack.enter_async_context(cast(Any, stream))
                        await container.start()
                    async for item in _merged(stream):
                        yield item

        async def exit_code() -> int:
            container = state.get("container")
            if container is None:
                return -1
            try:
                result = await asyncio.wait_for(container.wait(), timeout)
                return int(result.get("StatusCode", -1))
            finally:
                with contextlib.suppress(aiodocker.DockerError):
                    await container.delete(force=True)

        return _ContainerProcess(setup_and_stream, exit_code)

    async def is_running(self, container_id: str) -> bool:
        try:
            with _docker_errors("inspecting container"):
                info = await self.docker.containers.container(container_id).show()
        except NotFound:
            return False
        return bool(info["State"]["Running"])

    async def remove_container(self, name_or_id: str) -> None:
        self._stale.pop(self._names.pop(name_or_id, name_or_id), None)
        with contextlib.suppress(NotFound), _docker_errors(f"removing container {name_or_id}"):
            await self.docker.containers.container(name_or_id).delete(force=True, v=True)

    async def list_containers(self, labels: Mapping[str, str]) -> list[Found]:
        wanted = [f"{k}={v}" for k, v in labels.items()]
        with _docker_errors("listing containers"):
            found = await self.docker.containers.list(all=True, filters={"label": wanted})
        return [Found(str(c.id), dict(c["Labels"] or {})) for c in found]

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
    ) -> _ExecProcess:
        # stdin is a file the wrapper redirects, never Docker's attached stdin: Docker keeps an
        # exec's output open until its stdin copy ends, and that copy blocks for good once a
        # program that does not read has ended (tests/integration/test_streams.py).
        # The wrapper's `rm` is a fork and an exec (1.3-4 ms) before the program starts: it
        # runs once per STALE_BATCH ended execs, not before every one.
        stale = self._stale.get(container_id, ())
        forget = self._stale.pop(container_id) if len(stale) >= STALE_BATCH else []
        with _docker_errors("starting exec"):
            container = self.docker.containers.container(container_id)
            try:
                handle = await container.exec(
                    ["/bin/sh", "-c", _WRAP, exec_id, _files_of(forget), stdin or "", *argv],
                    user=user,
                    environment=dict(env),
                    workdir=workdir,
                )
            except aiodocker.DockerError as exc:
                if exc.status in (404, 409):  # removed, or not running (Docker's 409)
                    raise ContainerGone(f"container {container_id[:12]}: {exc.message}") from None
                raise
            stream = handle.start(detach=False)

        async def exit_code() -> int | None:
            info = await handle.inspect()
            return info.get("ExitCode")

        return _ExecProcess(stream, exit_code)

    async def kill_group(self, container_id: str, exec_id: str, user: str) -> None:
        """SIGKILL the process group of one exec (from another exec: Docker has no API)."""
        await self._quick(container_id, ["/bin/sh", "-c", _KILL_GROUP, exec_id], user)

    async def kill_all(self, container_id: str, user: str, spare: Sequence[str] = ()) -> None:
        """SIGKILL every process of the sandbox user but PID 1 (escaped groups, daemons),
        except the process groups of the execs in `spare` (running services)."""
        await self._quick(container_id, ["/bin/sh", "-c", _KILL_ALL, "kill-all", *spare], user)

    async def settle(
        self,
        container_id: str,
        exec_id: str,
        user: str,
        *,
        everything: bool,
        spare: Sequence[str] = (),
    ) -> None:
        """After an exec ended: SIGKILL what is left of its process group (background jobs,
        a fork bomb) and, with `everything`, every process of the sandbox user but PID 1 and
        the process groups of the execs in `spare` (running services). When nothing but the
        keeper runs (read from the host, ~15 ms, no pid spent) no helper exec is started:
        the exec's files in /tmp are removed by a later exec (`STALE_BATCH`)."""
        if everything and await self.process_count(container_id) <= KEEPER_PROCESSES:
            self.release(container_id, exec_id)
            return
        argv = ["/bin/sh", "-c", _SETTLE, exec_id, "all" if everything else "group", *spare]
        await self._quick(container_id, argv, user)

    def release(self, container_id: str, exec_id: str) -> None:
        self._stale.setdefault(container_id, []).append(exec_id)

    async def process_count(self, container_id: str) -> int:
        """How many processes the container runs, seen from the host (no exec, no pid used):
        its pids cgroup's `pids.current` (tasks: threads count too, so never fewer) where the
        gateway sees the host's cgroups, a few µs; else `docker top`, ~20-30 ms (dockerd runs
        `ps`), which the sandbox's next exec used to wait for."""
        for pattern in _PIDS_CURRENT:
            with contextlib.suppress(OSError, ValueError), open(
                pattern.format(id=container_id), "rb"
            ) as f:
                return int(f.read())
        with _docker_errors("listing processes"):
            top = await self.docker.containers.container(container_id).top()
        return len(top.get("Processes") or [])

    async def kill_container(self, container_id: str) -> None:
        """SIGKILL the container's PID 1, which takes every process of the sandbox with it
        (the last resort when nothing can be started inside). The workspace is untouched."""
        with contextlib.suppress(NotFound, RunnerError), _docker_errors("killing container"):
            await self.docker.containers.container(container_id).kill(signal="SIGKILL")

    async def oom_kills(self, container_id: str, user: str) -> int:
        """How many OOM kills the container's memory cgroup has seen (v2, then v1 with its
        `oom_kill` line in memory.oom_control). `cat` runs without a shell: no fork needed."""
        out = await self._quick(
            container_id,
            ["cat", "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"],
            user,
        )
        match = _OOM.search(out)
        return int(match.group(1)) if match else 0

    async def _quick(self, container_id: str, argv: list[str], user: str) -> bytes:
        try:
            async with asyncio.timeout(HELPER_SECONDS):
                with _docker_errors("running helper exec"):
                    container = self.docker.containers.container(container_id)
                    handle = await container.exec(argv, user=user)
                    chunks = []
                    async with handle.start(detach=False) as stream:
                        while (msg := await stream.read_out()) is not None:
                            chunks.append(msg.data)
                    return b"".join(chunks)
        except TimeoutError:
            raise RunnerError(f"helper exec {argv[0]} did not end in {HELPER_SECONDS}s") from None


def _files_of(exec_ids: Sequence[str]) -> str:
    """The wrapper's files of these execs, for its `rm` (ids are ours: no shell specials)."""
    return " ".join(f"/tmp/.petri-{e}.pid /tmp/.petri-{e}.kill" for e in exec_ids)


async def _merged(stream: Any) -> AsyncIterator[tuple[int, bytes]]:
    pending = await stream.read_out()
    while pending is not None:
        kind = STDERR if pending.stream == STDERR else STDOUT
        parts, size = [pending.data], len(pending.data)
        nxt: Any = _NEED_READ
        while size < MERGE_BYTES and _buffered(stream) > 0:
            msg = await stream.read_out()
            if msg is None or msg.stream != pending.stream:
                nxt = msg
                break
            parts.append(msg.data)
            size += len(msg.data)
        yield kind, b"".join(parts)
        pending = await stream.read_out() if nxt is _NEED_READ else nxt


_NEED_READ = object()
