"""The install phase: a dependency plan run in a short-lived container of the sandbox's image.

The container writes into the workspace and has no network but loopback (`NetworkMode:
none`). Its only way out is the gateway's allowlisting egress proxy, served for this install
alone on a Unix socket that is bind-mounted into it; a relay inside (`socat`, started by the
install script) turns that socket into `127.0.0.1:$PETRI_EGRESS_PORT`, where HTTP(S)_PROXY,
npm, Maven and git point. Install and program share the exec's deadline; the container also
bounds itself (`timeout -s KILL`), so it ends even when the gateway dies. Its output is
streamed as `install` events (never program output), and what it installed is recorded for
the cache and the bill of materials.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import importlib.util
import logging
import math
import os
import socket
import weakref
from pathlib import Path
from typing import Any

from .backend import (
    ROLE,
    STDERR,
    Backend,
    ContainerSpec,
    Mount,
    container_labels,
    container_name,
    instance_labels,
)
from .config import Settings
from .containers import SANDBOX_ROOT
from .deps import (
    STATE_DIR,
    Choice,
    Installer,
    InstallResult,
    InstallSink,
    choose,
    is_hit,
    parse_packages,
)
from .egress import MAX_CONNECTIONS, SOURCE_CONNECTIONS, EgressProxy
from .errors import EgressUnavailable, PetriError
from .executions import OutputBudget, Tail
from .models import Sandbox, iso, now
from .registry import Registry
from .runtimes import InstallSpec, Runtime
from .workspace import Workspace, Workspaces

log = logging.getLogger("petri.installer")

TOOLS_DIR = f"{STATE_DIR}/tools"
PACKAGES_FILE = f"{STATE_DIR}/packages.txt"
STAMP_FILE = f"{STATE_DIR}/stamp"
CA_PATH = "/etc/petri/ca-bundle.crt"
SOCKET_PATH = "/run/petri/egress.sock"  # the proxy's socket, inside the install container
RECORD = "deps"  # registry key (scope: sandbox id) of the last successful install
INSTALL = "install"
EMIT_BYTES = 1024 * 1024  # install output streamed per install; past it, only its tail
TAIL_BYTES = 64 * 1024
BOM_MAX_BYTES = 16 * 1024 * 1024
TOOL_MAX_BYTES = 4 * 1024 * 1024
# The container's own bound lags the gateway's, so the gateway's timeout is what is seen.
SELF_BOUND_GRACE_SECONDS = 3
# The relay listens before the plan runs (its LISTEN line in /proc/net/tcp: no connection
# to the proxy is spent on checking); its errors go to the install output.
SCRIPT = """set -e
socat TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{socket} &
i=0
until grep -q ' 0100007F:{hexport} 00000000:0000 0A ' /proc/net/tcp; do
  i=$((i + 1))
  if [ "$i" -gt 200 ]; then echo 'petri: the egress relay did not start' >&2; exit 1; fi
  sleep 0.05
