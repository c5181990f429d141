"""The MCP server with the official MCP client, over stdio (`petri mcp`, a subprocess talking
to a real gateway) and over streamable HTTP (`/mcp` on the gateway): every tool, live output
as progress notifications, results that keep stdout, stderr, exit code and tests apart, and
errors a model can act on."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import ROOT, Gateway, free_port

pytestmark = pytest.mark.docker

TOOLS = {
    "create_sandbox",
    "run_code",
    "run_command",
    "write_file",
    "read_file",
    "list_files",
    "run_tests",
    "start_service",
    "stop_service",
    "kill_execution",
    "delete_sandbox",
}


def stdio(url: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway", "mcp"],
        env={"PETRI_URL": url, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(getattr(c, "text", "") for c in result.content)


async def scenario(client: Client) -> None:
    """One agent's session: every tool."""
    listed = await client.list_tools()
    assert {t.name for t in listed.tools} == TOOLS
    for tool in listed.tools:
        assert tool.description and len(tool.description) > 40, tool.name
        props = tool.input_schema.get("properties", {})
        assert all(p.get("description") for p in props.values()), (tool.name, props)

    sb = await call(client, "create_sandbox", language="python")
    sid = sb["sandbox_id"]
    assert sid.startswith("sb-") and sb["workspace"] == "/sandbox"
    try:
        written = await call(
            client,
            "write_file",
            sandbox_id=sid,
            path="app/calc.py",
            content="def add(a, b):\n    return a + b\n",
        )
        assert written == {"path": "app/calc.py", "size": 32}
        await call(client, "write_file", sandbox_id=sid, path="conftest.py", content="")
        await call(
            client,
            "write_file",
            sandbox_id=sid,
            path="tests/test_calc.py",
            content="from app.calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"
            "\ndef test_bad():\n    assert add(1, 1) == 3\n",
        )
        files = await call(client, "list_files", sandbox_id=sid)
        assert {f["path"] for f in files["files"]} == {
            "app/calc.py",
            "conftest.py",
            "tests/test_calc.py",
        }
        assert (await call(client, "list_files", sandbox_id=sid, path="app"))["files"] == [
            {"path": "app/calc.py", "size": 32}
        ]
        read = await call(client, "read_file", sandbox_id=sid, path="app/calc.py")
        assert read["content"].startswith("def add") and read["shortened"] is False

        # live output as progress notifications, while the tool runs
        notes: list[tuple[float, str]] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            notes.append((time.monotonic(), message or ""))

        code = (
            "import sys, time\nprint('early', flush=True)\ntime.sleep(2)\n"
            "print('late')\nprint('problem', file=sys.stderr)\nsys.exit(3)\n"
        )
        result = await client.call_tool(
            "run_code", {"sandbox_id": sid, "code": code}, progress_callback=progress
        )
        returned = time.monotonic()
        assert not result.is_error, "a non-zero exit is a result, not a tool error"
        out = dict(result.structured_content or {})
        assert (out["exit_code"], out["status"]) == (3, "exited")
        assert out["stdout"] == "early\nlate\n" and out["stderr"] == "problem\n"
        assert out["execution_id"].startswith("ex-")
        messages = [m for _, m in notes]
        assert messages[0] == f"started execution {out['execution_id']} in {sid}"
        early = next(t for t, m in notes if m.startswith("stdout: early"))
        assert returned - early > 1.5, "the output did not arrive while the tool ran"
        assert "stderr: problem\n" in messages

        # the test report apart from stdout
        tests = await call(client, "run_tests", sandbox_id=sid)
        assert tests["exit_code"] == 1 and "test_bad" in tests["stdout"]
        assert tests["tests"]["runner"] == "pytest"
        assert (tests["tests"]["passed"], tests["tests"]["failed"]) == (1, 1)
        assert [f["name"] for f in tests["tests"]["failures"]] == ["test_bad"]
        assert "assert 2 == 3" in (tests["tests"]["failures"][0]["message"] or "")
        # with an app under test that never answers: a tool error with the app's output
        text = await error(
            client,
            "run_tests",
            sandbox_id=sid,
            app_command="echo nope; sleep 60",
            app_port=5000,
            ready_timeout_seconds=2,
        )
        assert "app_not_ready" in text and "nope" in text

        # kill a run that is still going, from a second call on the same session
        started = asyncio.Event()
        eids: list[str] = []

        async def seen(value: float, total: float | None, message: str | None) -> None:
            if message and (m := re.match(r"started execution (ex-\w+)", message)):
                eids.append(m.group(1))
            if message and message.startswith("stdout: up"):
                started.set()

        running = asyncio.ensure_future(
            client.call_tool(
                "run_command",
                {"sandbox_id": sid, "command": "echo up; sleep 60"},
                progress_callback=seen,
            )
        )
        await asyncio.wait_for(started.wait(), 60)
        killed = await call(client, "kill_execution", sandbox_id=sid, execution_id=eids[0])
        assert eids[0] in killed["detail"]
        end = await asyncio.wait_for(running, 60)
        assert dict(end.structured_content or {})["killed"] is True

        # a service: started, answering at its preview URL, stopped
        await call(client, "write_file", sandbox_id=sid, path="index.html", content="<p>up</p>")
        svc = await call(
            client,
            "start_service",
            sandbox_id=sid,
            command="python3 -m http.server 8000",
            port=8000,
            ready_path="/",
        )
        assert svc["status"] == "ready" and svc["service_id"].startswith("sv-")
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(svc["preview_url"])).text == "<p>up</p>"
            stopped = await call(
                client, "stop_service", sandbox_id=sid, service_id=svc["service_id"]
            )
            assert svc["service_id"] in stopped["detail"]
            assert (await http.get(svc["preview_url"])).status_code in (404, 410)
        text = await error(client, "start_service", sandbox_id=sid, command="exit 1", port=8001)
        assert "ended before it was ready" in text

        # errors a model can act on
        text = await error(client, "read_file", sandbox_id=sid, path="nope.txt")
        assert "no such file" in text
        text = await error(client, "kill_execution", sandbox_id=sid, execution_id=eids[0])
        assert "not_running" in text
        text = await error(client, "run_tests", sandbox_id=sid, app_command="python a.py")
        assert "app_port" in text
        text = await error(client, "create_sandbox", language="cobol")
        assert "language" in text
        text = await error(client, "stop_service", sandbox_id=sid, service_id="sv-nope")
        assert "not" in text.lower()
    finally:
        done = await call(client, "delete_sandbox", sandbox_id=sid)
        assert sid in done["detail"]
    text = await error(client, "run_command", sandbox_id=sid, command="true")
    assert "sandbox_not_found" in text and "create_sandbox" in text


