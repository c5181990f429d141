"""The domain (Sandboxes, Runs, ExecutionLog, the installer's decisions, TTL) over the
in-memory backend: no Docker, real SQLite, real workspaces in a temp directory."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import backend as be
from gateway.backend import ContainerSpec, Mount
from gateway.config import Settings
from gateway.errors import Conflict, NotFound, RunnerError, SecretNotFound
from gateway.events import Event
from gateway.models import CreateSandbox, ExecBody, LimitsBody
from gateway.runs import CODE_DIR
from gateway.sandboxes import Sandboxes
from gateway.service import open_gateway
from gateway.workspace import Workspace
from tests.fake_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]


def fake_settings(tmp: Path, **overrides: Any) -> Settings:
    sockets = Path("/tmp") / f"petri-fake-{tmp.name[-24:]}"
    return Settings.from_env(
        {},
        data_dir=tmp / "data",
        workspace_root=tmp / "ws",
        runtimes_dir=ROOT / "runtimes",
        egress_sockets=sockets,
        disk_mb=0,
        reaper_interval_seconds=3600,
        **{"pool_size": "0", **overrides},
    )


@contextlib.asynccontextmanager
async def domain(tmp: Path, **overrides: Any) -> AsyncIterator[tuple[Sandboxes, FakeBackend]]:
    fake = FakeBackend()
    settings = fake_settings(tmp, **overrides)
    try:
        async with open_gateway(settings, fake) as sandboxes:
            yield sandboxes, fake
    finally:
        shutil.rmtree(settings.egress_sockets, ignore_errors=True)
    assert not fake.running(), "an exec outlived the gateway"


async def run(
    sandboxes: Sandboxes, sid: str, key: str | None = None, **body: Any
) -> tuple[list[Event], Any]:
    started = await sandboxes.exec(sid, ExecBody(**body), key)
    events = [e async for e in sandboxes.follow(sid, started.execution.id)]
    return events, sandboxes.execution(sid, started.execution.id)


def texts(events: list[Event], kind: str) -> str:
    return "".join(e.data["text"] for e in events if e.type == kind)


def terminal(events: list[Event]) -> Event:
    ends = [e for e in events if e.terminal]
    assert len(ends) == 1 and ends[0] is events[-1], [e.type for e in events]
    first = events[0].id
    assert [e.id for e in events] == list(range(first, first + len(events)))
    return ends[0]


async def test_create_asks_the_backend_for_a_hardened_labelled_container(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        (container,) = fake.containers.values()
        spec = container.spec
        assert sb.container_id == container.id
        assert spec.name == be.container_name(sandboxes.instance, sb.id, "sandbox")
        assert spec.labels == be.container_labels(sandboxes.instance, sb.id, "sandbox")
        assert spec.mounts == (Mount(tmp_path / "ws" / sb.id, "/sandbox"),) or list(
            spec.mounts
        ) == [Mount(tmp_path / "ws" / sb.id, "/sandbox")]
        assert (spec.user, spec.network, tuple(spec.command)) == ("1000:1000", "none", be.KEEPER)
        assert spec.memory_mb == sandboxes.settings.memory_mb


async def test_a_pool_claim_is_the_container_a_cold_create_would_make(tmp_path: Path) -> None:
    """The warm pool over the fake: a default create takes the warm container, whose spec is
    a cold create's (its own name, labels and workspace); custom limits take the cold path;
    the pool refills; entries are no sandboxes until claimed."""
    async with domain(tmp_path, pool_size="python=1") as (sandboxes, fake):
        pool = sandboxes.pool
        assert pool is not None and await pool.wait_full(10)
        (warm,) = fake.containers.values()
        assert sandboxes.page(limit=10, after="") == []
        claimed = await sandboxes.create(CreateSandbox(language="python"))
        assert claimed.container_id == warm.id
        cold = await sandboxes.create(
            CreateSandbox(language="python", limits=LimitsBody(memory_mb=128))
        )
        assert cold.container_id != warm.id
        specs = {c.id: c.spec for c in fake.containers.values()}
        for sb in (claimed, cold):
            spec = specs[sb.container_id]
            assert spec.name == be.container_name(sandboxes.instance, sb.id, "sandbox")
            assert spec.labels == be.container_labels(sandboxes.instance, sb.id, "sandbox")
            assert [m.source for m in spec.mounts] == [tmp_path / "ws" / sb.id]
        a, b = specs[claimed.container_id], specs[cold.container_id]
        same = dataclasses.replace(
            b, name=a.name, labels=a.labels, mounts=a.mounts, memory_mb=a.memory_mb
        )
        assert same == a
        assert await pool.wait_full(10)  # refilled
        assert {sb.id for sb in sandboxes.page(limit=10, after="")} == {claimed.id, cold.id}


async def test_output_arrives_demultiplexed_and_the_run_ends_once(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        events, execution = await run(sandboxes, sb.id, command="echo hi; err oops; exit 3")
        assert events[0].type == "start"
        assert events[0].data == {"execution_id": execution.id, "sandbox_id": sb.id}
        assert (texts(events, "stdout"), texts(events, "stderr")) == ("hi\n", "oops\n")
        end = terminal(events)
        assert end.type == "exit" and end.data["exit_code"] == 3
        assert end.data["killed"] is False and end.data["duration_ms"] is not None
        assert (execution.status, execution.exit_code) == ("exited", 3)


async def test_an_exec_trusts_its_container_and_replaces_a_dead_one(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        events, _ = await run(sandboxes, sb.id, command="echo one")
        assert texts(events, "stdout") == "one\n"
        assert not [c for c in fake.calls if c[0] == "is_running"]  # no inspect per exec
        fake.containers[sb.container_id].running = False  # it died between two execs
        events, _ = await run(sandboxes, sb.id, command="echo two")
        assert texts(events, "stdout") == "two\n"
        fresh = sandboxes.get(sb.id).container_id
        assert fresh != sb.container_id and fake.containers[fresh].running


async def test_code_runs_from_a_scratch_file_the_run_removes(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        events, execution = await run(sandboxes, sb.id, code="echo from the file")
        assert texts(events, "stdout") == "from the file\n"
        await sandboxes.runs.settle_all(5)
        assert not (tmp_path / "ws" / sb.id / CODE_DIR / execution.id).exists()


async def test_stdin_comes_from_a_scratch_file_the_run_removes(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        events, execution = await run(sandboxes, sb.id, command="cat", stdin="fed\n")
        assert texts(events, "stdout") == "fed\n"
        await sandboxes.runs.settle_all(5)  # stdin was a scratch file, gone with the run
        assert not (tmp_path / "ws" / sb.id / CODE_DIR / execution.id).exists()


async def test_scratch_files_are_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """code and stdin (up to 16 MiB each) are written in a thread, never on the loop."""
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        writers: list[int] = []
        write = Workspace.write

        def spy(self: Workspace, *args: Any) -> Any:
            writers.append(threading.get_ident())
            return write(self, *args)

        monkeypatch.setattr(Workspace, "write", spy)
        events, _ = await run(sandboxes, sb.id, code="cat", stdin="x" * 2**20)
        assert texts(events, "stdout") == "x" * 2**20
        assert len(writers) == 2 and threading.get_ident() not in writers


async def test_a_refused_or_abandoned_exec_leaves_no_scratch_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused after its files were written (an unknown secret), or its request cancelled
    while they are written: the scratch folder goes either way."""
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        scratch = tmp_path / "ws" / sb.id / CODE_DIR

        def empty() -> bool:
            return not scratch.exists() or not any(scratch.iterdir())

        body = ExecBody(code="echo", stdin="in", env={"K": {"secret": "nope"}})
        with pytest.raises(SecretNotFound):
            await sandboxes.exec(sb.id, body, None)
        assert empty()
        written = threading.Event()
        write = Workspace.write

        def spy(self: Workspace, *args: Any) -> Any:
            try:
                return write(self, *args)
            finally:
                written.set()

        monkeypatch.setattr(Workspace, "write", spy)
        started = asyncio.create_task(sandboxes.exec(sb.id, ExecBody(code="echo"), None))
        await asyncio.sleep(0)  # in the write, in its thread
        started.cancel()
        with pytest.raises(asyncio.CancelledError):
            await started
        assert await asyncio.to_thread(written.wait, 10)  # the file is there now
        for _ in range(200):  # and goes once the thread is done
            if empty():
                break
            await asyncio.sleep(0.01)
        assert empty(), list(scratch.rglob("*"))
        assert sandboxes.registry.list_executions(sb.id) == []