done
mkdir -p /sandbox/{state}
cd /sandbox
{run}
{bom}
"""


class ContainerInstaller(Installer):
    """Runs install plans in short-lived containers whose only way out is the allowlisting
    egress proxy. One install at a time per sandbox, at most `max_concurrent_installs` in
    all (in the order they asked), each within its exec's deadline."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        backend: Backend,
        workspaces: Workspaces,
        instance: str,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.workspaces = workspaces
        self.instance = instance
        # Every running install can always open its own share of connections.
        most = max(MAX_CONNECTIONS, SOURCE_CONNECTIONS * settings.max_concurrent_installs)
        self.proxy = EgressProxy(settings.egress_hosts, max_connections=most)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._installs = asyncio.Semaphore(settings.max_concurrent_installs)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(_socket_dir, self.settings.egress_sockets, sweep=True)
        except OSError as exc:
            log.warning("egress socket directory not ready (%s); retried at each install", exc)

    async def close(self) -> None:
        """Stop the proxy and remove install containers that are still there (the runs
        that owned them were interrupted)."""
        await self.proxy.close()
        with contextlib.suppress(PetriError):
            labels = {**instance_labels(self.instance), ROLE: "install"}
            for found in await self.backend.list_containers(labels):
                await self.backend.remove_container(found.id)

    def exec_env(self, sandbox: Sandbox, runtime: Runtime) -> dict[str, str]:
        return dict(runtime.install.env) if runtime.install else {}

    def packages(self, sandbox: Sandbox) -> dict[str, Any]:
        record = self.registry.get_value(sandbox.id, RECORD) or {}
        return {
            "packages": record.get("packages", []),
            "manifest_hash": record.get("key"),
            "plan": record.get("plan"),
            "installed_at": iso(record.get("installed_at")),
        }

    async def discard(self, sandbox: Sandbox) -> None:
        await self.backend.remove_container(self._name(sandbox))
        await self.proxy.unlisten(sandbox.id)

    def _name(self, sandbox: Sandbox) -> str:
        return container_name(self.instance, sandbox.id, "install")

    async def prepare(
        self, sandbox: Sandbox, runtime: Runtime, sink: InstallSink, deadline: float | None = None
    ) -> InstallResult:
        spec = runtime.install
        if spec is None or not spec.plans:
            return InstallResult("skipped")
        lock = self._locks.get(sandbox.id)
        if lock is None:
            lock = self._locks[sandbox.id] = asyncio.Lock()
        if lock.locked():
            _say(sink, "petri: waiting for another install in this sandbox to finish\n")
        try:
            async with asyncio.timeout_at(deadline):
                await lock.acquire()
        except TimeoutError:
            text = "petri: dependency install timed out waiting for another install in this "
            text += "sandbox (the exec's timeout_seconds ran out)\n"
            _say(sink, text)
            return InstallResult("failed", log=text, timed_out=True)
        try:
            workspace = self.workspaces.get(sandbox.id)
            record = self.registry.get_value(sandbox.id, RECORD)
            choice, hit = await asyncio.to_thread(_inspect, spec, workspace, record)
            if choice is None:
                return InstallResult("skipped")
            if choice.plan.skip:
                text = f"petri: {choice.plan.skip}\n"
                _say(sink, text)
                return InstallResult("skipped", log=text)
            if hit:
                return InstallResult("cached", list(record["packages"]))
            return await self._install(sandbox, runtime, spec, choice, sink, deadline)
        finally:
            lock.release()

    async def _install(
        self,
        sandbox: Sandbox,
        runtime: Runtime,
        spec: InstallSpec,
        choice: Choice,
        sink: InstallSink,
        deadline: float | None,
    ) -> InstallResult:
        s = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        end = started + s.install_timeout_seconds
        why = f"PETRI_INSTALL_TIMEOUT_SECONDS={s.install_timeout_seconds}"
        if deadline is not None and deadline < end:
            end, why = deadline, "the exec's timeout_seconds ran out"
        workspace = self.workspaces.get(sandbox.id)
        await asyncio.to_thread(_stage, workspace, runtime, spec)
        out = InstallLog(sink)
        out.say(f"petri: installing dependencies ({choice.plan.name})\n")
        if self._installs.locked():
            out.say(f"petri: waiting for an install slot ({s.max_concurrent_installs} running)\n")
        try:
            async with asyncio.timeout_at(end):
                await self._installs.acquire()
        except TimeoutError:
            out.finish(f"petri: dependency install timed out waiting for an install slot ({why})\n")
            return InstallResult("failed", log=out.tail(), timed_out=True)
        try:
            socket_path = await self._listen(sandbox)
            bound = math.ceil(end - loop.time()) + SELF_BOUND_GRACE_SECONDS
            container = self._container(sandbox, runtime, spec, choice, socket_path, bound)
            code = await self._run(container, out, end)
        finally:
            self._installs.release()
            await self.proxy.unlisten(sandbox.id)
        took = loop.time() - started
        if code != 0:
            timed_out = code is None
            what = f"timed out ({why})" if timed_out else f"exited with {code}"
            out.finish(f"petri: dependency install failed: {what} after {took:.1f}s\n")
            return InstallResult("failed", log=out.tail(), timed_out=timed_out)
        packages = await asyncio.to_thread(_read_packages, workspace, spec, runtime.name)
        # Key what the workspace holds now: an install may write a lock file (npm) or a
        # go.mod (go mod init), which selects another plan next time; that must be a hit.
        after = await asyncio.to_thread(choose, spec, workspace)
        final = after if after is not None and not after.plan.skip else choice
        found = sorted({*choice.found, *final.found}) if final.plan.detect else []
        record = {
            "plan": final.plan.name,
            "key": final.key,
            "found": found,
            "packages": packages,
            "installed_at": now(),
        }
        self.registry.put_value(sandbox.id, RECORD, record)
        await asyncio.to_thread(workspace.write, STAMP_FILE, final.key.encode(), 1024)
        out.finish(f"petri: {len(packages)} package(s) installed in {took:.1f}s\n")
        return InstallResult("installed", packages, out.tail())

    async def _listen(self, sandbox: Sandbox) -> Path:
        """The proxy, listening for this sandbox alone on a socket of its own. The directory
        is made again if it went away (e.g. a temp-file cleaner)."""
        s = self.settings
        try:
            folder = await asyncio.to_thread(_socket_dir, s.egress_sockets)
            path = folder / f"{sandbox.id}.sock"
            await self.proxy.listen(sandbox.id, path, (s.uid, s.gid))
        except OSError as exc:
            raise EgressUnavailable(
                f"cannot serve the egress proxy in {s.egress_sockets} "
                f"(PETRI_EGRESS_SOCKET_DIR): {exc.strerror or exc}"
            ) from None
        return path

    def _container(
        self,
        sandbox: Sandbox,
        runtime: Runtime,
        spec: InstallSpec,
        choice: Choice,
        socket_path: Path,
        bound: int,
    ) -> ContainerSpec:
        s = self.settings
        url = f"http://127.0.0.1:{s.egress_port}"
        env = {**runtime.env, **spec.env, **sandbox.env}
        env.update(
            PETRI_PACKAGES=f"/sandbox/{PACKAGES_FILE}",
            PETRI_TOOLS=f"/sandbox/{TOOLS_DIR}",
            PETRI_DETECTED=" ".join(choice.found),
            PETRI_PROXY_HOST="127.0.0.1",
            PETRI_PROXY_PORT=str(s.egress_port),
            NO_PROXY="",
            no_proxy="",
            # git (e.g. `go get` of a module no proxy serves) reads http.proxy from here.
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.proxy",
            GIT_CONFIG_VALUE_0=url,
        )
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "npm_config_proxy", "npm_config_https_proxy"):
            env[name] = env[name.lower()] = url
        mounts = [
            Mount(self.workspaces.get(sandbox.id).root, SANDBOX_ROOT),
            Mount(socket_path, SOCKET_PATH, read_only=True),
        ]
        if s.ca_bundle:
            mounts.append(Mount(Path(s.ca_bundle), CA_PATH, read_only=True))
            for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
                env[name] = CA_PATH
            env.update(npm_config_cafile=CA_PATH, GIT_SSL_CAINFO=CA_PATH)
        bom = f"( {spec.bom} ) || echo 'petri: could not list the packages' >&2" if spec.bom else ""
        script = SCRIPT.format(
            port=s.egress_port,
            hexport=f"{s.egress_port:04X}",
            socket=SOCKET_PATH,
            state=STATE_DIR,
            run=choice.plan.run,
            bom=bom,
        )
        return ContainerSpec.for_sandbox(
            s,
            sandbox,
            name=self._name(sandbox),
            image=runtime.image,
            labels=container_labels(self.instance, sandbox.id, "install"),
            mounts=mounts,
            env=env,
            network="none",
            # Bounded from inside too: with its gateway gone (even SIGKILLed), the container
            # still ends; `timeout` is PID 1, and when its child dies everything else does.
            command=["/usr/bin/timeout", "-s", "KILL", str(max(1, bound)), "/bin/sh", "-c", script],
        )

    async def _run(self, spec: ContainerSpec, out: InstallLog, end: float) -> int | None:
        """Run the install container until `end` (event-loop time), streaming its output; its
        exit code, None on timeout. Cancelled, it removes the container before it returns."""
        loop = asyncio.get_running_loop()
        await self.backend.remove_container(spec.name)  # a leftover of a crashed gateway
        if end <= loop.time():
            return None
        proc = self.backend.run_container(spec, max(1.0, end - loop.time()) + 30)

        async def drain() -> None:
            async for kind, chunk in proc.output():
                out.feed(kind, chunk)

        reader = asyncio.create_task(drain())
        try:
            done, _ = await asyncio.wait({reader}, timeout=end - loop.time())
            if not done:
                await self.backend.remove_container(spec.name)  # ends the stream
                await asyncio.wait({reader}, timeout=10)
                return None
            reader.result()  # e.g. the image is missing: a gateway error, not a failed install
            return await proc.exit_code()
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, PetriError):
                await reader
            await self.backend.remove_container(spec.name)


