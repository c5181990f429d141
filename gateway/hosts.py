"""The Host allowlist of an open gateway (DNS-rebinding protection).

A gateway bound to loopback with no API key answers anyone who reaches it, which a web page
can do: its own name, re-resolved to 127.0.0.1, makes the browser send the page's requests to
the gateway as same-origin ones. Those requests carry the page's name as `Host`. So while the
gateway is open, `HostCheck` answers only requests whose `Host` names the gateway: loopback
names, the bound host, the public URL's host, the preview domain and its subdomains, and
`PETRI_ALLOWED_HOSTS`. Others get 421 `host_not_allowed` (a WebSocket is closed, 1008).
Once a key exists, or on any other bind, keys decide and every `Host` passes.

A request without `Host` (HTTP/1.0) passes: a browser always sends one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from .config import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """`Host` without its port, lower case, without a trailing dot (`[::1]` keeps brackets)."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".")


class Allowed:
    """The names `settings` allows: exact names and `*.suffix` / `.suffix` patterns."""

    def __init__(self, settings: Settings) -> None:
        entries = [e.strip().lower() for e in settings.allowed_hosts.split(",") if e.strip()]
        self.any = "*" in entries
        bound = settings.host if ":" not in settings.host else f"[{settings.host.strip('[]')}]"
        entries.append(bound.lower())
        if settings.public_url:
            entries.append(host_name(urlsplit(settings.public_url).netloc.rpartition("@")[2]))
        if settings.preview_domain:
            entries += [settings.preview_domain.lower(), "*." + settings.preview_domain.lower()]
        self.names = {host_name(e) for e in entries if not e.startswith(("*.", "."))}
        self.suffixes = tuple("." + e.lstrip("*.") for e in entries if e.startswith(("*.", ".")))

    def __contains__(self, name: str) -> bool:
        return self.any or name in self.names or (
            name.endswith(self.suffixes) and all(name.split("."))
        )


class HostCheck:
    """ASGI middleware: `open_gateway(scope)` says whether the gateway is open right now (a
    key made while it runs closes it, and from then on keys decide)."""

    def __init__(
        self, app: ASGIApp, settings: Settings, open_gateway: Callable[[Scope], bool]
    ) -> None:
        self.app = app
        self.allowed = Allowed(settings)
        self.open_gateway = open_gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed.any:
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers", [])).get(b"host")
        if raw is None or host_name(raw.decode("latin-1")) in self.allowed:
            await self.app(scope, receive, send)
            return
        if not self.open_gateway(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {
                "error": {
                    "code": "host_not_allowed",
                    "message": "this gateway answers its own names only (DNS-rebinding "
                    "protection): add the name to PETRI_ALLOWED_HOSTS, or create an API key",
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 421, "headers": headers})
        await send({"type": "http.response.body", "body": body})
