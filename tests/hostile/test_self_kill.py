"""A program that turns on its own parent, its process group, every process it can see, PID 1,
or the gateway's bookkeeping (the pid file of its group). Whatever it does, the stream ends
with exactly one terminal event, and the sandbox stays usable (in the same container)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import Gateway
from tests.sse import text

from .conftest import MakeSandbox, assert_gateway_fine, assert_usable, container, stream

pytestmark = pytest.mark.docker

CASES = {
    # An exec's parent is outside the sandbox's PID namespace: $PPID is 0, the own group.
    "kill-ppid": ("kill -9 $PPID; echo not-reached", 137, False),
    "kill-own-group": ("sleep 60 & kill -9 0; echo not-reached", 137, False),
    "kill-everything": ("sleep 60 & kill -9 -1; echo survived", 0, False),
    "kill-pid-1": (
        "for s in TERM KILL HUP INT QUIT USR1 USR2 CHLD ALRM PIPE; do kill -$s 1; done; echo lives",
        0,
        False,
    ),
    "kill-the-parent-shell": (
        "python3 -c 'import os; os.kill(os.getppid(), 9)'; echo not-reached",
        137,
        False,
    ),
    "stop-itself": ("echo stopping; kill -STOP $$; echo not-reached", 137, True),
    "close-output-and-hang": ("echo bye; exec >&- 2>&-; sleep 60", 137, True),
    "delete-the-pid-file": ("rm -f /tmp/.petri-*.pid; echo gone; sleep 60", 137, True),
    "forge-the-pid-file": ("for f in /tmp/.petri-*.pid; do echo 1 > $f; done; sleep 60", 137, True),
    "daemonize-and-leave": ("setsid sleep 300 < /dev/null > /dev/null 2>&1 & echo left", 0, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_program_attacking_its_parents_ends_cleanly(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, case: str
) -> None:
    command, exit_code, times_out = CASES[case]
    sid = box()["id"]
    before = container(hostile_gateway, sid)
    started = time.monotonic()
    events = stream(hc, sid, command=command, timeout_seconds=3)  # one terminal event, last
    took = time.monotonic() - started
    end = events[-1]
    assert end.type == "exit", end
    assert end.data["exit_code"] == exit_code, (case, end.data, text(events, "stderr"))
    assert end.data["timed_out"] is times_out, end.data
    assert "not-reached" not in text(events, "stdout")
    assert took < 20, took
    eid = events[0].data["execution_id"]
    record = hc.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
    assert record["status"] == ("timed_out" if times_out else "exited"), record
    assert_usable(hc, sid)
    # PID 1 (and so the container) survived: same container, never restarted.
    after = container(hostile_gateway, sid)
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert after["RestartCount"] == 0
    assert_gateway_fine(hostile_gateway, hc)


def test_kill_while_it_fights_back(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox
) -> None:
    """The API's kill works on a program that hides from its group and forges its pid file."""
    sid = box()["id"]
    command = (
        "for f in /tmp/.petri-*.pid; do echo 1 > $f; done; "
        "setsid sh -c 'while :; do sleep 1; done' & echo started; wait"
    )
    eid = hc.post(
        f"/v1/sandboxes/{sid}/exec", json={"command": command, "wait": False, "timeout_seconds": 60}
    ).json()["execution_id"]
    time.sleep(1)
    started = time.monotonic()
    r = hc.post(f"/v1/sandboxes/{sid}/executions/{eid}/kill")
    assert r.status_code == 202, r.text
    events = stream(hc, sid, command="true")  # the sandbox runs the next exec
    assert events[-1].data["exit_code"] == 0
    record = hc.get(f"/v1/sandboxes/{sid}/executions/{eid}").json()
    assert record["status"] == "killed" and time.monotonic() - started < 15, record
    assert_usable(hc, sid)
