"""What the sync and async twins share and that does no I/O on the network: where the
gateway is, request bodies, workspace paths, and the zip of a local folder."""

from __future__ import annotations

import functools
import math
import os
import ssl
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

import httpx

from .errors import InvalidRequest

DEFAULT_URL = "http://127.0.0.1:8000"
SSE = "text/event-stream"
VERSION = "0.2.0"
# Skipped by `files.upload_dir` unless `exclude` says otherwise: VCS data, caches, virtualenvs
# and installed dependencies (the sandbox installs its own from the manifest).
DEFAULT_EXCLUDE = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".DS_Store",
    }
)


def resolve(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Arguments win; then `PETRI_URL` / `PETRI_API_KEY`; then the local default."""
    base = url or os.environ.get("PETRI_URL") or DEFAULT_URL
    if "://" not in base:
        base = f"http://{base}"
    key = api_key if api_key is not None else os.environ.get("PETRI_API_KEY")
    return base.rstrip("/"), key or None


@functools.cache
def _verifying() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def tls(url: str) -> ssl.SSLContext:
    """The TLS context of a client of `url`. https: httpx's default (certifi's bundle, or
    SSL_CERT_FILE / SSL_CERT_DIR as set when it is first built), built once per process and
    shared: it loads the whole CA bundle, ~50 ms of CPU, which every new client paid again.
    Plain http never uses one: it gets a context that trusts nothing, so a TLS connection it
    somehow made would fail verification, not go unchecked."""
    if urlsplit(url).scheme == "https":
        return _verifying()
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": f"petri-sdk-python/{VERSION}"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def quoted(name: str) -> str:
    """An id as one URL path segment."""
    return quote(name, safe="")


def sandbox_path(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{quoted(sandbox_id)}"


def workspace_path(path: str) -> str:
    """A path in the workspace, relative to /sandbox (`/sandbox/a/b` and `./a/b` are `a/b`),
    URL-quoted for the files routes."""
    return quote(clean(path), safe="/")


def clean(path: str) -> str:
    p = str(path).replace("\\", "/")
    if p == "/sandbox" or p.startswith("/sandbox/"):
        p = p[len("/sandbox") :]
    p = p.lstrip("/")
    while p.startswith("./"):
        p = p[2:]
    return p


@dataclass(frozen=True)
class App:
    """Test mode's app under test: started before the tests, probed until `port` answers."""

    command: str
    port: int
    ready_path: str | None = None
    ready_timeout: float | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.command, "port": self.port}
        if self.ready_path is not None:
            out["ready_path"] = self.ready_path
        if self.ready_timeout is not None:
            out["ready_timeout_seconds"] = seconds(self.ready_timeout)
        return out


def seconds(value: float) -> int:
    """The API takes whole seconds: round up, so a client never asks for less than it meant."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequest(f"a timeout must be a positive number of seconds, not {value!r}")
    return max(1, math.ceil(value))


def exec_body(
    *,
    code: str | None = None,
    command: str | None = None,
    file: str | None = None,
    test: bool = False,
    app: App | Mapping[str, Any] | None = None,
    args: Iterable[str] | None = None,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if code is not None:
        body["code"] = code
    if command is not None:
        body["command"] = command
    if file is not None:
        body["filename"] = clean(file)
    if test:
        body["test"] = True
    if app is not None:
        body["app"] = app.body() if isinstance(app, App) else dict(app)
    if args is not None:
        if isinstance(args, str):
            raise InvalidRequest("args is a list of strings, not one string")
        body["args"] = [str(a) for a in args]
    if timeout is not None:
        body["timeout_seconds"] = seconds(timeout)
    if idle_timeout is not None:
        body["idle_timeout_seconds"] = seconds(idle_timeout)
    if env is not None:
        body["env"] = dict(env)
    if stdin is not None:
        body["stdin"] = stdin
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def to_bytes(data: str | bytes | bytearray | memoryview) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def zip_folder(
    folder: str | os.PathLike[str], dest: str = "", exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> tuple[IO[bytes], list[str]]:
    """The folder as a zip (spooled: in memory up to 16 MiB, then a temporary file), its
    members under `dest`. Names in `exclude` (files or folders, at any depth) are left out,
    and so are symlinks: a link never uploads a file from outside the folder."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidRequest(f"{folder} is not a folder")
    skip = set(exclude)
    prefix = clean(dest).strip("/")
    names: list[str] = []
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)  # noqa: SIM115
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED, compresslevel=5) as archive:
        for here, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(
                d for d in dirs if d not in skip and not os.path.islink(os.path.join(here, d))
            )
            for name in sorted(files):
                full = os.path.join(here, name)
                if name in skip or os.path.islink(full) or not os.path.isfile(full):
                    continue
                rel = Path(full).relative_to(root).as_posix()
                member = f"{prefix}/{rel}" if prefix else rel
                archive.write(full, member)
                names.append(member)
    spool.seek(0)
    return spool, names
