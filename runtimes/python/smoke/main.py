"""Petri smoke test: prove the runtime starts and both output streams work."""

import platform
import sys

print(f"petri smoke ok: python {platform.python_version()}")
print("petri smoke: stderr works", file=sys.stderr)