async def test_kill_ends_a_hanging_run_as_killed_and_a_second_kill_is_409(
    tmp_path: Path,
) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        started = await sandboxes.exec(sb.id, ExecBody(command="echo up; hang"), None)
        follow = sandboxes.follow(sb.id, started.execution.id)
        assert (await anext(follow)).type == "start"
        assert (await anext(follow)).data["text"] == "up\n"  # it runs
        execution = await sandboxes.kill(sb.id, started.execution.id)
        assert execution.status == "killed"
        end = terminal([e async for e in sandboxes.follow(sb.id, execution.id)])
        assert end.data["killed"] is True and end.data["signal"] == "SIGKILL"
        assert ("kill_group", (sb.container_id, execution.id)) in fake.calls
        with pytest.raises(Conflict):
            await sandboxes.kill(sb.id, execution.id)


async def test_a_kill_escalates_when_output_goes_on(tmp_path: Path) -> None:
    """A process that left its group survives kill_group: the ladder's kill_all ends it."""
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        started = await sandboxes.exec(sb.id, ExecBody(command="escape; echo up; hang"), None)
        follow = sandboxes.follow(sb.id, started.execution.id)
        await anext(follow), await anext(follow)
        await sandboxes.kill(sb.id, started.execution.id)
        assert [c for c, _ in fake.calls if c.startswith("kill")] == ["kill_group", "kill_all"]
        assert terminal([e async for e in follow]).data["killed"] is True


