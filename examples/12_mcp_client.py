"""Petri's MCP tools from the official MCP client, the way Claude Code or Cursor use them:
`petri mcp` over stdio (it talks to the gateway at PETRI_URL). Output arrives as progress
notifications while a tool runs.

    PETRI_URL=http://127.0.0.1:8000 python examples/12_mcp_client.py

Over HTTP instead: `Client(f"{PETRI_URL}/mcp")` (the gateway serves the same tools there).
"""

import asyncio
import os
import sys

from mcp import Client, StdioServerParameters

server = StdioServerParameters(
    command=sys.executable,
    args=["-m", "gateway", "mcp"],
    env={**os.environ, "PETRI_URL": os.environ.get("PETRI_URL", "http://127.0.0.1:8000")},
)


async def progress(value: float, total: float | None, message: str | None) -> None:
    print("  progress:", (message or "").rstrip())


async def main() -> None:
    async with Client(server) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(sorted(t.name for t in tools.tools)))
        made = await client.call_tool("create_sandbox", {"language": "python"})
        sid = made.structured_content["sandbox_id"]
        try:
            await client.call_tool(
                "write_file",
                {"sandbox_id": sid, "path": "hello.py", "content": "print('hello from MCP')\n"},
            )
            ran = await client.call_tool(
                "run_command",
                {"sandbox_id": sid, "command": "python hello.py; exit 3"},
                progress_callback=progress,
            )
            result = ran.structured_content
            print("exit code:", result["exit_code"], "stdout:", result["stdout"].strip())
            assert result["exit_code"] == 3 and result["stdout"] == "hello from MCP\n"
        finally:
            await client.call_tool("delete_sandbox", {"sandbox_id": sid})


asyncio.run(main())
