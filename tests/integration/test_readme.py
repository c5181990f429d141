"""The README's quick-start stream is what the gateway sends: its `curl -N` request runs
against a real gateway, and the sample's event types, ids and data shapes must match the run.
The README's event table and exec result list name every field the wire carries."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import httpx
import pytest

from gateway.models import ExitData
from tests.conftest import ROOT, Gateway
from tests.sse import Received, check_sequence, parse_wire, stream_events, text

pytestmark = pytest.mark.docker

README = (ROOT / "README.md").read_text()


def _sample() -> tuple[str, list[Received]]:
    """The exec body of the README's `curl -N` command and the stream printed below it."""
    command = re.search(r"curl -N -X POST [^\n]*/exec[^\n]*\\\n\s*-d '(\{.*?\})'", README)
    assert command, "the README's curl -N exec command is gone"
    block = re.search(r"```\n(id: 1\n.*?)```", README[command.end() :], re.S)
    assert block, "no sample stream after the curl -N command"
    return command.group(1), list(parse_wire(iter(block.group(1).split("\n"))))


def _merged(events: list[Received]) -> list[tuple[str, Any]]:
    """Event types and data shapes, consecutive output events of one type as one."""
    out: list[tuple[str, Any]] = []
    for e in events:
        if not (out and e.type in ("stdout", "stderr") and out[-1][0] == e.type):
            out.append((e.type, _shape(e.data)))
    return out


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def test_the_readme_sample_stream_is_what_the_gateway_sends(
    gateway: Gateway, sandbox: dict[str, Any]
) -> None:
    body, sample = _sample()
    check_sequence(sample)
    done = subprocess.run(
        [
            "curl", "-sN", "-X", "POST", f"{gateway.url}/v1/sandboxes/{sandbox['id']}/exec",
            "-H", "Accept: text/event-stream", "-d", body,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    real = list(parse_wire(iter(done.stdout.decode().split("\n"))))
    check_sequence(real)
    # Output is chunks as they arrive (Python's print writes "0" and "\n" separately, which
    # may or may not come as one event): compare runs of output events by their text.
    assert _merged(real) == _merged(sample)
    assert text(real, "stdout") == text(sample, "stdout")
    for got, shown in ((real[0], sample[0]), (real[-1], sample[-1])):
        assert _shape(got.data) == _shape(shown.data), (got.type, got.data, shown.data)
        assert list(got.data) == list(shown.data), "the fields, in the order they are sent"
    assert real[-1].data["exit_code"] == sample[-1].data["exit_code"] == 0
    assert sample[0].data["execution_id"].startswith("ex-")
    assert sample[0].data["sandbox_id"].startswith("sb-")


def _exit_row() -> set[str]:
    row = re.search(r"^\| `exit` \| `\{([^}]*)\}` \|", README, re.M)
    assert row, "the README's event table has no exit row"
    return {name.strip().rstrip("?") for name in row.group(1).split(",")}


def test_the_readme_documents_every_exit_field(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    documented = _exit_row()
    assert documented == set(ExitData.model_fields), documented ^ set(ExitData.model_fields)
    url = f"/v1/sandboxes/{sandbox['id']}/exec"
    exits = [
        stream_events(client, "POST", url, json={"command": c})[-1].data
        for c in ("true", "kill -9 $$", "python -c 'import nope'")
    ]
    exits.append(
        stream_events(
            client, "POST", url, json={"command": "sleep 5", "idle_timeout_seconds": 1}
        )[-1].data
    )
    assert exits[2]["missing_modules"] == ["nope"] and exits[3]["idle"] is True
    for data in exits:
        assert set(data) <= documented, set(data) - documented


def test_the_readme_documents_every_field_of_the_json_result(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    section = README[README.index("`exec` answers in one of three ways") :]
    section = section[: section.index("\n\n", section.index("otherwise it waits"))]
    url = f"/v1/sandboxes/{sandbox['id']}/exec"
    results = [
        client.post(url, json={"command": "python -c 'import nope'"}).json(),
        client.post(url, json={"command": "sleep 5", "idle_timeout_seconds": 1}).json(),
    ]
    for result in results:
        for key in result:
            assert f"{key}" in section, f"the README's exec result lacks {key!r}: {section}"
    assert {"status", "packages", "log"} <= set(results[0]["install"])
    assert results[0]["missing_modules"] == ["nope"] and results[1]["idle"] is True
    assert "`error:" in section  # a run that ended with an `error` event
    for status in ("exited", "killed", "timed_out", "interrupted", "failed"):
        assert f"`{status}`" in section
