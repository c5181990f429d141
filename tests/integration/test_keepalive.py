"""Keep-alive comments flow while a run is quiet, and never disturb the event sequence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Gateway, running_gateway
from tests.sse import check_sequence, stream_events, text

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def quick_ping_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("keepalive", keepalive_seconds="0.3") as gw:
        yield gw


def test_quiet_run_gets_keepalive_comments(quick_ping_gateway: Gateway) -> None:
    with quick_ping_gateway.client() as client:
        sid = client.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        comments: list[str] = []
        events = stream_events(client, "POST", f"/v1/sandboxes/{sid}/exec",
                               json={"command": "sleep 1.5; echo awake"}, comments=comments)
        check_sequence(events)
        assert text(events, "stdout") == "awake\n"
        assert len(comments) >= 3, comments  # ~every 0.3 s during 1.5 s of silence
        assert all(c.startswith(":") for c in comments)
        client.delete(f"/v1/sandboxes/{sid}")
