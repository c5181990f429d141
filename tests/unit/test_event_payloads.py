"""The terminal (and start) events have two definitions on purpose: the gateway's wire model
(gateway/events.py: what it builds) and the SDK's records (petri_sdk/events.py: what a client
parses). The SDK ships to clients without the gateway and imports nothing from it, and the
gateway must not depend on client code, so neither imports the other; these tests pin the
two to each other (and tests/sse.py takes its terminal set from the gateway's)."""

from __future__ import annotations

import dataclasses

import pytest

from gateway import events as ev
from petri_sdk import events as sdk
from tests import sse

PAIRS = [
    (ev.StartData, sdk.StartEvent),
    (ev.ExitData, sdk.ExitEvent),
    (ev.ErrorData, sdk.ErrorEvent),
]


@pytest.mark.parametrize(("wire", "parsed"), PAIRS, ids=["start", "exit", "error"])
def test_the_sdk_reads_every_field_the_gateway_sends(wire: type, parsed: type) -> None:
    sent = {f.name for f in dataclasses.fields(wire)}
    read = {f.name for f in dataclasses.fields(parsed)} - {"id", "data"}
    assert sent == read


def test_terminal_types_agree() -> None:
    sdk_terminal = {
        cls.type for cls in vars(sdk).values()
        if isinstance(cls, type) and issubclass(cls, sdk.Event) and cls.terminal
    }
    assert sdk_terminal == set(ev.TERMINAL) == set(sse.TERMINAL)
    assert ev.terminal_type(ev.ExitData(0)) == ev.EXIT
    assert ev.terminal_type(ev.ErrorData("x", "y")) == ev.ERROR


def test_an_exit_payload_round_trips_through_the_sdk() -> None:
    built = ev.ExitData(
        137, timed_out=True, truncated=True, oom_killed=False, idle=True, killed=False,
        duration_ms=1234, signal="SIGKILL", missing_modules=("numpy",),
    )
    event = ev.Event(7, ev.EXIT, built.data())
    parsed = sdk.parse_event("7", ev.EXIT, event.data_json())
    assert isinstance(parsed, sdk.ExitEvent)
    assert (parsed.exit_code, parsed.timed_out, parsed.truncated, parsed.idle) == (
        137, True, True, True
    )
    assert (parsed.duration_ms, parsed.signal, parsed.missing_modules) == (
        1234, "SIGKILL", ["numpy"]
    )
    # optional fields are absent from the wire unless set
    assert set(ev.ExitData(0).data()) == {
        "exit_code", "timed_out", "truncated", "oom_killed", "idle", "killed", "duration_ms"
    }


def test_the_interrupted_error_is_one_definition() -> None:
    error = ev.ErrorData.interrupted("the gateway restarted while this ran")
    parsed = sdk.parse_event("2", ev.ERROR, ev.Event(2, ev.ERROR, error.data()).data_json())
    assert isinstance(parsed, sdk.ErrorEvent)
    assert (parsed.code, parsed.message) == (ev.INTERRUPTED, error.message)
