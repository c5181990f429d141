"""Who is calling and what they may see: API keys, tenants, events tokens. The one place that
decides (DESIGN §11).

- A key is `petri_<id>_<secret>`: 256 random bits, shown once by `petri keys create`; only its
  sha256 is stored, compared with `hmac.compare_digest`.
- `Gate`, an ASGI middleware, turns each request into a `Principal` (or answers 401) and sets
  it for the request's task (`current()`); the domain asks `Principal.sees(tenant)` wherever
  it loads an owned object (`Sandboxes.get`, lists), so another tenant's id is a 404 whatever
  the route. A request that never passed the gate has no principal and is refused.
- Open mode: with no key ever created and a loopback bind, every request acts as `LOCAL` (an
  admin of tenant `default`): a laptop needs no set-up. Otherwise every route but the public
  ones needs `Authorization: Bearer <key>`.
- An events token (`?token=` on a 202's `events_url`, for `EventSource`, which cannot send
  headers) is an HMAC over one execution id, its tenant, key and expiry: it reads that
  execution's events and nothing else, and dies with its key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .errors import Invalid, NotFound, Unauthorized
from .registry import Registry

TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KEY = re.compile(r"petri_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
TOKEN = re.compile(
    r"([0-9]{1,12})\.([0-9a-f]{12}|-)\.([a-z0-9][a-z0-9_-]{0,62})\.([au])\.([A-Za-z0-9_-]{43})"
)
EVENTS_PATH = re.compile(r"/v1/sandboxes/[^/]+/executions/([^/]+)/events")
# Reachable without a key: probes and the dashboard's static files (the page asks for a key
# itself). Preview URLs never reach the gate: `preview.PreviewRouter`, outermost, serves them
# (their token is the capability); the prefix is listed for a gateway without that router.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
PUBLIC_PREFIXES = ("/dashboard/", "/preview/")
SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    admin INTEGER NOT NULL,
    hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
) WITHOUT ROWID;
"""
TOKEN_KEY = ("_gateway", "events_token_key")  # registry kv: the HMAC key of events tokens


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str | None
    admin: bool
    execution: str | None = None  # an events token: this execution's events only

    def sees(self, tenant: str) -> bool:
        return self.admin or tenant == self.tenant


SYSTEM = Principal("system", None, True)  # the gateway itself: reaper, recovery, retention
LOCAL = Principal("default", None, True)  # open mode: no key created, loopback bind

_acting: ContextVar[Principal | None] = ContextVar("petri_principal", default=None)


def current() -> Principal:
    """The caller of this request (or the task it started); refused when there is none."""
    principal = _acting.get()
    if principal is None:
        raise Unauthorized("this request carries no credentials")
    return principal


