"""Sandbox lifecycle against real Docker: hardened container, registry row, workspace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, container_ids

pytestmark = pytest.mark.docker


def inspect(name_or_id: str) -> dict[str, Any] | None:
    out = subprocess.run(["docker", "inspect", name_or_id], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    found: list[dict[str, Any]] = json.loads(out.stdout)
    return found[0]


def test_create_starts_one_hardened_container(client: httpx.Client, gateway: Gateway) -> None:
    r = client.post(
        "/v1/sandboxes",
        json={"language": "python", "env": {"A": "1"}, "limits": {"memory_mb": 256, "pids": 64}},
    )
    assert r.status_code == 201, r.text
    sb = r.json()
    try:
        assert r.headers["location"] == f"/v1/sandboxes/{sb['id']}"
        assert sb["language"] == "python" and sb["status"] == "running"
        assert sb["limits"]["memory_mb"] == 256 and sb["limits"]["pids"] == 64
        assert {"created_at", "last_active_at", "expires_at"} <= set(sb)
        found = container_ids(f"petri.sandbox={sb['id']}")
        assert len(found) == 1
        info = inspect(found[0])
        assert info is not None
        host = info["HostConfig"]
        assert info["Config"]["User"] == "1000:1000"
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] == 256 * 1024 * 1024 and host["MemorySwap"] == host["Memory"]
        assert host["PidsLimit"] == 64 and host["NanoCpus"] > 0
        assert {u["Name"] for u in host["Ulimits"]} == {"nofile", "fsize", "core"}
        assert "/tmp" in host["Tmpfs"]
        mounts = [(m["Source"], m["Destination"]) for m in info["Mounts"]]
        assert mounts == [(str(gateway.workspace_root / sb["id"]), "/sandbox")]
        assert "A=1" in info["Config"]["Env"]
    finally:
        client.delete(f"/v1/sandboxes/{sb['id']}")


def test_get_list_and_paging(client: httpx.Client, new_sandbox: Any) -> None:
    ids = {new_sandbox("python")["id"] for _ in range(3)}
    got = client.get(f"/v1/sandboxes/{next(iter(ids))}")
    assert got.status_code == 200 and got.json()["id"] in ids
    seen: list[str] = []
    after = ""
    while True:
        page = client.get("/v1/sandboxes", params={"limit": 2, "after": after}).json()
        seen += [s["id"] for s in page["sandboxes"]]
        assert len(page["sandboxes"]) <= 2
        if page["next"] is None:
            break
        after = page["next"]
    assert ids <= set(seen) and len(seen) == len(set(seen))


def test_api_calls_renew_last_active(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    before = sandbox["last_active_at"]
    client.post(f"/v1/sandboxes/{sandbox['id']}/exec", json={"command": "true"})
    after = client.get(f"/v1/sandboxes/{sandbox['id']}").json()
    assert after["last_active_at"] > before and after["expires_at"] > sandbox["expires_at"]


def test_delete_leaves_no_container_and_no_workspace(
    client: httpx.Client, gateway: Gateway
) -> None:
    sid = client.post("/v1/sandboxes", json={"language": "node"}).json()["id"]
    client.put(f"/v1/sandboxes/{sid}/files/a.txt", content=b"x")
    workspace = gateway.workspace_root / sid
    assert (workspace / "a.txt").exists()
    assert client.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert container_ids(f"petri.sandbox={sid}") == []
    assert not workspace.exists()
    assert not Path("/proc/mounts").read_text().count(str(workspace))
    assert client.get(f"/v1/sandboxes/{sid}").status_code == 404
    assert client.delete(f"/v1/sandboxes/{sid}").status_code == 404


def test_unknown_language_and_limits_over_the_maximum(client: httpx.Client) -> None:
    r = client.post("/v1/sandboxes", json={"language": "cobol"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_language"
    r = client.post("/v1/sandboxes", json={"language": "python", "limits": {"memory_mb": 10**6}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_too_high"
    r = client.post("/v1/sandboxes", json={"language": "python", "ttl_seconds": 10**9})
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_too_high"