def _socket_dir(path: Path, *, sweep: bool = False) -> Path:
    """The directory of the proxy's sockets: made when missing, the gateway's alone (the
    Docker daemon bind-mounts a socket from it; no one needs to list or enter it). With
    `sweep`, sockets nothing listens on (left by a gateway that crashed) are removed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if sweep:
        for entry in path.glob("*.sock"):
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(1)
                try:
                    probe.connect(str(entry))
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        entry.unlink(missing_ok=True)
    return path


class InstallLog:
    """Install output as `install` events, decoded incrementally per stream, under an
    `OutputBudget` of its own (the one mechanism program output uses): `EMIT_BYTES` streamed,
    then a rolling tail sent at the end. The last `TAIL_BYTES` are always kept for the
    install's result (`tail()`: the log a failed install reports)."""

    def __init__(self, sink: InstallSink) -> None:
        self.sink = sink
        self.budget = OutputBudget(EMIT_BYTES, TAIL_BYTES)
        self.kept = Tail(TAIL_BYTES)
        self._order = 0
        self._decoders = {
            kind: codecs.getincrementaldecoder("utf-8")("replace") for kind in (1, STDERR)
        }

    def feed(self, kind: int, chunk: bytes) -> None:
        self.say(self._decoders[kind if kind in self._decoders else 1].decode(chunk))

    def say(self, text: str) -> None:
        if self._keep(text) and (admitted := self.budget.admit(INSTALL, text)):
            _say(self.sink, admitted)

    def finish(self, last: str = "") -> None:
        """End of output: what the decoders hold, the kept end if output was cut, then
        `last`, which is always sent."""
        for decoder in self._decoders.values():
            self.say(decoder.decode(b"", final=True))
        if self.budget.truncated:
            end = "".join(text for _, text in self.budget.tail())
            _say(self.sink, "\npetri: [install output cut; its end follows]\n" + end)
        if self._keep(last):
            _say(self.sink, last)

    def tail(self) -> str:
        return "".join(text for _, text in self.kept.chunks)

    def _keep(self, text: str) -> bool:
        if text:
            self._order += 1
            self.kept.keep(self._order, text)
        return bool(text)


