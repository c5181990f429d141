"""The audit ledger (§11) through a real gateway and the real `petri audit` CLI: what is
recorded (with the caller's metadata), paging, the SSE tail, export, and that tampering,
deletion and reordering are caught, while a SIGKILL mid-write leaves a ledger that verifies."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.audit import chain_hash
from tests.conftest import Gateway, cleanup_containers, make_gateway, remove_tree, running_gateway
from tests.teams import cli, client, new_key, sse_for, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def ledger_gw(docker_ready: None) -> Iterator[tuple[Gateway, httpx.Client]]:
    with running_gateway("audit") as gw:
        key = new_key(gw, "team")
        with client(gw, key) as c:
            yield gw, c


def test_changes_and_finished_executions_are_recorded_with_metadata(
    ledger_gw: tuple[Gateway, httpx.Client],
) -> None:
    _gw, c = ledger_gw
    sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
    try:
        assert c.put(f"/v1/sandboxes/{sid}/files/data.txt", content=b"1").status_code == 201
        assert c.put("/v1/secrets/api", json={"value": "do-not-log-this"}).status_code == 201
        command = "echo ran; exit 3"
        meta = {"prompt_id": "p-42", "model": "m-1", "agent_run": "r-7", "step": 3}
        out = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": command, "metadata": meta})
        eid = out.json()["execution_id"]
        records = c.get("/v1/audit", params={"limit": 1000}).json()["records"]
    finally:
        c.delete(f"/v1/sandboxes/{sid}")
    by_action = {(r["action"], r["target"]): r for r in records}
    create = by_action[("sandbox.create", sid)]
    assert create["tenant"] == "team" and create["key_id"] is not None
    start, finish = by_action[("exec.start", eid)], by_action[("exec.finish", eid)]
    digest = hashlib.sha256(command.encode()).hexdigest()
    assert start["detail"]["sha256"] == digest == finish["detail"]["sha256"]
    assert start["metadata"] == meta == finish["metadata"]
    assert finish["detail"]["status"] == "exited" and finish["detail"]["exit_code"] == 3
    assert by_action[("secret.put", "api")]["detail"] == {"name": "api", "created": True}
    assert ("http PUT /v1/sandboxes/{sid}/files/{path:path}", sid) in by_action
    assert any(r["action"] == "key.create" for r in records)  # made by the CLI
    assert "do-not-log-this" not in json.dumps(records)
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs)
    deleted = c.get("/v1/audit", params={"after": seqs[-1]}).json()["records"]
    assert [r["action"] for r in deleted] == ["sandbox.delete"]


def test_pages_the_export_and_the_tail_agree(ledger_gw: tuple[Gateway, httpx.Client]) -> None:
    gw, c = ledger_gw
    for i in range(5):
        assert c.put(f"/v1/secrets/page-{i}", json={"value": f"value-{i}-xx"}).status_code == 201
    paged, after = [], 0
    while True:
        page = c.get("/v1/audit", params={"after": after, "limit": 2}).json()
        paged += page["records"]
        assert len(page["records"]) <= 2
        if page["next"] is None:
            break
        after = page["next"]
    exported = [json.loads(line) for line in cli(gw, "audit", "export").stdout.splitlines()]
    assert [r["hash"] for r in exported] == [r["hash"] for r in paged]  # one tenant: all
    for record in exported:  # anyone can check the chain from the export alone
        assert chain_hash(record["prev_hash"], record) == record["hash"]
    verdict = cli(gw, "audit", "verify")
    assert verdict.returncode == 0 and verdict.stdout.startswith("ok:"), verdict.stderr

    # The tail: resumable after a seq, and live.
    middle = paged[len(paged) // 2]["seq"]
    resumed = sse_for(c, "/v1/audit/events", 1.0, headers={"Last-Event-ID": str(middle)})
    assert [int(e["id"]) for e in resumed] == [r["seq"] for r in paged if r["seq"] > middle]
    assert all(e["event"] == "audit" for e in resumed)
    later = threading.Timer(0.7, lambda: c.put("/v1/secrets/live", json={"value": "live-value"}))
    later.start()
    live = sse_for(c, f"/v1/audit/events?after={paged[-1]['seq']}", 3.0)
    later.join()
    assert [e["data"]["target"] for e in live] == ["live"], live


def _copy_data_dir(gw: Gateway) -> Path:
    """A consistent copy of the gateway's database (SQLite's backup API), to tamper with."""
    copy = Path(tempfile.mkdtemp(prefix="petri-audit-copy-"))
    (copy / "instance-id").write_text("copy")
    src = sqlite3.connect(gw.data_dir / "petri.sqlite3")
    dst = sqlite3.connect(copy / "petri.sqlite3")
    src.backup(dst)
    src.close()
    dst.close()
    return copy


def _verify(gw: Gateway, data_dir: Path) -> tuple[int, str]:
    env = {**gw.env, "PETRI_DATA_DIR": str(data_dir)}
    copy = Gateway(gw.url, data_dir, gw.workspace_root, env, gw.port)
    done = cli(copy, "audit", "verify")
    return done.returncode, done.stdout + done.stderr


TAMPERING: dict[str, Callable[[sqlite3.Connection], None]] = {
    "tampered": lambda db: db.execute(
        "UPDATE audit SET detail = '{\"name\":\"other\"}' WHERE seq = 3"
    ),
    "deleted": lambda db: db.execute("DELETE FROM audit WHERE seq = 3"),
    "deleted first": lambda db: db.execute("DELETE FROM audit WHERE seq = 1"),
    "reordered": lambda db: db.executescript(
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4;"
        "UPDATE audit SET seq = 4 WHERE seq = -3;"
    ),
    "rehashed alone": lambda db: db.execute(  # a forger who fixes one hash breaks the next link
        "UPDATE audit SET detail = '{}', hash = '" + "a" * 64 + "' WHERE seq = 3"
    ),
}
EXPECTED = {"tampered": 3, "deleted": 4, "deleted first": 2, "reordered": 3, "rehashed alone": 3}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_a_tampered_deleted_or_reordered_record_is_caught(
    ledger_gw: tuple[Gateway, httpx.Client], how: str
) -> None:
    gw, c = ledger_gw
    while len(c.get("/v1/audit").json()["records"]) < 6:
        c.put(f"/v1/secrets/fill-{time.monotonic_ns()}", json={"value": "filler-value"})
    copy = _copy_data_dir(gw)
    try:
        assert _verify(gw, copy)[0] == 0
        db = sqlite3.connect(copy / "petri.sqlite3", isolation_level=None)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET tenant = 'x' WHERE seq = 2")  # the table refuses
        db.execute("DROP TRIGGER audit_append_only")  # someone with the file does it anyway
        db.execute("DROP TRIGGER audit_no_delete")
        TAMPERING[how](db)
        db.close()
        code, said = _verify(gw, copy)
        assert code == 1, said
        assert f"record {EXPECTED[how]}" in said, said
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_sigkill_mid_write_leaves_a_ledger_that_verifies(docker_ready: None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="petri-audit-kill-"))
    gw = make_gateway(tmp)
    try:
        gw.start()
        key = new_key(gw, "crash")
        with client(gw, key, timeout=30) as c:
            sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
            running = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "sleep 120",
                                                                "wait": False})
            eid = running.json()["execution_id"]
            stop = threading.Event()
            sent: list[int] = []

            def hammer(offset: int) -> None:
                with client(gw, key, timeout=5) as h:
                    i = offset
                    while not stop.is_set():
                        try:
                            h.put(f"/v1/secrets/k{i}", json={"value": f"value-{i}-pad"})
                            h.post(f"/v1/sandboxes/{sid}/files", files={"file": (f"f{i}", b"x")})
                        except httpx.HTTPError:
                            return
                        sent.append(i)
                        i += 2

            workers = [threading.Thread(target=hammer, args=(n,)) for n in (0, 1)]
            for w in workers:
                w.start()
            wait_for(lambda: len(sent) > 40, 60, "writes under way")
            assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
            stop.set()
            for w in workers:
                w.join(10)
        said = cli(gw, "audit", "verify")
        assert said.returncode == 0, said.stdout + said.stderr
        db = sqlite3.connect(gw.data_dir / "petri.sqlite3")
        stored = {r[0] for r in db.execute("SELECT name FROM secrets")}
        recorded = {r[0] for r in db.execute("SELECT target FROM audit WHERE action='secret.put'")}
        db.close()
        assert stored and stored <= recorded, sorted(stored - recorded)[:5]
        # After the restart the interrupted run is recorded as finished, and the chain goes on.
        gw.start()
        with client(gw, key, timeout=30) as c:
            ended = c.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
            assert ended["status"] == "interrupted"
            records = c.get("/v1/audit", params={"limit": 1000})
            finish = [r for r in records.json()["records"]
                      if r["action"] == "exec.finish" and r["target"] == eid]
            while records.json()["next"] is not None and not finish:
                records = c.get("/v1/audit", params={"limit": 1000,
                                                     "after": records.json()["next"]})
                finish = [r for r in records.json()["records"]
                          if r["action"] == "exec.finish" and r["target"] == eid]
            assert finish and finish[0]["detail"]["status"] == "interrupted"
            c.delete(f"/v1/sandboxes/{sid}")
        said = cli(gw, "audit", "verify")
        assert said.returncode == 0, said.stdout + said.stderr
    finally:
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)