def acting() -> Principal | None:
    return _acting.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    token = _acting.set(principal)
    try:
        yield
    finally:
        _acting.reset(token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tenant(name: str) -> str:
    if TENANT.fullmatch(name) is None:
        raise Invalid(
            "a tenant name is 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit",
            code="invalid_tenant",
        )
    return name


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_DUMMY = _digest("petri_000000000000_" + "0" * 43)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant: str
    admin: bool
    created_at: float
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "admin": self.admin,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class Keys:
    """API keys in the registry. Keys are never deleted (revoked only), so once one was made
    the gateway never falls back to open mode by itself."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        registry.ensure(SCHEMA)
        self._exist = False

    def create(self, tenant: str, *, admin: bool) -> tuple[str, KeyInfo]:
        """A new key (the only time it is seen) and its record; the caller records it in
        the ledger within the same transaction (`registry.transaction()`)."""
        check_tenant(tenant)
        key_id = secrets.token_hex(6)
        key = f"petri_{key_id}_{secrets.token_urlsafe(32)}"
        info = KeyInfo(key_id, tenant, admin, time.time(), None)
        self.registry.db.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
            (key_id, tenant, int(admin), _digest(key), info.created_at),
        )
        return key, info

    def revoke(self, key_id: str) -> KeyInfo:
        info = self.get(key_id)
        if info is None:
            raise NotFound(f"no key {key_id[:20]!r}", code="key_not_found")
        if info.revoked_at is None:
            self.registry.db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id)
            )
        return self.get(key_id) or info

    def get(self, key_id: str) -> KeyInfo | None:
        row = self.registry.db.execute(
            "SELECT id, tenant, admin, created_at, revoked_at FROM api_keys WHERE id = ?",
            (key_id,),
        ).fetchone()
        return KeyInfo(row[0], row[1], bool(row[2]), row[3], row[4]) if row else None

    def list(self) -> list[KeyInfo]:
        rows = self.registry.db.execute(
            "SELECT id, tenant, admin, created_at, revoked_at FROM api_keys ORDER BY created_at"
        ).fetchall()
        return [KeyInfo(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def exist(self) -> bool:
        """Whether any key was ever made (a revoked one counts: revoking the last key must
        not open the API)."""
        if not self._exist:
            row = self.registry.db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone()
            self._exist = row is not None
        return self._exist

    def authenticate(self, presented: str) -> Principal:
        found = KEY.fullmatch(presented)
        key_id = found.group(1) if found else ""
        row = None
        if found:
            row = self.registry.db.execute(
                "SELECT tenant, admin, hash, revoked_at FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        # Compare a digest either way, so an unknown id costs what a wrong secret does.
        stored = row[2] if row else _DUMMY
        if not hmac.compare_digest(stored, _digest(presented)) or row is None:
            raise Unauthorized("unknown API key")
        if row[3] is not None:
            raise Unauthorized("this API key was revoked")
        return Principal(row[0], key_id, bool(row[1]))


class Tokens:
    """Short-lived read-only tokens for one execution's event stream."""

    def __init__(self, registry: Registry, keys: Keys) -> None:
        self.keys = keys
        stored = registry.get_value(*TOKEN_KEY)
        if stored is None:
            with registry.transaction():
                if registry.get_value(*TOKEN_KEY) is None:
                    registry.put_value(*TOKEN_KEY, secrets.token_hex(32))
            stored = registry.get_value(*TOKEN_KEY)
        self._key = bytes.fromhex(stored)

    def _mac(self, execution_id: str, body: str) -> str:
        mac = hmac.new(self._key, f"{execution_id}\n{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, principal: Principal, execution_id: str, seconds: int) -> str:
        expires = int(time.time()) + seconds
        role = "a" if principal.admin else "u"
        body = f"{expires}.{principal.key_id or '-'}.{principal.tenant}.{role}"
        return f"{body}.{self._mac(execution_id, body)}"

    def verify(self, token: str, execution_id: str) -> Principal:
        found = TOKEN.fullmatch(token)
        if found is None:
            raise Unauthorized("malformed events token")
        expires, key_id, tenant, role, mac = found.groups()
        body = token.rpartition(".")[0]
        if not hmac.compare_digest(mac, self._mac(execution_id, body)):
            raise Unauthorized("this events token is not for this execution")
        if int(expires) < time.time():
            raise Unauthorized("this events token expired: start a new stream with a key")
        if key_id != "-":
            info = self.keys.get(key_id)
            if info is None or info.revoked_at is not None:
                raise Unauthorized("the key that made this events token was revoked")
        return Principal(tenant, None if key_id == "-" else key_id, role == "a", execution_id)


# --- the gate: one ASGI middleware, before any handler ---------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise Unauthorized("send the key as `Authorization: Bearer <key>`")
            return str(credentials.strip())
    return None


class Gate:
    """Authenticates every request; sets `current()` for its task and `request.state.principal`.
    `authority()` gives (keys, tokens, whether the bind is loopback) once the gateway runs."""

    def __init__(self, app: ASGIApp, authority: Callable[[Scope], tuple[Keys, Tokens, bool]]):
        self.app = app
        self.authority = authority

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if is_public(path):
            await self.app(scope, receive, send)
            return
        try:
            principal = self.decide(scope)
        except Unauthorized as exc:
            await _refuse(scope, receive, send, exc)
            return
        scope.setdefault("state", {})["principal"] = principal
        with acting_as(principal):
            await self.app(scope, receive, send)

    def decide(self, scope: Scope) -> Principal:
        keys, tokens, loopback = self.authority(scope)
        if loopback and not keys.exist():
            return LOCAL
        presented = _bearer(scope)
        if presented is not None:
            return keys.authenticate(presented)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = query.get("token")
        events = EVENTS_PATH.fullmatch(scope["path"])
        if token and events is not None and scope.get("method") in ("GET", "HEAD"):
            return tokens.verify(token[0], events.group(1))
        raise Unauthorized("this gateway needs an API key: `Authorization: Bearer <key>`")


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: Unauthorized) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers().items()),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