def _say(sink: InstallSink, text: str) -> None:
    with contextlib.suppress(RuntimeError):  # the execution already ended
        sink.emit(INSTALL, {"text": text})


def _inspect(spec: InstallSpec, workspace: Workspace, record: Any) -> tuple[Choice | None, bool]:
    """(the plan that applies, whether the last install still covers it). A hit also needs
    the workspace's stamp: deleting `.deps` must not leave a "cached" that is not there."""
    choice = choose(spec, workspace)
    if choice is None or choice.plan.skip or not is_hit(record, choice):
        return choice, False
    try:
        handle, _ = workspace.read(STAMP_FILE)
    except PetriError:
        return choice, False
    with handle:
        return choice, handle.read(256) == str(record.get("key", "")).encode()


def _stage(workspace: Workspace, runtime: Runtime, spec: InstallSpec) -> None:
    """Before an install: forget the old stamp and package list; put the plan's tools (the
    runtime's helper files, and Python packages of the gateway's own environment such as
    pipreqs) where the install container finds them ($PETRI_TOOLS)."""
    for rel in (STAMP_FILE, PACKAGES_FILE):
        with contextlib.suppress(PetriError):
            workspace.delete(rel)
    for name, data in _tools(runtime.folder, spec.tools, spec.tool_packages):
        workspace.write(f"{TOOLS_DIR}/{name}", data, TOOL_MAX_BYTES)


def _tools(
    folder: Path, files: tuple[str, ...], packages: tuple[str, ...]
) -> list[tuple[str, bytes]]:
    found = [(Path(rel).name, (folder / rel).read_bytes()) for rel in files]
    for package in packages:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            log.warning("install tool package %s is not installed on the gateway", package)
            continue
        base = Path(locations[0])
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                found.append((f"{package}/{path.relative_to(base).as_posix()}", path.read_bytes()))
    return found


def _read_packages(workspace: Workspace, spec: InstallSpec, language: str) -> list[dict[str, str]]:
    if not spec.bom_format:
        return []
    try:
        handle, _ = workspace.read(PACKAGES_FILE)
    except PetriError:
        return []
    with handle:
        text = handle.read(BOM_MAX_BYTES).decode("utf-8", "replace")
    return parse_packages(spec.bom_format, text, language)
