"""The warm pool (DESIGN §13, gateway/pool.py): a create with default limits claims a
container started ahead; what it gets is indistinguishable from a cold create's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.registry import instance_id
from tests.conftest import Gateway, running_gateway
from tests.sse import check_sequence, stream_events, text
from tests.teams import client as keyed
from tests.teams import new_key

POOL = 2


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def containers(gw: Gateway) -> dict[str, str]:
    """sandbox id -> container id, for every sandbox container of this gateway."""
    instance = instance_id(gw.data_dir)
    out = docker(
        "ps", "-a", "--filter", f"label=petri.instance={instance}",
        "--filter", "label=petri.role=sandbox",
        "--format", '{{.ID}} {{.Label "petri.sandbox"}}',
    )
    pairs = (line.split() for line in out.splitlines() if line.strip())
    return {sid: cid for cid, sid in pairs}


def listed(client: httpx.Client) -> set[str]:
    r = client.get("/v1/sandboxes", params={"limit": 500})
    assert r.status_code == 200, r.text
    return {s["id"] for s in r.json()["sandboxes"]}


def pooled(gw: Gateway, client: httpx.Client) -> dict[str, str]:
    """The pool's entries: sandbox containers no sandbox of the API owns."""
    mine = listed(client)
    return {sid: cid for sid, cid in containers(gw).items() if sid not in mine}


def wait_pool(gw: Gateway, client: httpx.Client, n: int, seconds: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = pooled(gw, client)
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"the pool did not fill to {n}: {pooled(gw, client)}")


def inspect(gw: Gateway, sid: str) -> dict[str, Any]:
    name = f"petri-{instance_id(gw.data_dir)}-{sid}"
    info = json.loads(docker("inspect", name))[0]
    assert isinstance(info, dict)
    return info


def normalized(gw: Gateway, sid: str) -> dict[str, Any]:
    """Config and HostConfig, with what names this sandbox and gateway made neutral."""
    info = inspect(gw, sid)
    raw = json.dumps({"Config": info["Config"], "HostConfig": info["HostConfig"]})
    for mine, neutral in (
        (sid, "SANDBOX"),
        (instance_id(gw.data_dir), "INSTANCE"),
        (str(gw.workspace_root), "ROOT"),
    ):
        raw = raw.replace(mine, neutral)
    result = json.loads(raw)
    assert isinstance(result, dict)
    return result


def run(client: httpx.Client, sid: str, command: str) -> dict[str, Any]:
    r = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": command}, timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["exit_code"] == 0, result
    return dict(result)


INSIDE = (
    # /tmp but this exec's own pid file (the wrapper's, holding $$)
    'for f in /tmp/* /tmp/.[!.]*; do [ -e "$f" ] || continue; '
    '[ "$(cat "$f" 2>/dev/null)" = "$$" ] || echo "$f"; done; '
    "echo ---; ls -A /sandbox; echo ---; "
    # every process but this exec's: the keeper and its sleep, nothing the pool started
    "for d in /proc/[0-9]*; do p=${d#/proc/}; [ $p = $$ ] && continue; "
    "tr '\\0' ' ' < $d/cmdline 2>/dev/null; echo; done "
    "| grep -v '^/bin/bash -c \\|^grep \\|^sort\\|^tr \\|^$' | sort; "
    "echo ---; env | grep -v '^HOSTNAME=\\|^PWD=\\|^SHLVL=\\|^_=' | sort; "
    "echo ---; tr '\\0' '\\n' < /proc/1/environ | sort; "
    "echo ---; df -k /sandbox | awk 'NR == 2 {print $2, $6}'"
)


