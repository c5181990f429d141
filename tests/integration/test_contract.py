"""What the README promises about the wire, checked through the paths clients use: which
bodies are JSON (415 for the rest), that a refused request changes nothing, that a kill can
be told from any other SIGKILL in the stream, the JSON result and the record, and that the
SDK's timeouts follow the run instead of a fixed number."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.registry import instance_id
from petri_sdk import RequestTimeout, Sandbox, StdoutEvent
from tests.conftest import Gateway, container_ids
from tests.sse import check_sequence, parse_wire, stream_events

pytestmark = pytest.mark.docker


def _error_code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    code: str = r.json()["error"]["code"]
    return code


def _state(gateway: Gateway, client: httpx.Client) -> tuple[Any, ...]:
    """Everything a create could leave behind: rows, workspace folders, containers."""
    listed = client.get("/v1/sandboxes", params={"limit": 500}).json()["sandboxes"]
    folders = sorted(p.name for p in gateway.workspace_root.iterdir() if p.name != ".images")
    images = sorted(p.name for p in (gateway.workspace_root / ".images").glob("*"))
    mine = container_ids(f"petri.instance={instance_id(gateway.data_dir)}")
    return sorted(s["id"] for s in listed), folders, images, len(mine)


# --- which bodies are JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/json", 201),
        ("Application/JSON; charset=utf-8", 201),
        ("application/vnd.petri+json", 201),
        ("application/x-www-form-urlencoded", 201),  # what `curl -d` sends
        ("text/plain", 415),
        ("text/plain;charset=UTF-8", 415),
        ("application/xml", 415),
        ("text/json+xml", 415),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),  # a body without a Content-Type
    ],
)
def test_json_bodies_and_nothing_else(
    gateway: Gateway, client: httpx.Client, ctype: str | None, status: int
) -> None:
    before = _state(gateway, client)
    headers = {} if ctype is None else {"content-type": ctype}
    r = httpx.post(
        f"{gateway.url}/v1/sandboxes", content=b'{"language": "python"}', headers=headers,
        timeout=120,
    )
    if status == 201:
        assert r.status_code == 201, r.text
        client.delete(f"/v1/sandboxes/{r.json()['id']}")
    else:
        assert _error_code(r, 415) == "unsupported_media_type"
        assert _state(gateway, client) == before


def test_a_form_post_from_a_foreign_web_page_is_refused(
    gateway: Gateway, client: httpx.Client
) -> None:
    """Browsers send form posts cross-site without a CORS preflight: a page on another site
    must not be able to create sandboxes or run code on a gateway it can reach."""
    before = _state(gateway, client)
    form = {"content-type": "application/x-www-form-urlencoded"}
    for origin in ("https://evil.example", "null"):
        r = client.post(
            "/v1/sandboxes", content=b'{"language": "python"}', headers={**form, "origin": origin}
        )
        assert _error_code(r, 415) == "cross_origin_form"
    assert _state(gateway, client) == before
    # The gateway's own origin is not foreign, and JSON from any origin is CORS's business.
    own = client.post(
        "/v1/sandboxes", content=b'{"language": "python"}', headers={**form, "origin": gateway.url}
    )
    assert own.status_code == 201, own.text
    client.delete(f"/v1/sandboxes/{own.json()['id']}")


def test_an_empty_body_without_a_content_type_is_an_empty_object(client: httpx.Client) -> None:
    r = client.post("/v1/sandboxes")
    assert _error_code(r, 422) == "invalid_field" and "language" in r.json()["error"]["message"]


# --- a refused request changes nothing ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"code": "print(1)", "timeout_seconds": 10**6},
        {"code": "print(1)", "idle_timeout_seconds": 10**6},
        {"code": "print(1)", "wait": False, "timeout_seconds": 10**6},
        {"filename": "missing.py", "timeout_seconds": 10**6},
        {"filename": "missing.py"},
        {"code": "print(1)", "stdin": "x" * 1000, "timeout_seconds": 10**6},
    ],
)
def test_a_refused_exec_leaves_the_workspace_as_it_was(
    client: httpx.Client, sandbox: dict[str, Any], body: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    assert client.put(f"/v1/sandboxes/{sid}/files/keep.txt", content=b"x").status_code == 201

    def state() -> tuple[Any, Any]:
        files = client.get(f"/v1/sandboxes/{sid}/files").json()["files"]
        runs = client.get(f"/v1/sandboxes/{sid}/executions").json()["executions"]
        return sorted((f["path"], f["size"]) for f in files), runs

    before = state()
    r = client.post(f"/v1/sandboxes/{sid}/exec", json=body)
    assert r.status_code in (404, 422), r.text
    assert state() == before
    assert not any(path.startswith(".petri/code") for path, _ in before[0])


@pytest.mark.parametrize(
    "body",
    [
        {"language": "python", "ttl_seconds": 10**9},
        {"language": "python", "limits": {"memory_mb": 10**7}},
        {"language": "python", "limits": {"disk_mb": 10**7}},
        {"language": "cobol"},
        {"language": "python", "env": {"1X": "y"}},
    ],
)
def test_a_refused_create_leaves_nothing(
    gateway: Gateway, client: httpx.Client, body: dict[str, Any]
) -> None:
    before = _state(gateway, client)
    assert _error_code(client.post("/v1/sandboxes", json=body), 422)
    assert _state(gateway, client) == before


# --- a kill says so -------------------------------------------------------------------------


def _events_url(sid: str, eid: str) -> str:
    return f"/v1/sandboxes/{sid}/executions/{eid}/events"


def test_a_kill_is_told_from_other_sigkills_everywhere(
    gateway: Gateway, client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    # Killed by the API: the stream, the JSON result of a waiting client, the record.
    results: list[dict[str, Any]] = []

    def wait_for_result() -> None:
        with gateway.client() as own:
            r = own.post(
                f"/v1/sandboxes/{sid}/exec",
                json={"command": "echo started; sleep 300"},
            )
            results.append(r.json())

    waiter = threading.Thread(target=wait_for_result)
    waiter.start()
    got = []
    eid = ""
    while not eid:
        runs = client.get(f"/v1/sandboxes/{sid}/executions").json()["executions"]
        eid = runs[0]["id"] if runs else ""
    with client.stream("GET", _events_url(sid, eid), headers={"Accept": "text/event-stream"}) as r:
        for event in parse_wire(r.iter_lines()):
            got.append(event)
            if event.type == "stdout":
                assert client.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill").status_code == 202
    waiter.join(60)
    check_sequence(got)
    end = got[-1].data
    assert got[-1].type == "exit" and end["killed"] is True, end
    assert end["signal"] == "SIGKILL" and end["exit_code"] == 137 and end["oom_killed"] is False
    record = client.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
    assert record["status"] == "killed" and record["killed"] is True
    assert results and results[0]["killed"] is True and results[0]["status"] == "killed"
    assert results[0]["signal"] == "SIGKILL"

    # A program that SIGKILLs itself: the same exit code and signal, but not `killed`.
    events = stream_events(
        client, "POST", f"/v1/sandboxes/{sid}/exec", json={"command": "kill -9 $$"}
    )
    end = events[-1].data
    assert end["exit_code"] == 137 and end["signal"] == "SIGKILL" and end["killed"] is False
    eid = events[0].data["execution_id"]
    record = client.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
    assert record["status"] == "exited" and record["killed"] is False
    result = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "kill -9 $$"}).json()
    assert result["killed"] is False and result["signal"] == "SIGKILL"


# --- the SDK waits as long as the run may take ----------------------------------------------


def test_sdk_timeouts_follow_the_run(gateway: Gateway, new_sandbox: Callable[..., Any]) -> None:
    """A client timeout of 1 s for ordinary calls: a stream silent for 3 s (no keep-alive
    within that time at the default 15 s) and a 3 s run both finish."""
    sid = new_sandbox()["id"]
    sandbox = Sandbox.connect(sid, url=gateway.url, timeout=1)
    try:
        events = list(sandbox.stream(command="sleep 3; echo streamed"))
        assert events[-1].type == "exit" and events[-1].data["exit_code"] == 0
        assert "".join(e.text for e in events if isinstance(e, StdoutEvent)) == "streamed\n"
        result = sandbox.run_command("sleep 3; echo waited", timeout=30)
        assert result.stdout == "waited\n" and result.exit_code == 0
        with pytest.raises(RequestTimeout):  # ordinary calls keep the client's timeout
            sandbox.client.request(
                "POST", f"/v1/sandboxes/{sid}/exec", json={"command": "sleep 3"}
            )
    finally:
        sandbox.close()
