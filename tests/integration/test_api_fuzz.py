"""Fuzz the API from its own OpenAPI document (schemathesis): whatever a client sends, the
gateway never answers 5xx, and every answer has the status codes, content types and body
schemas the document promises.

A dedicated gateway keeps the fuzzing bounded: few sandboxes, short exec timeouts, small
quotas. Half of the generated requests that name a sandbox are pointed at a real one, so the
fuzzer reaches the handlers behind the 404.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Gateway, running_gateway

pytestmark = pytest.mark.docker

MAX_EXAMPLES = 20
FUZZ_SETTINGS = {
    "max_sandboxes": "4",
    "exec_timeout_seconds": "5",
    "max_exec_timeout_seconds": "5",
    "disk_mb": "32",
    "max_disk_mb": "64",
    "max_memory_mb": "512",
    "max_body_bytes": str(256 * 1024),
    "max_upload_bytes": str(1024 * 1024),
    "output_budget_bytes": str(256 * 1024),
}


@pytest.fixture(scope="module")
def fuzz_gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("fuzz", **FUZZ_SETTINGS) as gw:
        yield gw


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: Gateway) -> schemathesis.BaseSchema:
    # The document as the gateway serves it: what is fuzzed is what clients read.
    return schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def live_sandbox(fuzz_gateway: Gateway) -> Iterator[Callable[[], str | None]]:
    """A sandbox that exists (made again when the fuzzer deleted it), or None at the cap."""
    client = fuzz_gateway.client(timeout=60)
    current: list[str] = []

    def ensure() -> str | None:
        if current and client.get(f"/v1/sandboxes/{current[0]}").status_code == 200:
            return current[0]
        r = client.post("/v1/sandboxes", json={"language": "python"})
        if r.status_code != 201:
            return None
        current[:] = [r.json()["id"]]
        client.put(f"/v1/sandboxes/{current[0]}/files/main.py", content=b"print('hi')\n")
        return current[0]

    yield ensure
    for sandbox in client.get("/v1/sandboxes", params={"limit": 500}).json()["sandboxes"]:
        client.delete(f"/v1/sandboxes/{sandbox['id']}")
    client.close()


# The audit tail never ends (a SIEM follows it for ever, keep-alives included): its own tests
# read it with a deadline (test_audit.py); the fuzzer would wait on it for ever.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/v1/audit/events")
SEEN: Counter[int] = Counter()  # status codes the fuzzer got, for the summary test


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_never_answers_5xx(
    case: schemathesis.Case, fuzz_gateway: Gateway, live_sandbox: Callable[[], str | None]
) -> None:
    params = case.path_parameters or {}
    if "sid" in params and len(str(params["sid"])) % 2 == 0:
        sid = live_sandbox()
        if sid is not None:
            params["sid"] = sid
    response = case.call(timeout=60)
    SEEN[response.status_code] += 1
    # /mcp is the MCP SDK's transport: its refusals are its own (JSON-RPC errors, or plain
    # text without a Content-Type), so only "never a 5xx" holds for it.
    checks = [not_a_server_error]
    if case.path != "/mcp":
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]
    case.validate_response(response, checks=checks)


def test_gateway_is_healthy_after_fuzzing(fuzz_gateway: Gateway) -> None:
    print(f"\nstatus codes seen while fuzzing: {dict(sorted(SEEN.items()))}")
    # The fuzzer got past validation to real work (2xx) as well as refusals (4xx).
    assert any(200 <= code < 300 for code in SEEN) and any(400 <= code < 500 for code in SEEN)
    assert not any(code >= 500 for code in SEEN)
    assert fuzz_gateway.proc is not None and fuzz_gateway.proc.poll() is None
    with fuzz_gateway.client(timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
    log = fuzz_gateway.log_path.read_text() if fuzz_gateway.log_path else ""
    assert "Traceback" not in log, log[-3000:]
