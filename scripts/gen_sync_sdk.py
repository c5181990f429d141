"""Generate the sync SDK (petri_sdk/_sync/) from the async one (petri_sdk/_async/).

    python scripts/gen_sync_sdk.py           # write petri_sdk/_sync/*.py
    python scripts/gen_sync_sdk.py --check   # exit 1 if a generated file is out of date

One implementation, two twins with the same names and methods (the approach of httpcore's
unasync): words are rewritten (`async def` -> `def`, `await x` -> `x`, `AsyncSandbox` ->
`Sandbox`, ...), lines marked `# async-only` are dropped, and imports are re-sorted with ruff.
`_io.py` is hand-written in both folders: it holds what truly differs (sleep, callbacks,
the awaitable `create`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "petri_sdk" / "_async", ROOT / "petri_sdk" / "_sync"
FILES = ("client.py", "files.py", "services.py", "sandbox.py")

RULES: list[tuple[str, str]] = [
    (r"\bAsyncGenerator\[(\w+), None\]", r"Generator[\1, None, None]"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncSandbox\b", "Sandbox"),
    (r"\bAsyncFiles\b", "Files"),
    (r"\bAsyncServices\b", "Services"),
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncBaseTransport\b", "BaseTransport"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclosing\b", "closing"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"\baiter_bytes\b", "iter_bytes"),
    (r"\baread\(\)", "read()"),
    (r"\baclose\(\)", "close()"),
    (r"\bdef aclose\b", "def close"),
    (r"\bthe async twin\b", "the sync twin"),
]


def convert(text: str, name: str) -> str:
    lines = [line for line in text.splitlines(keepends=True) if "# async-only" not in line]
    out = "".join(lines)
    for pattern, repl in RULES:
        out = re.sub(pattern, repl, out)
    header = (
        f"# Generated from petri_sdk/_async/{name} by scripts/gen_sync_sdk.py: do not edit.\n"
    )
    return header + out


def _sorted_imports(text: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "module.py"
        path.write_text(text)
        subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--quiet", "--fix", "--select", "I",
             "--line-length", "100", "--isolated", str(path)],
            check=False,
            capture_output=True,
        )
        subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--quiet", "--line-length", "100",
             "--isolated", str(path)],
            check=False,
            capture_output=True,
        )
        return path.read_text()


def generate() -> dict[Path, str]:
    return {
        TARGET / name: _sorted_imports(convert((SOURCE / name).read_text(), name))
        for name in FILES
    }


def main(argv: list[str]) -> int:
    stale = []
    for path, text in generate().items():
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python scripts/gen_sync_sdk.py):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
