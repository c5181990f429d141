"""Write-only secrets (DESIGN §11): stored encrypted, used by reference, masked in output.

(Named `vault`, not `secrets`, so it never shadows the standard library's `secrets`.)

- At rest: AES-256-GCM (`cryptography`), a fresh 96-bit nonce per write, the tenant and name
  as associated data (a ciphertext moved to another row does not decrypt). The key is a file,
  made once with mode 0600 (`PETRI_SECRETS_KEY_FILE`, default `<data dir>/secrets.key`); the
  registry never holds it, so a copy of the database alone reveals no value.
- The API never returns a value. A sandbox's or an exec's `env` names a secret
  (`{"DB_PASSWORD": {"secret": "db"}}`); its value is decrypted per exec, handed to the exec
  (and to its dependency install), never written to the registry, ledger or logs.
- `Masker` replaces a value, its base64 (standard and URL-safe, at each of the three byte
  alignments inside a longer encoded text) and URL-encoded forms with `***` in every event
  before it is stored or sent. Streams are masked with a holdback: the end of a chunk that
  could begin a secret waits for the next chunk, so a value split across two writes is caught.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import Invalid, NotFound, PetriError
from .errors import SecretNotFound as SecretNotFound  # re-exported: sandboxes.py imports it
from .registry import Registry

log = logging.getLogger("petri.vault")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MIN_CHARS = 4  # shorter values would mask ordinary text everywhere
MAX_CHARS = 8192
MAX_PER_TENANT = 1000
MASK = "***"
MIN_CORE = 8  # base64 of a value inside a longer encoded text: masked from this length on
SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    nonce BLOB NOT NULL,
    value BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
"""


