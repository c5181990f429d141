"""The async twin: two sandboxes at once, typed events as they arrive, callbacks, and a
non-zero exit code that is data, not an exception.

    PETRI_URL=http://127.0.0.1:8000 python examples/11_sdk_async_stream.py
"""

import asyncio

from petri_sdk import AsyncSandbox, ExitEvent, StderrEvent, StdoutEvent


async def python() -> int:
    async with AsyncSandbox.create("python") as sb:
        code = (
            "import sys, time\nfor i in range(3):\n"
            "    print('py', i, flush=True)\n    time.sleep(0.2)\nsys.exit(2)\n"
        )
        async for event in sb.stream(code=code):
            match event:
                case StdoutEvent(text=text):
                    print("[python stdout]", text, end="")
                case StderrEvent(text=text):
                    print("[python stderr]", text, end="")
                case ExitEvent(exit_code=code, duration_ms=ms):
                    print(f"[python] exit {code} after {ms} ms")
                    return code or 0
    return -1


async def node() -> str:
    async with AsyncSandbox.create("node") as sb:
        await sb.files.write("main.js", "console.log('node says', process.argv.slice(2).join(' '))")
        ex = await sb.run_file(
            "main.js", args=["hello", "world"], on_stdout=lambda t: print("[node]", t, end="")
        )
        return ex.stdout


async def main() -> None:
    code, out = await asyncio.gather(python(), node())
    assert code == 2 and out == "node says hello world\n", (code, out)


asyncio.run(main())
