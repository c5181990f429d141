# Generated from petri_sdk/_async/client.py by scripts/gen_sync_sdk.py: do not edit.
"""HTTP to one gateway: errors mapped to exceptions, and event streams that resume.

Timeouts: `timeout` bounds each ordinary call (create, files, listings). A run has no
client-side deadline: its stream is read until its terminal event, however long the run's
own `timeout` lets it go. `stall_timeout` only notices a dead connection (the gateway sends
keep-alives while a run is silent): the stream then reconnects with `Last-Event-ID`, it does
not fail. Reconnects give up after `reconnect_for` seconds without a connection.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from typing import Any

import httpx

from .._base import SSE, headers, quoted, resolve, sandbox_path, tls
from ..errors import GatewayUnavailable, NotFound, PetriError, RequestTimeout, from_response
from ..events import Event, SSEDecoder, parse_event
from . import _io


class Client:
    """One gateway: `url` (else `PETRI_URL`, else http://127.0.0.1:8000) and `api_key` (else
    `PETRI_API_KEY`). Share one between sandboxes with `Sandbox.create(..., client=c)`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        stall_timeout: float = 90.0,
        reconnect_for: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve(url, api_key)
        self.timeout, self.stall_timeout, self.reconnect_for = timeout, stall_timeout, reconnect_for
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers(self.api_key),
            timeout=timeout,
            transport=transport,
            verify=tls(self.url),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --- ordinary calls -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        not_found: type[NotFound] = NotFound,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call; an error answer or a failed connection raises a `PetriError`."""
        self._check_open()
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise from_response(
                response.status_code, response.content, dict(response.headers), not_found=not_found
            )
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise PetriError(
                f"{method} {path}: the answer is not JSON ({response.text[:80]!r})",
                status=response.status_code,
                code="bad_answer",
            ) from None

    def _check_open(self) -> None:
        if self.http.is_closed:
            raise PetriError(
                "this client is closed (the sandbox was deleted or closed): connect again",
                code="client_closed",
            )

    def _transport_error(self, exc: httpx.TransportError) -> PetriError:
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeout(f"no answer from the Petri gateway at {self.url} in time ({exc})")
        if isinstance(exc, httpx.ConnectError):
            return GatewayUnavailable(
                f"cannot reach the Petri gateway at {self.url}: is it running? "
                "(start one with `petri serve`, or point PETRI_URL at one)",
                code="gateway_unreachable",
            )
        return GatewayUnavailable(
            f"the connection to the Petri gateway at {self.url} failed: {exc!r}",
            code="connection_failed",
        )

    # --- event streams --------------------------------------------------------------------

    def run(
        self, sandbox_id: str, body: dict[str, Any], idempotency_key: str | None = None
    ) -> Generator[Event, None, None]:
        """Start a run and yield its events until the terminal one. The start is sent with an
        `Idempotency-Key`, so a retry after a failed connection never runs it twice."""
        key = idempotency_key or f"sdk-{uuid.uuid4().hex}"
        for event in self._events(sandbox_id, None, 0, body, key):
            yield event

    def follow(
        self, sandbox_id: str, execution_id: str, after: int = 0
    ) -> Generator[Event, None, None]:
        """The events of an execution after id `after` (replayed, then live) until its end."""
        for event in self._events(sandbox_id, execution_id, after, None, ""):
            yield event

    def _events(
        self,
        sandbox_id: str,
        execution_id: str | None,
        after: int,
        body: dict[str, Any] | None,
        key: str,
    ) -> Generator[Event, None, None]:
        self._check_open()
        base = sandbox_path(sandbox_id)
        last, failing_since, attempts = after, None, 0
        timeout = httpx.Timeout(self.timeout, read=self.stall_timeout)
        while True:
            if execution_id is None:
                method, path = "POST", f"{base}/exec"
                kwargs: dict[str, Any] = {
                    "json": body,
                    "headers": {"Accept": SSE, "Idempotency-Key": key},
                }
            else:
                method, path = "GET", f"{base}/executions/{quoted(execution_id)}/events"
                kwargs = {"headers": {"Accept": SSE, "Last-Event-ID": str(last)}}
            failure: Exception | None = None
            try:
                with self.http.stream(method, path, timeout=timeout, **kwargs) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise from_response(
                            response.status_code, response.content, dict(response.headers)
                        )
                    execution_id = execution_id or response.headers.get("x-execution-id")
                    failing_since, attempts = None, 0
                    decoder = SSEDecoder()
                    for chunk in response.iter_bytes():
                        for raw in decoder.decode(chunk):
                            event = parse_event(*raw, after=last)
                            if event is None:
                                continue
                            last = event.id
                            yield event
                            if event.terminal:
                                return
            except httpx.TransportError as exc:
                failure = exc
            # Dropped (or ended with no terminal event): reconnect after `last`.
            now = time.monotonic()
            failing_since = failing_since or now
            attempts += 1
            if now - failing_since > self.reconnect_for:
                if isinstance(failure, httpx.TransportError):
                    raise self._transport_error(failure) from None
                raise GatewayUnavailable(
                    f"the event stream of {execution_id or 'a new run'} kept ending early",
                    code="stream_ended",
                )
            _io.sleep(min(2.0, 0.05 * 2**attempts))