async def test_over_stdio(gateway: Gateway) -> None:
    async with Client(stdio(gateway.url)) as client:
        await scenario(client)


async def test_over_http_on_the_gateway(gateway: Gateway) -> None:
    async with Client(f"{gateway.url}/mcp") as client:
        await scenario(client)


async def test_stdio_without_a_gateway_answers_with_a_clear_tool_error() -> None:
    async with Client(stdio(f"http://127.0.0.1:{free_port()}")) as client:
        text = await error(client, "create_sandbox", language="python")
    assert "cannot reach the Petri gateway" in text and "petri serve" in text


def test_http_refuses_a_foreign_host_header(gateway: Gateway) -> None:
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 cannot drive /mcp."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    foreign = httpx.post(
        f"{gateway.url}/mcp", json=body, timeout=30, headers={**headers, "Host": "evil.example"}
    )
    assert foreign.status_code in (400, 403, 421), foreign.text
    port = gateway.url.rsplit(":", 1)[1]
    origin = httpx.post(
        f"{gateway.url}/mcp",
        json=body,
        timeout=30,
        headers={**headers, "Origin": "http://evil.example"},
    )
    assert origin.status_code in (400, 403), origin.text
    own = httpx.post(
        f"{gateway.url}/mcp",
        json=body,
        timeout=30,
        headers={**headers, "Host": f"localhost:{port}"},
    )
    assert own.status_code != 421 and own.status_code < 500, own.text


async def test_a_flood_cannot_fill_the_model_context(gateway: Gateway) -> None:
    """3 MB of output: the result keeps head and tail of each stream (32,000 characters),
    progress stops after its budget with one notice; stdout and stderr stay apart."""
    sizes: list[int] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        sizes.append(len(message or ""))

    async with Client(f"{gateway.url}/mcp") as client:
        sid = (await call(client, "create_sandbox", language="python"))["sandbox_id"]
        try:
            result = await client.call_tool(
                "run_code",
                {
                    "sandbox_id": sid,
                    "code": "import sys\nsys.stdout.write('a' * 3_000_000)\n"
                    "sys.stdout.write('END')\nsys.stderr.write('e' * 50_000)\n",
                },
                progress_callback=progress,
            )
        finally:
            await call(client, "delete_sandbox", sandbox_id=sid)
    out = dict(result.structured_content or {})
    assert out["exit_code"] == 0 and out["output_shortened"] is True
    assert len(out["stdout"]) < 33_000 and out["stdout"].endswith("END")
    assert "characters left out" in out["stdout"] and "aaa" not in out["stderr"]
    assert out["stderr"].startswith("e" * 5000) and out["stderr"].endswith("e" * 5000)
    assert sum(sizes) < 300_000 + 100 * len(sizes), sum(sizes)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_cancelled_call_kills_its_run(gateway: Gateway, transport: str) -> None:
    target = stdio(gateway.url) if transport == "stdio" else f"{gateway.url}/mcp"
    eids: list[str] = []
    up = asyncio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if message and (m := re.match(r"started execution (ex-\w+)", message)):
            eids.append(m.group(1))
        if message and message.startswith("stdout: up"):
            up.set()

    async with Client(target) as client:
        sid = (await call(client, "create_sandbox", language="python"))["sandbox_id"]
        try:
            task = asyncio.ensure_future(
                client.call_tool(
                    "run_command",
                    {"sandbox_id": sid, "command": "echo up; sleep 120"},
                    progress_callback=progress,
                )
            )
            await asyncio.wait_for(up.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            status = ""
            async with httpx.AsyncClient(timeout=10) as http:
                for _ in range(100):
                    url = f"{gateway.url}/v1/sandboxes/{sid}/executions/{eids[0]}"
                    status = (await http.get(url)).json()["status"]
                    if status != "running":
                        break
                    await asyncio.sleep(0.1)
            assert status == "killed"
        finally:
            await call(client, "delete_sandbox", sandbox_id=sid)
