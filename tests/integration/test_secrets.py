"""Write-only secrets (§11) through a real gateway: never returned, encrypted at rest with a
0600 key file, used by reference, and masked (plain, base64, URL-encoded) in every event,
stored log, result and install output before anything is stored or sent, also when a value
is split across two writes. Never in the registry, the ledger or the gateway's logs."""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Gateway, cleanup_containers, make_gateway, remove_tree
from tests.index import Server, write_simple_index
from tests.sse import stream_events, text
from tests.teams import new_key

pytestmark = pytest.mark.docker

VALUE = "zq-secret-pkg-4711"  # also a valid requirement name: pip prints it when it fails
ODD = "p@ss w/rd+ünï"  # URL-encodes differently with quote and quote_plus


@pytest.fixture(scope="module")
def world(docker_ready: None) -> Iterator[tuple[Gateway, httpx.Client, Server]]:
    tmp = Path(tempfile.mkdtemp(prefix="petri-secrets-"))
    (tmp / "index").mkdir()
    write_simple_index(tmp / "index", "petri-nothing", [])
    index = Server(tmp / "index").start()
    (tmp / "gw").mkdir()
    gw = make_gateway(
        tmp / "gw",
        egress_allow=f"127.0.0.1:{index.port}",
        install_timeout_seconds="120",
        log_level="info",
        log_format="json",
    )
    try:
        gw.start()
        key = new_key(gw, "sec")
        with gw.client(headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
            assert c.put("/v1/secrets/pkg", json={"value": VALUE}).status_code == 201
            assert c.put("/v1/secrets/odd", json={"value": ODD}).status_code == 201
            yield gw, c, index
    finally:
        gw.stop()
        index.stop()
        cleanup_containers(tmp / "gw")
        remove_tree(tmp)


def _sandbox(c: httpx.Client, **body: object) -> str:
    r = c.post("/v1/sandboxes", json={"language": "python", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _leaks(blob: str, value: str) -> list[str]:
    raw = value.encode()
    forms = {
        value,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        quote(value, safe=""),
    }
    return [f for f in forms if f in blob]


def test_the_api_never_returns_a_value(world: tuple[Gateway, httpx.Client, Server]) -> None:
    gw, c, _ = world
    listed = c.get("/v1/secrets").json()["secrets"]
    assert {s["name"] for s in listed} >= {"pkg", "odd"}
    assert set(listed[0]) == {"tenant", "name", "created_at", "updated_at"}
    assert VALUE not in c.get("/v1/secrets").text
    assert c.get("/v1/secrets/pkg").status_code in (404, 405)  # there is no way to read one
    again = c.put("/v1/secrets/pkg", json={"value": VALUE})
    assert again.status_code == 200 and again.json() == {"name": "pkg", "created": False}
    for bad in ({"value": "abc"}, {"value": 5}, {"value": "x\u0000yz1"}, {"val": "abcd"}, {}):
        assert c.put("/v1/secrets/pkg", json=bad).status_code == 422, bad
    assert c.put("/v1/secrets/bad%20name", json={"value": "abcdef"}).status_code == 422
    assert c.delete("/v1/secrets/nope").status_code == 404
    # At rest: the key file is 0600, and no file of the data dir holds the value in clear.
    mode = stat.S_IMODE(os.stat(gw.data_dir / "secrets.key").st_mode)
    assert mode == 0o600, oct(mode)
    for path in gw.data_dir.iterdir():
        if path.is_file():
            data = path.read_bytes()
            assert VALUE.encode() not in data and ODD.encode() not in data, path


def test_values_are_masked_in_events_results_and_the_ledger(
    world: tuple[Gateway, httpx.Client, Server],
) -> None:
    gw, c, _ = world
    sid = _sandbox(c, env={"PKG": {"secret": "pkg"}})
    try:
        sandbox = c.get(f"/v1/sandboxes/{sid}").json()
        assert sandbox["secret_env"] == {"PKG": {"secret": "pkg"}} and "PKG" in sandbox["env"]
        script = (
            'printf "%s\\n" "$PKG"; printf "%s" "$PKG" | base64; '
            'python -c "import os,urllib.parse as u;print(u.quote(os.environ[\'ODD\'],safe=\'\'))";'
            'python -c "import os,urllib.parse as u;print(u.quote_plus(os.environ[\'ODD\']))";'
            'printf "%s" "user:$PKG" | base64; echo "$ODD" >&2; '
            # split across two writes, with a pause between them
            'python -c "import os,sys,time;v=os.environ[\'PKG\'];'
            'sys.stdout.write(v[:7]);sys.stdout.flush();time.sleep(0.4);print(v[7:])"'
        )
        body = {"command": script, "env": {"ODD": {"secret": "odd"}},
                "metadata": {"note": f"oops {VALUE}"}}
        events = stream_events(c, "POST", f"/v1/sandboxes/{sid}/exec", json=body)
        stdout, stderr = text(events, "stdout"), text(events, "stderr")
        for event in events:
            blob = json.dumps(event.data, ensure_ascii=False)
            assert not _leaks(blob, VALUE) and not _leaks(blob, ODD), event
            assert VALUE[:7] not in blob, event  # the split value's first half waited
        assert stdout.count("***") == 6, stdout
        assert stderr == "***\n", stderr
        eid = events[0].data["execution_id"]
        # What was stored is what was sent: the replay and the JSON result are masked too.
        replay = c.get(f"/v1/sandboxes/{sid}/executions/{eid}/events").text
        assert not _leaks(replay, VALUE) and not _leaks(replay, ODD)
        result = c.post(f"/v1/sandboxes/{sid}/exec", json=body).json()
        assert result["stdout"].count("***") == 6 and not _leaks(json.dumps(result), VALUE)
        ledger = c.get("/v1/audit", params={"limit": 1000}).text
        assert not _leaks(ledger, VALUE) and not _leaks(ledger, ODD)
        assert "oops ***" in ledger
    finally:
        c.delete(f"/v1/sandboxes/{sid}")
    for path in [*gw.data_dir.iterdir(), gw.log_path]:
        assert path is not None
        if path.is_file():
            data = path.read_bytes()
            assert VALUE.encode() not in data and ODD.encode() not in data, path


def test_install_output_is_masked(world: tuple[Gateway, httpx.Client, Server]) -> None:
    _gw, c, index = world
    sid = _sandbox(c, env={"PIP_INDEX_URL": f"{index.url}/simple", "PKG": {"secret": "pkg"}})
    try:
        # pip names the requirement it cannot find: the secret's value, here.
        put = c.put(f"/v1/sandboxes/{sid}/files/requirements.txt", content=f"{VALUE}\n".encode())
        assert put.status_code == 201
        events = stream_events(c, "POST", f"/v1/sandboxes/{sid}/exec",
                               json={"code": "print(1)"})
        install = text(events, "install")
        assert "***" in install and events[-1].type == "error", [e.type for e in events]
        assert events[-1].data["code"] == "install_failed"
        for event in events:
            assert not _leaks(json.dumps(event.data, ensure_ascii=False), VALUE), event
    finally:
        c.delete(f"/v1/sandboxes/{sid}")


def test_a_missing_secret_is_refused_before_anything_runs(
    world: tuple[Gateway, httpx.Client, Server],
) -> None:
    _, c, _ = world
    r = c.post("/v1/sandboxes", json={"language": "python", "env": {"X": {"secret": "nope"}}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "secret_not_found"
    r = c.post("/v1/sandboxes", json={"language": "python", "env": {"X": {"secret": "a b"}}})
    assert r.status_code == 422
    sid = _sandbox(c)
    try:
        r = c.post(f"/v1/sandboxes/{sid}/exec",
                   json={"command": "true", "env": {"X": {"secret": "nope"}}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "secret_not_found"
        assert c.get(f"/v1/sandboxes/{sid}/executions").json()["executions"] == []
    finally:
        c.delete(f"/v1/sandboxes/{sid}")


def test_json_logs_carry_the_request_id_and_no_secret(
    world: tuple[Gateway, httpx.Client, Server],
) -> None:
    gw, c, _ = world
    r = c.get("/v1/secrets", headers={"X-Request-Id": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    mine = c.get("/v1/secrets").headers["x-request-id"]
    assert len(mine) == 16
    refused = httpx.get(f"{gw.url}/v1/secrets", headers={"X-Request-Id": "bad id"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] != "bad id"
    assert gw.log_path is not None
    lines = [ln for ln in gw.log_path.read_text().splitlines() if ln.strip()]
    entries = [json.loads(ln) for ln in lines]  # every line is one JSON object
    access = [e for e in entries if e["logger"] == "petri.access"]
    assert any(e.get("request_id") == mine and e["path"] == "/v1/secrets" for e in access)
    assert any(e.get("request_id") == "trace-abc.123" for e in access)
    assert all("?token=" not in e["message"] for e in access)
