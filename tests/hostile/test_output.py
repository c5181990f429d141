"""Output attacks: a 1 GB flood, one 50 MB line, binary garbage, NUL bytes and broken UTF-8.
The output budget keeps the head and the tail, says `truncated` once, lets the program run to
its end, and the gateway stays responsive throughout."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Gateway
from tests.sse import Received, text

from .conftest import HOSTILE_SETTINGS, HealthProbe, MakeSandbox, assert_gateway_fine, run, stream

pytestmark = pytest.mark.docker

BUDGET = int(HOSTILE_SETTINGS["output_budget_bytes"])
TAIL = int(HOSTILE_SETTINGS["output_tail_bytes"])
GIB = 1024 * 1024 * 1024


def _assert_truncated_once(events: list[Received]) -> None:
    marks = [e for e in events if e.type == "truncated"]
    assert len(marks) == 1, f"{len(marks)} truncated events"
    assert marks[0].data["budget_bytes"] == BUDGET
    end = events[-1]
    assert end.type == "exit" and end.data["truncated"] is True, end.data
    # The head, then the mark, then the tail: in that order.
    first_out = next(i for i, e in enumerate(events) if e.type in ("stdout", "stderr"))
    assert first_out < events.index(marks[0])


def test_gigabyte_flood_keeps_head_and_tail_and_the_gateway_responsive(
    hostile_gateway: Gateway,
    hc: httpx.Client,
    box: MakeSandbox,
    probe: Callable[[], HealthProbe],
) -> None:
    sid = box()["id"]
    command = (
        f"yes 'petri flood line 0123456789abcdefghijklmnopqrstuvwxyz' | head -c {GIB}; "
        "echo; echo END-OF-FLOOD"
    )
    started = time.monotonic()
    with probe() as health:
        events = stream(hc, sid, command=command, timeout_seconds=300)
    took = time.monotonic() - started
    print(f"\n1 GiB stdout flood: {took:.1f} s end to end ({GIB / took / 1e6:.0f} MB/s)")
    health.check("a 1 GiB stdout flood")
    _assert_truncated_once(events)
    assert events[-1].data["exit_code"] == 0, events[-1].data  # it ran to its own end
    out = text(events, "stdout")
    assert out.startswith("petri flood line 0123456789")
    assert out.endswith("\nEND-OF-FLOOD\n"), out[-200:]
    assert BUDGET <= len(out.encode()) <= BUDGET + TAIL + 4096, len(out)
    assert took < 120, f"a 1 GiB flood took {took:.0f} s"
    # The JSON record agrees, and the sandbox carries on.
    eid = events[0].data["execution_id"]
    record = hc.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
    assert record["truncated"] is True and record["exit_code"] == 0
    assert run(hc, sid, "echo after")["stdout"] == "after\n"
    assert_gateway_fine(hostile_gateway, hc)


def test_single_50mb_line(hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    code = (
        "import sys\nsys.stdout.write('<' + 'x' * (50 * 1024 * 1024) + '>')\n"
        "sys.stdout.write('END\\n')\n"
    )
    events = stream(hc, sid, code=code, timeout_seconds=120)
    _assert_truncated_once(events)
    out = text(events, "stdout")
    assert out.startswith("<xxxx") and out.endswith("xxx>END\n"), out[-100:]
    assert "\n" not in out[:-1]  # never split into lines by the gateway
    assert len(out) <= BUDGET + TAIL + 16
    # JSON mode gets the same truncated result.
    r = hc.post(f"/v1/sandboxes/{sid}/exec", json={"code": code, "timeout_seconds": 120}).json()
    assert r["truncated"] is True and r["stdout"].endswith(">END\n") and r["exit_code"] == 0
    assert_gateway_fine(hostile_gateway, hc)


def test_binary_garbage_on_stdout_and_stderr(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    events = stream(
        hc,
        sid,
        # Each invalid byte becomes U+FFFD (3 bytes of UTF-8): at most 7.5 MB, under the budget.
        command="head -c 2M /dev/urandom; head -c 512K /dev/urandom >&2; echo; echo done",
        timeout_seconds=60,
    )
    # Every event parsed as one JSON object (the strict reader checked) and the run ended.
    assert events[-1].type == "exit" and events[-1].data["exit_code"] == 0
    assert events[-1].data["truncated"] is False
    out, err = text(events, "stdout"), text(events, "stderr")
    assert out.endswith("\ndone\n") and "\ufffd" in out and "\ufffd" in err
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in out + err)  # no lone surrogates


def test_nul_bytes_control_characters_and_broken_utf8(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    r = run(
        hc,
        sid,
        # NUL, an invalid byte, CR, an escape sequence, an encoded surrogate (ED A0 80), and a
        # euro sign split across two writes 200 ms apart (two chunks).
        r"printf 'a\0b\377c\r\n\033[31mred\033[0m \355\240\200 '; printf '\342\202'; "
        r"sleep 0.2; printf '\254\n'",
    )
    assert r["stdout"] == "a\x00b\ufffdc\r\n\x1b[31mred\x1b[0m \ufffd\ufffd\ufffd \u20ac\n", r
    events = stream(hc, sid, command=r"printf 'x\0y\r\n'")
    assert text(events, "stdout") == "x\x00y\r\n"


def test_stdout_and_stderr_flood_together(hc: httpx.Client, box: MakeSandbox) -> None:
    """One budget for both streams, and a tail for each: a flood on stderr can never push
    stdout's last line out, even printed right after the floods."""
    sid = box()["id"]
    events = stream(
        hc,
        sid,
        command=(
            "(yes out | head -c 50M) & (yes err | head -c 50M >&2) & wait; echo tail-out"
        ),
        timeout_seconds=120,
    )
    _assert_truncated_once(events)
    assert text(events, "stdout").endswith("tail-out\n")
    assert events[-1].data["exit_code"] == 0
