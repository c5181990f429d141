"""`server.tune_malloc`: the gateway's buffers of 128 KiB-4 MiB come from glibc's heap, not
from a fresh `mmap` each (and page faults on every touch), in a process like the gateway's."""

from __future__ import annotations

import subprocess
import sys

# Counts the blocks glibc serves by `mmap` (mallinfo2's `hblks`) around a 1 MiB buffer.
PROBE = """
import ctypes, sys
from gateway.server import tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblks
buf = bytearray(1024 * 1024)
print(tuned, libc.mallinfo2().hblks - before)
"""


def probe(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_a_1_mib_buffer_comes_from_the_heap_once_tuned() -> None:
    assert probe("default") == "None 1"  # glibc's default: a block of its own, by mmap
    assert probe("tuned") == "True 0"