@pytest.fixture(scope="module")
def warm(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("pool", pool_size=f"python={POOL}") as gw:
        yield gw


def test_a_claim_is_indistinguishable_from_a_cold_create(
    warm: Gateway, client: httpx.Client, gateway: Gateway
) -> None:
    with warm.client() as c:
        before = wait_pool(warm, c, POOL)
        assert not listed(c), "pool entries are never listed"
        time.sleep(1.5)  # the entries are older than the create: its TTL starts at the claim
        asked = time.time()
        r = c.post("/v1/sandboxes", json={"language": "python"})
        assert r.status_code == 201, r.text
        claimed = r.json()
        sid = claimed["id"]
        assert sid in before, "a default create claims a warm entry"
        created = time.mktime(time.strptime(claimed["created_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert created - time.timezone >= int(asked) - 1
        assert listed(c) == {sid}
        # A cold sandbox of a gateway without a pool (same settings otherwise).
        r = client.post("/v1/sandboxes", json={"language": "python"})
        assert r.status_code == 201, r.text
        cold = r.json()["id"]
        try:
            assert normalized(warm, sid) == normalized(gateway, cold)
            assert claimed["limits"] == r.json()["limits"]
            inside_warm = run(c, sid, INSIDE)["stdout"]
            inside_cold = run(client, cold, INSIDE)["stdout"]
            assert inside_warm == inside_cold.replace(cold, sid), (inside_warm, inside_cold)
            tmp, workspace, procs = inside_warm.split("---\n")[:3]
            assert tmp == "" and workspace == "", inside_warm
            assert "sleep 86400" in procs and len(procs.splitlines()) == 2, procs
            # It works like any sandbox: files, execs, delete.
            assert c.put(f"/v1/sandboxes/{sid}/files/a.txt", content=b"hi").status_code < 300
            assert run(c, sid, "cat a.txt")["stdout"] == "hi"
        finally:
            client.delete(f"/v1/sandboxes/{cold}")
            assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
        assert sid not in containers(warm)
        assert not (warm.workspace_root / sid).exists()
        # The pool refills in the background.
        again = wait_pool(warm, c, POOL)
        assert sid not in again and len(set(again) & set(before)) == POOL - 1


def test_custom_limits_env_or_another_language_take_the_cold_path(warm: Gateway) -> None:
    with warm.client() as c:
        before = wait_pool(warm, c, POOL)
        made = []
        try:
            for body in (
                {"language": "python", "limits": {"memory_mb": 256}},
                {"language": "python", "env": {"A": "1"}},
                {"language": "node"},  # no pool of its own: always cold
            ):
                r = c.post("/v1/sandboxes", json=body)
                assert r.status_code == 201, r.text
                made.append(r.json()["id"])
                assert made[-1] not in before
            assert inspect(warm, made[0])["HostConfig"]["Memory"] == 256 * 1024 * 1024
            assert "A=1" in inspect(warm, made[1])["Config"]["Env"]
            assert run(c, made[1], "echo $A")["stdout"] == "1\n"
            assert pooled(warm, c) == before, "the pool is untouched"
        finally:
            for sid in made:
                c.delete(f"/v1/sandboxes/{sid}")


def test_an_empty_pool_takes_the_cold_path_and_a_burst_all_succeeds(warm: Gateway) -> None:
    with warm.client() as c:
        before = wait_pool(warm, c, POOL)
        with ThreadPoolExecutor(6) as ex:
            answers = list(ex.map(lambda _: c.post("/v1/sandboxes", json={"language": "python"}),
                                  range(6)))
        made = [r.json()["id"] for r in answers if r.status_code == 201]
        try:
            assert len(made) == 6 and len(set(made)) == 6, [r.text for r in answers]
            assert set(before) <= set(made), "the warm ones were claimed first"
            assert len(set(made) - set(before)) >= 6 - POOL - POOL  # the rest, cold (or refills)
            assert listed(c) == set(made)
            for sid in made:
                assert run(c, sid, "echo ok")["stdout"] == "ok\n"
        finally:
            for sid in made:
                c.delete(f"/v1/sandboxes/{sid}")
        wait_pool(warm, c, POOL)


def test_concurrent_streams_each_get_every_event_in_order(warm: Gateway) -> None:
    """16 streams over 4 (claimed) sandboxes: every line, every event, in order."""
    lines = 300
    with warm.client() as c:
        sids = [c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
                for _ in range(4)]
        code = (
            "import sys, time\n"
            f"for i in range({lines}):\n"
            "    sys.stdout.write(f'{i:05d} ' + 'x' * 200 + '\\n')\n"
            "    if i % 50 == 0: sys.stdout.flush(); time.sleep(0.01)\n"
        )
        expected = "".join(f"{i:05d} " + "x" * 200 + "\n" for i in range(lines))

        def one(k: int) -> str:
            with warm.client() as mine:
                got = stream_events(
                    mine, "POST", f"/v1/sandboxes/{sids[k % 4]}/exec",
                    json={"code": code}, timeout=120,
                )
            check_sequence(got)
            assert got[0].type == "start" and got[-1].type == "exit", got[-1]
            assert got[-1].data["exit_code"] == 0
            return text(got, "stdout")

        try:
            with ThreadPoolExecutor(16) as ex:
                outputs = list(ex.map(one, range(16)))
            assert all(out == expected for out in outputs)
        finally:
            for sid in sids:
                c.delete(f"/v1/sandboxes/{sid}")


def test_limits_and_tenant_quotas_hold_with_a_pool(docker_ready: None) -> None:
    with running_gateway(
        "pool-limits", pool_size="python=2", max_sandboxes="2", tenant_max_sandboxes="1"
    ) as gw:
        admin = new_key(gw, "ops", admin=True)
        one, two, three = (new_key(gw, name) for name in ("one", "two", "three"))
        with keyed(gw, one) as a, keyed(gw, two) as b, keyed(gw, three) as d, keyed(
            gw, admin
        ) as ops:
            wait_pool(gw, ops, 2)  # two warm entries exist, and count against no one
            first = a.post("/v1/sandboxes", json={"language": "python"})
            assert first.status_code == 201, first.text
            r = a.post("/v1/sandboxes", json={"language": "python"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
            assert b.post("/v1/sandboxes", json={"language": "python"}).status_code == 201
            r = d.post("/v1/sandboxes", json={"language": "python"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sandboxes"
            # Pool entries are nobody's: each tenant sees its own sandbox only.
            assert listed(a) == {first.json()["id"]} and listed(d) == set()


def test_a_killed_gateway_s_pool_is_swept_at_the_next_start(docker_ready: None) -> None:
    with running_gateway("pool-kill", pool_size="python=2") as gw:
        with gw.client() as c:
            wait_pool(gw, c, 2)
            kept = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            old = wait_pool(gw, c, 2)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(30)
        marks = gw.data_dir / "pool"
        assert set(os.listdir(marks)) == set(old)
        mounted = Path("/proc/mounts").read_text()
        assert all(str(gw.workspace_root / sid) in mounted for sid in old)
        gw.start()
        with gw.client() as c:
            new = wait_pool(gw, c, 2)
            assert not set(new) & set(old)
            assert set(containers(gw)) == {kept, *new}
            mounted = Path("/proc/mounts").read_text()
            for sid in old:
                assert not (gw.workspace_root / sid).exists()
                assert str(gw.workspace_root / sid) not in mounted
                assert not (gw.workspace_root / ".images" / f"{sid}.ext4").exists()
            assert set(os.listdir(marks)) == set(new)
            assert listed(c) == {kept}
            assert run(c, kept, "echo alive")["stdout"] == "alive\n"
        # A gateway that stops removes its pool (containers, workspaces, marks).
        gw.stop()
        assert set(containers(gw)) == {kept}
        assert os.listdir(marks) == []
        assert not any((gw.workspace_root / sid).exists() for sid in new)