async def test_deleting_the_sandbox_interrupts_its_run(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        started = await sandboxes.exec(sb.id, ExecBody(command="hang"), None)
        await asyncio.sleep(0.05)
        assert await sandboxes.delete(sb.id)
        await started.stopped.wait()
        end = started.log.terminal
        assert end is not None and end.type == "error"
        assert end.data == {
            "code": "interrupted",
            "message": "the execution was stopped by the gateway",
        }
        assert started.execution.status == "interrupted"
        assert not fake.containers and not (tmp_path / "ws" / sb.id).exists()


async def test_the_first_ending_wins(tmp_path: Path) -> None:
    """A kill then an interrupt: the run ends as killed (its ending is set once)."""
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        started = await sandboxes.exec(sb.id, ExecBody(command="echo up; hang"), None)
        follow = sandboxes.follow(sb.id, started.execution.id)
        await anext(follow), await anext(follow)
        run_ = sandboxes.runs.find(started.execution.id, sb.id)
        assert run_ is started
        await asyncio.gather(sandboxes.runs.kill(started), sandboxes.runs.interrupt(started))
        await started.stopped.wait()
        assert started.execution.status == "killed" and started.ending is not None
        assert started.ending.kind == "killed"
        assert sandboxes.runs.find(started.execution.id) is None  # no longer live


async def test_timeouts_end_the_run_as_timed_out(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        events, execution = await run(sandboxes, sb.id, command="hang", timeout_seconds=1)
        end = terminal(events).data
        assert (end["timed_out"], end["idle"], end["killed"]) == (True, False, False)
        assert execution.status == "timed_out"
        events, _ = await run(
            sandboxes, sb.id, command="echo a; hang", idle_timeout_seconds=1, timeout_seconds=60
        )
        end = terminal(events).data
        assert (end["timed_out"], end["idle"]) == (True, True)


async def test_an_oom_kill_is_reported_once_per_kill(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, _):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        events, _ = await run(sandboxes, sb.id, command="oom")
        assert terminal(events).data["oom_killed"] is True
        events, _ = await run(sandboxes, sb.id, command="exit 137")  # not the OOM killer
        assert terminal(events).data["oom_killed"] is False


async def test_an_idempotency_key_starts_one_run(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        first = await sandboxes.exec(sb.id, ExecBody(command="echo once; sleep 0.2"), "k1")
        again = await sandboxes.exec(sb.id, ExecBody(command="echo once; sleep 0.2"), "k1")
        assert again is first  # while it runs
        await first.stopped.wait()
        done = await sandboxes.exec(sb.id, ExecBody(command="echo once"), "k1")
        assert done.execution.id == first.execution.id  # after it ended
        assert [c for c, _ in fake.calls].count("exec") == 1


async def test_a_dead_container_is_replaced_with_the_workspace_kept(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        sandboxes.workspace(sb.id).write("kept.txt", b"x", 10)
        await fake.kill_container(sb.container_id)
        events, _ = await run(sandboxes, sb.id, command="echo again")
        assert texts(events, "stdout") == "again\n"
        (container,) = fake.containers.values()
        assert container.id != sb.container_id and (tmp_path / "ws" / sb.id / "kept.txt").exists()


async def test_a_failed_container_start_leaves_nothing(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        fake.fail_start = RunnerError("no such image")
        with pytest.raises(RunnerError):
            await sandboxes.create(CreateSandbox(language="python"))
        assert sandboxes.registry.count_sandboxes() == 0
        assert [p.name for p in (tmp_path / "ws").iterdir() if not p.name.startswith(".")] == []


async def test_idle_sandboxes_are_reaped_unless_busy(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        idle = await sandboxes.create(CreateSandbox(language="python", ttl_seconds=1))
        busy = await sandboxes.create(CreateSandbox(language="python", ttl_seconds=1))
        running = await sandboxes.exec(busy.id, ExecBody(command="hang"), None)
        await asyncio.sleep(1.2)
        assert await sandboxes.reap_expired() == [idle.id]
        assert [c.spec.labels[be.SANDBOX] for c in fake.containers.values()] == [busy.id]
        with pytest.raises(NotFound):
            sandboxes.get(idle.id)
        await sandboxes.runs.kill(running)


async def test_recovery_sweeps_containers_no_sandbox_owns(tmp_path: Path) -> None:
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        for sid, role in (("sb-gone", "sandbox"), (sb.id, "install")):
            await fake.start_container(
                ContainerSpec(
                    name=be.container_name(sandboxes.instance, sid, role),  # type: ignore[arg-type]
                    image="x",
                    labels=be.container_labels(sandboxes.instance, sid, role),  # type: ignore[arg-type]
                )
            )
        foreign = await fake.start_container(ContainerSpec("other", "x", {"app": "1"}))
        removed = await sandboxes.sweep_orphans()
        assert len(removed) == 2
        assert sorted(fake.containers) == sorted([sb.container_id, foreign])


async def test_the_installer_runs_once_per_manifest(tmp_path: Path) -> None:
    """A manifest starts one install container (its output as `install` events, never
    stdout); the same manifest again is a cache hit that starts nothing; a changed one
    installs again."""
    async with domain(tmp_path) as (sandboxes, fake):
        sb = await sandboxes.create(CreateSandbox(language="python"))
        sandboxes.workspace(sb.id).write("requirements.txt", b"six\n", 100)
        first = await sandboxes.exec(sb.id, ExecBody(command="echo ran"), None)
        events = [e async for e in sandboxes.follow(sb.id, first.execution.id)]
        assert "fake install" in texts(events, "install")
        assert texts(events, "stdout") == "ran\n"
        assert first.install is not None and first.install.status == "installed"
        installs = [n for c, (n, *_) in fake.calls if c == "run_container"]
        assert installs == [be.container_name(sandboxes.instance, sb.id, "install")]
        again = await sandboxes.exec(sb.id, ExecBody(command="echo ran"), None)
        await again.stopped.wait()
        assert again.install is not None and again.install.status == "cached"
        sandboxes.workspace(sb.id).write("requirements.txt", b"six\nattrs\n", 100)
        third = await sandboxes.exec(sb.id, ExecBody(command="echo ran"), None)
        await third.stopped.wait()
        assert third.install is not None and third.install.status == "installed"
        assert [c for c, _ in fake.calls].count("run_container") == 2
