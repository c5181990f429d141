"""Running Petri for a team (§11): open only on loopback with no key, a refusal to serve
another address without one, Prometheus metrics, and retention of events (410 `expired`)
and of the ledger (still verifiable, from a checkpoint)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ROOT,
    cleanup_containers,
    free_port,
    make_gateway,
    remove_tree,
    running_gateway,
)
from tests.teams import cli, client, new_key, wait_for

pytestmark = pytest.mark.docker


def test_open_on_loopback_until_a_key_exists(docker_ready: None) -> None:
    with running_gateway("open") as gw, gw.client() as anon:
        assert anon.get("/v1/sandboxes").status_code == 200  # a laptop needs no set-up
        key = new_key(gw, "first", admin=True)
        r = anon.get("/v1/sandboxes")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        with client(gw, key) as c:
            assert c.get("/v1/sandboxes").status_code == 200
        # Revoking the only key does not reopen the API.
        assert cli(gw, "keys", "revoke", key.split("_")[1]).returncode == 0
        assert anon.get("/v1/sandboxes").status_code == 401


def test_refuses_a_non_loopback_address_without_a_key(docker_ready: None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="petri-bind-"))
    gw = make_gateway(tmp)
    port = free_port()
    try:
        argv = [sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", str(port)]
        refused = subprocess.run(argv, cwd=ROOT, env=gw.env, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert refused.returncode == 2, refused.stderr
        assert "refusing to serve 0.0.0.0" in refused.stderr
        # PETRI_HOST counts the same as --host.
        env = {**gw.env, "PETRI_HOST": "0.0.0.0"}
        argv_env = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
        assert subprocess.run(argv_env, cwd=ROOT, env=env, capture_output=True, timeout=60,
                              check=False).returncode == 2
        key = new_key(gw, "ops", admin=True)
        gw.env["PETRI_HOST"] = "0.0.0.0"
        gw.start()  # now it serves; even a loopback connection needs the key
        assert httpx.get(f"{gw.url}/v1/sandboxes", timeout=10).status_code == 401
        assert httpx.get(f"{gw.url}/healthz", timeout=10).status_code == 200
        ok = httpx.get(f"{gw.url}/v1/sandboxes", headers={"Authorization": f"Bearer {key}"},
                       timeout=10)
        assert ok.status_code == 200
    finally:
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)


def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_metrics(docker_ready: None) -> None:
    with running_gateway("metrics") as gw, gw.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            before = c.get("/metrics").text
            assert _sample(before, "petri_live_sandboxes") == 1
            assert _sample(before, "petri_pool_size") == 0
            streamed = _sample(before, "petri_sse_events_streamed_total")
            r = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo hi"},
                       headers={"Accept": "text/event-stream"})
            assert r.status_code == 200
            c.post(f"/v1/sandboxes/{sid}/exec", json={"code": "print(2)"})  # an install check
            c.get("/v1/sandboxes/sb-0000000000000000")
            for i in range(3):  # made-up methods share one series
                c.request(f"MADEUP{i}", "/v1/sandboxes")
            after = c.get("/metrics").text
        finally:
            c.delete(f"/v1/sandboxes/{sid}")
        assert _sample(after, "petri_sse_events_streamed_total") >= streamed + 3
        assert _sample(after, "petri_sse_bytes_streamed_total") > 0
        assert _sample(after, 'petri_exec_duration_seconds_count{status="exited"}') == 2
        assert _sample(after, "petri_exec_time_to_first_output_seconds_count") == 2
        assert re.search(r'^petri_install_cache_(hits|misses)_total \d', after, re.M)
        route = 'route="/v1/sandboxes/{sid}/exec",status="200"'
        assert _sample(after, f'petri_http_requests_total{{method="POST",{route}}}') == 2
        # Routes, not raw paths: an id never becomes a series of its own.
        assert 'route="/v1/sandboxes/{sid}",status="404"' in after
        assert "sb-0000000000000000" not in after
        assert 'method="OTHER"' in after and "MADEUP" not in after


def test_events_retention_and_a_ledger_that_verifies_across_its_own(docker_ready: None) -> None:
    with running_gateway(
        "retention",
        events_retention_hours="0.0005",  # 1.8 s
        audit_retention_days="0.00005",  # 4.3 s
        reaper_interval_seconds="0.5",
    ) as gw, gw.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            eid = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo old"}).json()[
                "execution_id"
            ]
            url = f"/v1/sandboxes/{sid}/executions/{eid}/events"
            assert "old" in c.get(url).text
            gone = wait_for(lambda: (r := c.get(url)).status_code == 410 and r, 30, "eviction")
            assert gone.json()["error"]["code"] == "expired"
            assert "retention" in gone.json()["error"]["message"]
            assert c.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()["status"] == "exited"
            # The ledger keeps its own time; once it passed, a checkpoint leads it.
            first = wait_for(
                lambda: (r := c.get("/v1/audit").json()["records"])[0]["action"]
                == "ledger.checkpoint" and r,
                30,
                "a ledger checkpoint",
            )
            assert first[0]["hash"] == first[1]["prev_hash"]
            assert any(r["action"] == "events.evict" for r in first)
            said = cli(gw, "audit", "verify")
            assert said.returncode == 0, said.stdout + said.stderr
        finally:
            c.delete(f"/v1/sandboxes/{sid}")


def test_events_are_kept_within_the_size_cap_oldest_first(docker_ready: None) -> None:
    with running_gateway(
        "retention-size", events_max_mb="0.06", events_retention_hours="0",
        reaper_interval_seconds="0.5",
    ) as gw, gw.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            run = "python -c \"print('x' * 40000)\""
            ids = []
            for _ in range(2):
                ids.append(
                    c.post(f"/v1/sandboxes/{sid}/exec", json={"command": run}).json()[
                        "execution_id"
                    ]
                )
                time.sleep(0.05)
            old, new = (f"/v1/sandboxes/{sid}/executions/{e}/events" for e in ids)
            # A 40 KB event's payload is in its execution's file (gateway/payloads.py).
            files = [gw.data_dir / "payloads" / f"{e}.out" for e in ids]
            wait_for(lambda: c.get(old).status_code == 410, 30, "the oldest evicted")
            time.sleep(1.5)  # a few more passes: the newest stays within the cap
            assert c.get(new).status_code == 200 and "x" * 1000 in c.get(new).text
            assert not files[0].exists() and files[1].exists()
            assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
            assert not files[1].exists()  # its sandbox's deletion takes it along
        finally:
            c.delete(f"/v1/sandboxes/{sid}")
