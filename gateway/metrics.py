"""Prometheus metrics (DESIGN §11): the one importer of `prometheus_client`.

Served at `GET /metrics` to admin keys. Each gateway has a registry of its own (no process
globals), so several apps in one process never collide."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
FIRST_OUTPUT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, live_sandboxes: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "petri_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "petri_http_request_duration_seconds",
            "time to the response's first byte",
            ["route"],
            registry=r,
        )
        self.exec_duration = Histogram(
            "petri_exec_duration_seconds",
            "wall-clock time of finished executions (install included)",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first_output = Histogram(
            "petri_exec_time_to_first_output_seconds",
            "from the exec request to the first stdout/stderr byte",
            buckets=FIRST_OUTPUT_BUCKETS,
            registry=r,
        )
        self.install_hits = Counter(
            "petri_install_cache_hits", "dependency installs skipped: the manifest was cached",
            registry=r,
        )
        self.install_misses = Counter(
            "petri_install_cache_misses", "dependency installs that ran", registry=r
        )
        self.pool_size = Gauge(
            "petri_pool_size", "warm containers ready to be claimed (0 without a pool)", registry=r
        )
        self.events_streamed = Counter(
            "petri_sse_events_streamed", "SSE events written to clients", registry=r
        )
        self.bytes_streamed = Counter(
            "petri_sse_bytes_streamed", "SSE bytes written to clients", registry=r
        )
        self.live_sandboxes = Gauge("petri_live_sandboxes", "sandboxes that exist", registry=r)
        self.live_sandboxes.set_function(lambda: float(live_sandboxes()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def finished(self, status: str, seconds: float | None, first_output: float | None) -> None:
        if seconds is not None:
            self.exec_duration.labels(status).observe(seconds)
        if first_output is not None:
            self.first_output.observe(first_output)

    def install(self, status: str) -> None:
        if status == "cached":
            self.install_hits.inc()
        elif status in ("installed", "failed"):
            self.install_misses.inc()

    def streamed(self, size: int) -> None:
        self.events_streamed.inc()
        self.bytes_streamed.inc(size)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestMetrics:
    """Counts every HTTP request by its route template (never the raw path: ids would make
    a series each) and status."""

    def __init__(self, app: ASGIApp, metrics: Callable[[Scope], Metrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                metrics = self.metrics(scope)
                if metrics is not None:
                    metrics.request_seconds.labels(_route(scope)).observe(
                        time.monotonic() - started
                    )
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            metrics = self.metrics(scope)
            if metrics is not None:
                metrics.requests.labels(_method(scope), _route(scope), str(status)).inc()


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(scope: Scope) -> str:
    """Any other method is `OTHER`: a client must not mint a series per made-up method."""
    method = scope.get("method", "")
    return method if method in METHODS else "OTHER"


def _route(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"
