"""Keys and tenants (§11) through a real gateway: keys made by `petri keys create` against its
data dir; every route that takes an id gives another tenant 404 and changes nothing; lists
are filtered; admin keys see all; events tokens read one execution only."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.routes import ROUTES
from tests.conftest import Gateway, running_gateway
from tests.teams import cli, client, new_key, sse_for, wait_for

pytestmark = pytest.mark.docker


@dataclass
class World:
    gw: Gateway
    a: httpx.Client
    b: httpx.Client
    admin: httpx.Client
    anon: httpx.Client
    sid: str  # tenant a's sandbox
    done: str  # a finished execution of it
    live: str  # a running one
    live_url: str  # its 202 events_url (with its token)
    svid: str  # a service of the sandbox (serve mode)


@pytest.fixture(scope="module")
def world(docker_ready: None) -> Iterator[World]:
    with running_gateway("tenancy") as gw:
        keys = {t: new_key(gw, t) for t in ("alpha", "beta")}
        root = new_key(gw, "ops", admin=True)
        with (
            client(gw, keys["alpha"]) as a,
            client(gw, keys["beta"]) as b,
            client(gw, root) as admin,
            client(gw, None) as anon,
        ):
            r = a.post("/v1/sandboxes", json={"language": "python"})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert r.json()["tenant"] == "alpha"
            assert a.put(f"/v1/sandboxes/{sid}/files/keep.txt", content=b"mine").status_code == 201
            secret = a.put("/v1/secrets/alpha-db", json={"value": "alpha-only-value"})
            assert secret.status_code == 201
            done = a.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo alpha"}).json()
            live = a.post(
                f"/v1/sandboxes/{sid}/exec", json={"command": "sleep 300", "wait": False}
            )
            assert live.status_code == 202, live.text
            service = a.post(f"/v1/sandboxes/{sid}/services", json={
                "command": "python3 -m http.server 8080", "port": 8080})
            assert service.status_code == 201, service.text
            world = World(
                gw, a, b, admin, anon, sid, done["execution_id"],
                live.json()["execution_id"], live.json()["events_url"], service.json()["id"],
            )
            try:
                yield world
            finally:
                a.post(f"/v1/sandboxes/{sid}/executions/{world.live}/kill")
                a.delete(f"/v1/sandboxes/{sid}")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("planted.txt", "beta was here")
    return buf.getvalue()


# Every route that names a sandbox, an execution or a secret: (method, route, request kwargs).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/sandboxes/{sid}", {}),
    ("DELETE", "/v1/sandboxes/{sid}", {}),
    ("POST", "/v1/sandboxes/{sid}/files", {"files": {"file": ("planted.txt", b"x")}}),
    ("GET", "/v1/sandboxes/{sid}/files", {}),
    ("PUT", "/v1/sandboxes/{sid}/files/{path}", {"content": b"overwritten"}),
    ("GET", "/v1/sandboxes/{sid}/files/{path}", {}),
    ("DELETE", "/v1/sandboxes/{sid}/files/{path}", {}),
    ("POST", "/v1/sandboxes/{sid}/upload", {"content": _zip(),
                                             "headers": {"Content-Type": "application/zip"}}),
    ("POST", "/v1/sandboxes/{sid}/exec", {"json": {"command": "touch /sandbox/planted"}}),
    ("GET", "/v1/sandboxes/{sid}/packages", {}),
    ("GET", "/v1/sandboxes/{sid}/executions", {}),
    ("GET", "/v1/sandboxes/{sid}/executions/{eid}", {}),
    ("GET", "/v1/sandboxes/{sid}/executions/{eid}/events", {}),
    ("POST", "/v1/sandboxes/{sid}/executions/{eid}/kill", {}),
    ("DELETE", "/v1/secrets/{name}", {}),
    ("POST", "/v1/sandboxes/{sid}/services", {"json": {"command": "sleep 60", "port": 9000}}),
    ("GET", "/v1/sandboxes/{sid}/services", {}),
    ("GET", "/v1/sandboxes/{sid}/services/{svid}", {}),
    ("DELETE", "/v1/sandboxes/{sid}/services/{svid}", {}),
]


def test_every_route_with_an_id_is_covered() -> None:
    """A route added later (services, ...) must join CASES: the test fails until it does."""
    routed = {
        (method, route.path.replace(":path}", "}"))
        for route in ROUTES
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD" and ("{" in route.path and route.path.startswith("/v1/"))
    }
    covered = {(m, p) for m, p, _ in CASES} | {("PUT", "/v1/secrets/{name}")}  # own tenant's
    assert routed <= covered, f"routes without a cross-tenant test: {sorted(routed - covered)}"


@pytest.mark.parametrize("method,route,kw", CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
def test_another_tenant_gets_404_and_changes_nothing(
    world: World, method: str, route: str, kw: dict[str, Any]
) -> None:
    eid = world.live if route.endswith("/kill") else world.done
    url = route.format(sid=world.sid, eid=eid, path="keep.txt", name="alpha-db", svid=world.svid)
    r = world.b.request(method, url, **kw)
    assert r.status_code == 404, (url, r.status_code, r.text)
    assert r.json()["error"]["code"].endswith("not_found"), r.text
    # Same answer as for an id that never existed: nothing tells them apart.
    ghost = route.format(sid="sb-0000000000000000", eid="ex-0000000000000000", path="keep.txt",
                         name="no-such-secret", svid="sv-0000000000000000")
    if "{sid}" in route:
        assert world.b.request(method, ghost, **kw).status_code == 404
    # The owner still finds everything as it was.
    a = world.a
    assert a.get(f"/v1/sandboxes/{world.sid}").status_code == 200
    assert a.get(f"/v1/sandboxes/{world.sid}/files/keep.txt").content == b"mine"
    names = {f["path"] for f in a.get(f"/v1/sandboxes/{world.sid}/files").json()["files"]}
    assert "planted.txt" not in names and "planted" not in names
    assert a.get(f"/v1/sandboxes/{world.sid}/executions/{world.live}").json()["status"] == "running"
    assert [s["name"] for s in a.get("/v1/secrets").json()["secrets"]] == ["alpha-db"]
    services = a.get(f"/v1/sandboxes/{world.sid}/services").json()["services"]
    assert [s["id"] for s in services] == [world.svid]
    assert services[0]["status"] in ("starting", "ready"), services


def test_the_owner_and_an_admin_reach_the_same_routes(world: World) -> None:
    for c in (world.a, world.admin):
        assert c.get(f"/v1/sandboxes/{world.sid}").status_code == 200
        assert c.get(f"/v1/sandboxes/{world.sid}/executions/{world.done}").status_code == 200
        events = c.get(f"/v1/sandboxes/{world.sid}/executions/{world.done}/events")
        assert events.status_code == 200 and "alpha" in events.text


def test_lists_are_filtered_and_admins_see_all(world: World) -> None:
    ids = lambda c: {s["id"] for s in c.get("/v1/sandboxes").json()["sandboxes"]}  # noqa: E731
    assert world.sid in ids(world.a)
    assert world.sid not in ids(world.b)
    assert world.sid in ids(world.admin)
    assert world.b.get("/v1/secrets").json()["secrets"] == []
    listed = world.admin.get("/v1/secrets").json()["secrets"]
    admin_names = {(s["tenant"], s["name"]) for s in listed}
    assert ("alpha", "alpha-db") in admin_names
    # The ledger: beta sees none of alpha's records; alpha and the admin do.
    assert not [r for r in world.b.get("/v1/audit").json()["records"] if r["tenant"] == "alpha"]
    alpha = world.a.get("/v1/audit").json()["records"]
    assert {r["action"] for r in alpha} >= {"sandbox.create", "exec.start", "secret.put"}
    assert {r["tenant"] for r in alpha} == {"alpha"}
    assert any(r["tenant"] == "alpha" for r in world.admin.get("/v1/audit").json()["records"])
    tail = sse_for(world.b, "/v1/audit/events", 1.5)
    assert all(e["data"]["tenant"] == "beta" for e in tail), tail


def test_a_tenant_cannot_use_another_tenants_secret(world: World) -> None:
    r = world.b.post("/v1/sandboxes", json={
        "language": "python", "env": {"X": {"secret": "alpha-db"}}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "secret_not_found", r.text
    # Beta's own secret of the same name is its own: alpha's value is untouched.
    assert world.b.put("/v1/secrets/alpha-db", json={"value": "beta-value"}).status_code == 201
    out = world.a.post(f"/v1/sandboxes/{world.sid}/exec", json={
        "command": "test \"$X\" = alpha-only-value && echo same",
        "env": {"X": {"secret": "alpha-db"}}}).json()
    assert out["stdout"] == "same\n", out
    assert world.b.delete("/v1/secrets/alpha-db").status_code == 204


def test_metrics_are_for_admins(world: World) -> None:
    assert world.b.get("/metrics").status_code == 403
    r = world.admin.get("/metrics")
    assert r.status_code == 200 and "petri_http_requests_total" in r.text


def test_no_key_bad_key_and_revoked_key_are_401(world: World) -> None:
    for path in ("/v1/sandboxes", f"/v1/sandboxes/{world.sid}", "/v1/audit", "/metrics",
                 "/openapi.json", "/v1/secrets"):
        r = world.anon.get(path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    for header in ("Basic YWxhZGRpbjpvcGVu", "Bearer", "Bearer petri_0123456789ab_" + "A" * 43,
                   "Bearer not-a-key"):
        r = world.anon.get("/v1/sandboxes", headers={"Authorization": header})
        assert r.status_code == 401, header
    for path in ("/healthz", "/readyz", "/"):  # probes and the dashboard page stay open
        assert world.anon.get(path).status_code == 200, path
    key = new_key(world.gw, "gamma")
    with client(world.gw, key) as gamma:
        assert gamma.get("/v1/sandboxes").status_code == 200
        key_id = key.split("_")[1]
        revoked = cli(world.gw, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        r = gamma.get("/v1/sandboxes")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    listing = cli(world.gw, "keys", "ls").stdout
    assert key_id in listing and "gamma" in listing and key not in listing


def test_the_events_token_reads_that_execution_only(world: World) -> None:
    url = world.live_url
    assert "?token=" in url
    token = url.partition("?token=")[2]
    first = sse_for(world.anon, url, 1.5)
    assert first and first[0]["event"] == "start", first
    other = f"/v1/sandboxes/{world.sid}/executions/{world.done}/events?token={token}"
    assert world.anon.get(other).status_code == 401
    for path in (f"/v1/sandboxes/{world.sid}", f"/v1/sandboxes/{world.sid}/executions",
                 f"/v1/sandboxes/{world.sid}/executions/{world.live}"):
        assert world.anon.get(f"{path}?token={token}").status_code == 401, path
    kill = world.anon.post(f"/v1/sandboxes/{world.sid}/executions/{world.live}/kill?token={token}")
    assert kill.status_code == 401
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert world.anon.get(url.replace(token, tampered)).status_code == 401
    # Another tenant's key and the token together: the key decides, and it is 404.
    assert world.b.get(url).status_code == 404


@pytest.fixture(scope="module")
def tight(docker_ready: None) -> Iterator[tuple[Gateway, str, str]]:
    with running_gateway(
        "quotas", tenant_max_sandboxes="1", tenant_max_running="1", events_token_seconds="2"
    ) as gw:
        yield gw, new_key(gw, "one"), new_key(gw, "two")


def test_quotas_answer_429_with_retry_after(tight: tuple[Gateway, str, str]) -> None:
    gw, one_key, two_key = tight
    with client(gw, one_key) as one, client(gw, two_key) as two:
        sid = one.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            r = one.post("/v1/sandboxes", json={"language": "python"})
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "quota_exceeded"
            assert int(r.headers["retry-after"]) > 0
            # Another tenant has a quota of its own.
            other = two.post("/v1/sandboxes", json={"language": "python"})
            assert other.status_code == 201, other.text
            two.delete(f"/v1/sandboxes/{other.json()['id']}")
            live = one.post(f"/v1/sandboxes/{sid}/exec", json={"command": "sleep 60",
                                                               "wait": False})
            assert live.status_code == 202
            r = one.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo 2"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
            assert int(r.headers["retry-after"]) > 0
            eid = live.json()["execution_id"]
            # The events token lives PETRI_EVENTS_TOKEN_SECONDS (2 s here).
            url = live.json()["events_url"]
            assert sse_for(gw.client(), url, 0.5)
            time.sleep(3)
            expired = gw.client().get(url)
            assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
            assert one.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill").status_code == 202
            wait_for(
                lambda: one.post(f"/v1/sandboxes/{sid}/exec", json={"command": "echo 3"})
                .status_code == 200,
                30,
                "a free execution slot after the kill",
            )
        finally:
            one.delete(f"/v1/sandboxes/{sid}")