def key_file(path: Path) -> bytes:
    """The 256-bit key in `path`, made (mode 0600, atomically) when it is not there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, AESGCM.generate_key(bit_length=256).hex().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # the first writer wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("secrets key file %s had mode %o; set to 0600", path, mode)
        os.chmod(path, 0o600)
    raw = path.read_text().strip()
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise PetriError(f"{path} does not hold a 256-bit key (64 hex digits)")
    return key


def check_name(name: str) -> str:
    if NAME.fullmatch(name) is None:
        raise Invalid(
            "a secret name is 1-128 of A-Z, a-z, 0-9, '_', '.' and '-'", code="invalid_secret_name"
        )
    return name


def check_value(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("value: a string", code="invalid_field")
    if not MIN_CHARS <= len(value) <= MAX_CHARS:
        raise Invalid(
            f"value: {MIN_CHARS} to {MAX_CHARS} characters (a shorter value would be masked "
            "wherever those characters appear)",
            code="invalid_field",
        )
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Invalid("value: no NUL bytes or lone surrogates", code="invalid_field")
    return value


class Vault:
    def __init__(self, registry: Registry, key_path: Path) -> None:
        self.registry = registry
        registry.ensure(SCHEMA)
        self._aead = AESGCM(key_file(key_path))

    def put(self, tenant: str, name: str, value: str) -> bool:
        """Store (encrypted); True when it is new. Join a transaction to record it."""
        check_name(name)
        check_value(value)
        db = self.registry.db
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, value.encode(), _aad(tenant, name))
        at = time.time()
        with self.registry.transaction():
            exists = db.execute(
                "SELECT 1 FROM secrets WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone()
            if exists is None:
                count = db.execute(
                    "SELECT count(*) FROM secrets WHERE tenant = ?", (tenant,)
                ).fetchone()[0]
                if count >= MAX_PER_TENANT:
                    raise Invalid(
                        f"a tenant may hold at most {MAX_PER_TENANT} secrets",
                        code="too_many_secrets",
                    )
                db.execute(
                    "INSERT INTO secrets VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant, name, nonce, sealed, at, at),
                )
            else:
                db.execute(
                    "UPDATE secrets SET nonce = ?, value = ?, updated_at = ? "
                    "WHERE tenant = ? AND name = ?",
                    (nonce, sealed, at, tenant, name),
                )
        return exists is None

    def delete(self, tenant: str, name: str) -> None:
        cursor = self.registry.db.execute(
            "DELETE FROM secrets WHERE tenant = ? AND name = ?", (tenant, name)
        )
        if cursor.rowcount == 0:
            raise NotFound(f"no secret {name[:128]!r}", code="secret_not_found")

    def names(self, tenant: str | None) -> list[dict[str, Any]]:
        """Names and times (never values): one tenant's, or every tenant's for None."""
        rows = self.registry.db.execute(
            "SELECT tenant, name, created_at, updated_at FROM secrets "
            "WHERE ? IS NULL OR tenant = ? ORDER BY tenant, name",
            (tenant, tenant),
        ).fetchall()
        keys = ("tenant", "name", "created_at", "updated_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def missing(self, tenant: str, names: Iterable[str]) -> list[str]:
        wanted = sorted(set(names))
        have = {
            r[0]
            for r in self.registry.db.execute(
                "SELECT name FROM secrets WHERE tenant = ?", (tenant,)
            ).fetchall()
        }
        return [n for n in wanted if n not in have]

    def resolve(self, tenant: str, refs: dict[str, str]) -> dict[str, str]:
        """env name -> value for env name -> secret name; 422 naming a missing secret."""
        out = {}
        for env_name, name in refs.items():
            row = self.registry.db.execute(
                "SELECT nonce, value FROM secrets WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone()
            if row is None:
                raise SecretNotFound(f"env {env_name}: no secret {name!r} in this tenant")
            try:
                out[env_name] = self._aead.decrypt(row[0], row[1], _aad(tenant, name)).decode()
            except InvalidTag:
                raise PetriError(
                    f"secret {name!r} does not decrypt with this gateway's key file",
                    code="secret_unreadable",
                ) from None
        return out


def _aad(tenant: str, name: str) -> bytes:
    return f"petri-secret\x00{tenant}\x00{name}".encode()


# --- masking ----------------------------------------------------------------------------------


def forms(value: str) -> set[str]:
    """The texts `value` may appear as in output: itself, URL-encoded, base64 (standard and
    URL-safe, padded or not), and the part of its base64 that does not depend on what comes
    before or after it inside a longer encoded text (each of the three byte alignments)."""
    raw = value.encode()
    found = {value, quote(value, safe=""), quote(value), quote_plus(value)}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        found |= {whole, whole.rstrip("=")}
        for shift in range(3):
            encoded = encode(b"\x00" * shift + raw).decode()
            start = 4 if shift else 0
            core = encoded[start : 4 * ((shift + len(raw)) // 3)]
            if len(core) >= MIN_CORE:
                found.add(core)
    return {f for f in found if f}


class Masker:
    """Replaces every form of some values with `***`, in whole texts (`text`, `value`) and in
    streams (`stream`), where a chunk's end that may begin a form is held for the next one."""

    def __init__(self, values: Iterable[str]) -> None:
        found: set[str] = set()
        for value in values:
            found |= forms(value)
        self.forms = sorted(found, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(f) for f in self.forms))
        self._held: dict[str, str] = {}

    def text(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if text else text

    def value(self, value: Any) -> Any:
        """Every string in a JSON-like value, masked (keys too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def stream(self, key: str, text: str) -> str:
        """The part of `held + text` that is safe to send now, masked; the rest waits: an end
        that may begin a form, and a whole form there that a longer one may extend (the
        padded base64 of a value begins with its unpadded core)."""
        text = self._held.pop(key, "") + text
        start = len(text) - self._partial(text)
        for match in self._pattern.finditer(text, max(0, start - 2 * len(self.forms[0]))):
            if match.start() < start < match.end():
                start = match.start()
                break
        if start < len(text):
            self._held[key] = text[start:]
        return self.text(text[:start])

    def flush(self, key: str) -> str:
        """The stream ended: what was held, masked; an end that is the start of a form is
        masked too from `MIN_CHARS` characters on (most of a secret is still a secret)."""
        text = self.text(self._held.pop(key, ""))
        keep = self._partial(text)
        return text[:-keep] + MASK if keep >= MIN_CHARS else text

    def held(self) -> list[str]:  # streams with text waiting
        return [k for k, v in self._held.items() if v]

    def _partial(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of a form (not all of it)."""
        best = 0
        for form in self.forms:
            at = len(text) - min(len(form) - 1, len(text)) - 1
            while True:  # candidate starts, longest end first
                at = text.find(form[0], at + 1)
                if at < 0 or len(text) - at <= best:
                    break
                if form.startswith(text[at:]):
                    best = len(text) - at
                    break
        return best
