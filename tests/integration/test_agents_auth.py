"""The agents' clients on a gateway with keys and tenants (§10 with §11): the SDK sends
`PETRI_API_KEY`, the CLI and `petri mcp` too, `/mcp` takes the caller's `Authorization` to the
API it calls in-process (so a tool sees only its tenant's sandboxes), and per-tenant quotas
arrive as `QuotaExceeded` with `retry_after`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from petri_sdk import QuotaExceeded, Sandbox, SandboxNotFound, Unauthorized
from tests.conftest import ROOT, Gateway, running_gateway
from tests.teams import new_key

pytestmark = pytest.mark.docker


@dataclass
class Keyed:
    gw: Gateway
    alpha: str
    beta: str


@pytest.fixture(scope="module")
def keyed(docker_ready: None) -> Iterator[Keyed]:
    with running_gateway("agents-auth", tenant_max_sandboxes="2") as gw:
        yield Keyed(gw, new_key(gw, "alpha"), new_key(gw, "beta"))


def test_the_sdk_sends_the_key_and_sees_only_its_tenant(
    keyed: Keyed, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = keyed.gw.url
    monkeypatch.delenv("PETRI_API_KEY", raising=False)
    with pytest.raises(Unauthorized) as refused:
        Sandbox.create("python", url=url)
    assert refused.value.status == 401
    monkeypatch.setenv("PETRI_API_KEY", keyed.alpha)  # from the environment
    with Sandbox.create("python", url=url) as sb:
        assert sb.info.data["tenant"] == "alpha"
        assert sb.run_command("echo mine").stdout == "mine\n"
        with pytest.raises(SandboxNotFound):  # another tenant's id looks like no id at all
            Sandbox.connect(sb.id, url=url, api_key=keyed.beta)
        assert sb.id not in [s.id for s in Sandbox.list(url=url, api_key=keyed.beta)]
        # the tenant's quota (2 live sandboxes): 429 with Retry-After, typed
        with Sandbox.create("python", url=url):
            with pytest.raises(QuotaExceeded) as over:
                Sandbox.create("python", url=url)
            assert over.value.code == "quota_exceeded" and over.value.retry_after is not None


def test_the_cli_sends_the_key(keyed: Keyed) -> None:
    def petri(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "PETRI_API_KEY"}
        env.update(PETRI_URL=keyed.gw.url, PYTHONPATH=str(ROOT))
        if key:
            env["PETRI_API_KEY"] = key
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    denied = petri("sandboxes", "ls", key=None)
    assert denied.returncode == 1 and denied.stderr.startswith("petri: unauthorized:")
    assert denied.stderr.count("\n") == 1
    with Sandbox.create("python", url=keyed.gw.url, api_key=keyed.alpha) as sb:
        assert sb.id in petri("sandboxes", "ls", key=keyed.alpha).stdout
        assert sb.id not in petri("sandboxes", "ls", key=keyed.beta).stdout
        done = petri("exec", sb.id, "--", "echo hi", key=keyed.beta)
        assert done.returncode == 125 and "not_found" in done.stderr


def _http(gw: Gateway, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300))
    return Client(streamable_http_client(f"{gw.url}/mcp", http_client=http))


async def test_mcp_over_http_acts_as_its_caller(keyed: Keyed) -> None:
    gw = keyed.gw
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    as_alpha = {"Authorization": f"Bearer {keyed.alpha}"}
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=30) as rest,
        _http(gw, keyed.alpha) as alpha,
        _http(gw, keyed.beta) as beta,
    ):
        denied = await rest.post("/mcp", json=body, headers=accept)
        assert denied.status_code == 401, denied.text
        made = await alpha.call_tool("create_sandbox", {"language": "python"})
        assert not made.is_error, made.content
        sid = dict(made.structured_content or {})["sandbox_id"]
        try:
            owner = await rest.get(f"/v1/sandboxes/{sid}", headers=as_alpha)
            assert owner.json()["tenant"] == "alpha"
            ran = await alpha.call_tool("run_command", {"sandbox_id": sid, "command": "echo ok"})
            assert dict(ran.structured_content or {})["stdout"] == "ok\n"
            for tool, args in (
                ("run_command", {"command": "echo stolen"}),
                ("read_file", {"path": "x"}),
                ("delete_sandbox", {}),
            ):
                other = await beta.call_tool(tool, {"sandbox_id": sid, **args})
                assert other.is_error, (tool, other.structured_content)
                assert "not_found" in " ".join(getattr(c, "text", "") for c in other.content)
            assert (await rest.get(f"/v1/sandboxes/{sid}", headers=as_alpha)).status_code == 200
        finally:
            await alpha.call_tool("delete_sandbox", {"sandbox_id": sid})


async def test_petri_mcp_over_stdio_sends_the_key(keyed: Keyed) -> None:
    def server(key: str | None) -> StdioServerParameters:
        env = {"PETRI_URL": keyed.gw.url, "PYTHONPATH": str(ROOT)}
        if key:
            env["PETRI_API_KEY"] = key
        return StdioServerParameters(
            command=sys.executable, args=["-m", "gateway", "mcp"], env=env, cwd=str(ROOT)
        )

    async with Client(server(None)) as anon:
        refused = await anon.call_tool("create_sandbox", {"language": "python"})
    assert refused.is_error and "unauthorized" in refused.content[0].text  # type: ignore[union-attr]
    async with Client(server(keyed.alpha)) as alpha:
        made = await alpha.call_tool("create_sandbox", {"language": "python"})
        sid = dict(made.structured_content or {})["sandbox_id"]
        done = await alpha.call_tool("delete_sandbox", {"sandbox_id": sid})
        assert not done.is_error
