"""One `Settings` object, read once from `PETRI_*` environment variables and validated."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .egress import SOCKET_PATH_MAX, parse_allowlist
from .errors import SettingsError as SettingsError  # re-exported: server.py imports it here

_PUBLIC_URL = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,190}}$)({_LABEL}\.)*{_LABEL}$")
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_EGRESS_ALLOW = (
    "pypi.org,files.pythonhosted.org,registry.npmjs.org,proxy.golang.org,sum.golang.org,"
    "storage.googleapis.com,repo.maven.apache.org,repo1.maven.org"
)
# Room for "/<sandbox id>.sock" (25 bytes) behind the socket directory.
SOCKET_DIR_MAX = SOCKET_PATH_MAX - len("/sb-0123456789abcdef.sock")


def _meta(doc: str) -> dict[str, str]:
    return {"doc": doc}


@dataclass(frozen=True)
class Settings:
    """Every knob of the gateway. Field `foo_bar` is read from `PETRI_FOO_BAR`."""

    data_dir: Path = field(
        default=Path("/var/lib/petri/data"), metadata=_meta("SQLite registry and gateway state")
    )
    workspace_root: Path = field(
        default=Path("/var/lib/petri/workspaces"),
        metadata=_meta("host path holding one workspace directory per sandbox"),
    )
    runtimes_dir: Path = field(
        default=Path(__file__).resolve().parent.parent / "runtimes",
        metadata=_meta("folder with one runtime.toml per language"),
    )
    docker_url: str = field(
        default="", metadata=_meta("Docker API URL; empty: DOCKER_HOST or the local socket")
    )
    base_image: str = field(
        default="",
        metadata=_meta("base of runtime images; empty: debian:trixie-slim, else debootstrap"),
    )
    docker_runtime: str = field(
        default="", metadata=_meta("OCI runtime for sandboxes, e.g. `runsc` (gVisor)")
    )
    ca_bundle: str = field(
        default=DEFAULT_CA_BUNDLE if Path(DEFAULT_CA_BUNDLE).exists() else "",
        metadata=_meta("CA bundle mounted into install containers (corporate TLS); empty: none"),
    )
    egress_allow: str = field(
        default=DEFAULT_EGRESS_ALLOW,
        metadata=_meta(
            "hosts install containers may reach: `host`, `host:port`, `*.suffix`, `.suffix`"
        ),
    )
    egress_socket_dir: str = field(
        default="",
        metadata=_meta(
            "host directory of the egress proxy's Unix sockets, one per running install, "
            "bind-mounted into install containers (a path Docker sees as the gateway does; "
            f"at most {SOCKET_DIR_MAX} bytes); empty: `<workspace root>/.egress`, or "
            "`$TMPDIR/petri-egress-<hash>` where that is too long"
        ),
    )
    egress_port: int = field(
        default=3128,
        metadata=_meta(
            "port of the egress relay on 127.0.0.1 inside install containers (their "
            "HTTP(S)_PROXY), which passes connections to the proxy's socket"
        ),
    )
    sandbox_user: str = field(default="1000:1000", metadata=_meta("uid:gid programs run as"))
    default_ttl_seconds: int = field(
        default=3600, metadata=_meta("sandbox TTL after last activity")
    )
    max_ttl_seconds: int = field(
        default=86400, metadata=_meta("largest `ttl_seconds` a client may ask for")
    )
    exec_timeout_seconds: int = field(
        default=60, metadata=_meta("default wall-clock limit of one exec")
    )
    max_exec_timeout_seconds: int = field(default=3600, metadata=_meta("largest `timeout_seconds`"))
    install_timeout_seconds: int = field(
        default=600,
        metadata=_meta("wall-clock cap of one dependency install, within the exec's timeout"),
    )
    memory_mb: int = field(default=512, metadata=_meta("default sandbox memory (swap off)"))
    max_memory_mb: int = field(default=4096, metadata=_meta("largest memory a client may ask for"))
    cpus: float = field(default=1.0, metadata=_meta("default CPU share of a sandbox"))
    max_cpus: float = field(default=2.0, metadata=_meta("largest CPU share a client may ask for"))
    pids_limit: int = field(default=256, metadata=_meta("default process limit of a sandbox"))
    max_pids_limit: int = field(
        default=4096, metadata=_meta("largest pids limit a client may ask for")
    )
    nofile: int = field(default=1024, metadata=_meta("open-file limit per process"))
    fsize_mb: int = field(default=512, metadata=_meta("largest file a program may write"))
    tmpfs_mb: int = field(default=256, metadata=_meta("size of the tmpfs at /tmp"))
    disk_mb: int = field(
        default=1024, metadata=_meta("workspace quota (loop-mounted ext4 where possible); 0 = none")
    )
    max_disk_mb: int = field(
        default=8192, metadata=_meta("largest workspace quota a client may ask for")
    )
    output_budget_bytes: int = field(
        default=8 * 1024 * 1024,
        metadata=_meta("stdout+stderr kept per exec: the head up to this, then the tail"),
    )
    output_tail_bytes: int = field(
        default=64 * 1024, metadata=_meta("tail kept per stream past the output budget")
    )
    max_body_bytes: int = field(default=1024 * 1024, metadata=_meta("largest JSON request body"))
    max_upload_bytes: int = field(
        default=100 * 1024 * 1024, metadata=_meta("largest file or zip upload")
    )
    zip_max_members: int = field(
        default=10000, metadata=_meta("most members a zip upload may hold")
    )
    zip_max_bytes: int = field(
        default=512 * 1024 * 1024, metadata=_meta("most bytes a zip may expand to")
    )
    max_sandboxes: int = field(
        default=100, metadata=_meta("most live sandboxes; more is 429 (creates in flight count)")
    )
    max_concurrent_starts: int = field(
        default=4, metadata=_meta("containers being created and started at once; others queue")
    )
    pool_size: str = field(
        default="python=2,node=1",
        metadata=_meta(
            "warm pool: started containers with their workspace made, per language "
            "(`python=2,node=1`, or one number for every language; `0`: none). A create "
            "with default limits and no `env` claims one; others take the cold path"
        ),
    )
    max_concurrent_installs: int = field(
        default=4,
        metadata=_meta(
            "dependency installs running at once (one per sandbox); others queue within "
            "their exec's timeout"
        ),
    )
    keepalive_seconds: float = field(
        default=15.0, metadata=_meta("SSE keep-alive comment interval")
    )
    header_timeout_seconds: float = field(
        default=10.0,
        metadata=_meta("seconds a client has to send a request's line and headers; then closed"),
    )
    reaper_interval_seconds: float = field(
        default=60.0, metadata=_meta("how often expired sandboxes are removed")
    )
    shutdown_grace_seconds: float = field(
        default=5.0, metadata=_meta("how long running execs may finish on SIGTERM")
    )
    persist_events: bool = field(
        default=True, metadata=_meta("store events for replay (off only to benchmark)")
    )
    cors_origins: str = field(
        default="", metadata=_meta("comma-separated origins browsers may call from; `*` for any")
    )
    mcp_allowed_hosts: str = field(
        default="127.0.0.1:*,localhost:*,[::1]:*",
        metadata=_meta(
            "Host headers `/mcp` answers (`host:port`, `host:*`; DNS-rebinding protection); "
            "add the name clients use when the gateway is reached by another name; `*` for any"
        ),
    )
    allowed_hosts: str = field(
        default="localhost,127.0.0.1,[::1]",
        metadata=_meta(
            "Host names (any port, `*.suffix` allowed) an open gateway (loopback bind, no API "
            "key) answers, DNS-rebinding protection; the bound host, the public URL's host and "
            "`{PETRI_PREVIEW_DOMAIN}` and its subdomains are added; `*` for any"
        ),
    )
    log_level: str = field(default="info", metadata=_meta("uvicorn log level"))
    log_format: str = field(
        default="text",
        metadata=_meta("`text`, or `json`: one JSON object a line, with the request id"),
    )
    # --- teams (DESIGN §11) ---
    host: str = field(
        default="127.0.0.1",
        metadata=_meta(
            "address `petri serve` binds (`--host` wins); any but loopback needs an API key"
        ),
    )
    events_token_seconds: int = field(
        default=900,
        metadata=_meta("life of the read-only `?token=` in a 202's `events_url`"),
    )
    tenant_max_sandboxes: int = field(
        default=0, metadata=_meta("live sandboxes per tenant; more is 429 (0: no quota)")
    )
    tenant_max_running: int = field(
        default=0, metadata=_meta("running executions per tenant; more is 429 (0: no quota)")
    )
    secrets_key_file: str = field(
        default="",
        metadata=_meta("AES key of stored secrets, made 0600 at first start; empty: "
                       "`<data dir>/secrets.key`"),
    )
    events_retention_hours: float = field(
        default=168.0,
        metadata=_meta("events of finished executions are kept this long (0: for ever)"),
    )
    events_max_mb: float = field(
        default=1024.0,
        metadata=_meta("events of finished executions kept, at most; oldest go first (0: no cap)"),
    )
    audit_retention_days: float = field(
        default=400.0,
        metadata=_meta("audit records are kept this long, then checkpointed (0: for ever)"),
    )
    public_url: str = field(
        default="",
        metadata=_meta("base of preview URLs; empty: `http://{host}:{port}` of `petri serve`"),
    )
    preview_domain: str = field(
        default="",
        metadata=_meta("with a wildcard DNS name, `{token}.{domain}` serves previews too"),
    )
    preview_ttl_seconds: int = field(
        default=3600, metadata=_meta("default life of a service and its preview URL")
    )
    max_services_per_sandbox: int = field(
        default=4, metadata=_meta("services running at once in one sandbox; more is 429")
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `PETRI_*` variables; raise `SettingsError` naming the bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"PETRI_{f.name.upper()}"
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif name in env:
                values[f.name] = _convert(name, env[name], f.default)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise SettingsError(f"PETRI_{f.name.upper()} must not be negative (got {value})")
        positive = (
            "exec_timeout_seconds",
            "memory_mb",
            "cpus",
            "pids_limit",
            "nofile",
            "default_ttl_seconds",
            "max_concurrent_starts",
            "max_concurrent_installs",
            "egress_port",
            "keepalive_seconds",
            "header_timeout_seconds",
            "reaper_interval_seconds",
            "output_budget_bytes",
            "max_body_bytes",
            "install_timeout_seconds",
            "events_token_seconds",
            "preview_ttl_seconds",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingsError(f"PETRI_{name.upper()} must be positive")
        pairs = (
            ("default_ttl_seconds", "max_ttl_seconds"),
            ("memory_mb", "max_memory_mb"),
            ("cpus", "max_cpus"),
            ("pids_limit", "max_pids_limit"),
            ("exec_timeout_seconds", "max_exec_timeout_seconds"),
            ("disk_mb", "max_disk_mb"),
            ("preview_ttl_seconds", "max_ttl_seconds"),
        )
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise SettingsError(f"PETRI_{low.upper()} exceeds PETRI_{high.upper()}")
        uid, _, gid = self.sandbox_user.partition(":")
        if not (uid.isdigit() and gid.isdigit()) or uid == "0":
            raise SettingsError("PETRI_SANDBOX_USER must be a non-root 'uid:gid', e.g. 1000:1000")
        try:
            parse_allowlist(self.egress_hosts)
        except ValueError as exc:
            raise SettingsError(f"PETRI_EGRESS_ALLOW: {exc}") from None
        if self.egress_port > 65535:
            raise SettingsError("PETRI_EGRESS_PORT must be a port number (1-65535)")
        sockets = self.egress_sockets
        if not sockets.is_absolute() or len(os.fsencode(sockets)) > SOCKET_DIR_MAX:
            raise SettingsError(
                f"PETRI_EGRESS_SOCKET_DIR {str(sockets)!r} must be an absolute path of at most "
                f"{SOCKET_DIR_MAX} bytes (a Unix socket path holds 107); set a shorter one"
            )
        try:
            parse_pool_size(self.pool_size)
        except ValueError as exc:
            raise SettingsError(f"PETRI_POOL_SIZE: {exc}") from None
        if self.log_format not in ("text", "json"):
            raise SettingsError("PETRI_LOG_FORMAT must be `text` or `json`")
        if not self.host:
            raise SettingsError("PETRI_HOST must name an address, e.g. 127.0.0.1")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise SettingsError(f"PETRI_CA_BUNDLE {self.ca_bundle!r} is not a file")
        if self.public_url and not _PUBLIC_URL.match(self.public_url):
            raise SettingsError("PETRI_PUBLIC_URL must be an http(s) URL without a query")
        if self.preview_domain and not _DOMAIN.match(self.preview_domain):
            raise SettingsError("PETRI_PREVIEW_DOMAIN must be a DNS name like preview.example.com")
        if not (self.runtimes_dir / "python").is_dir():
            raise SettingsError(f"PETRI_RUNTIMES_DIR {str(self.runtimes_dir)!r} holds no runtimes")

    @property
    def uid(self) -> int:
        return int(self.sandbox_user.partition(":")[0])

    @property
    def gid(self) -> int:
        return int(self.sandbox_user.partition(":")[2])

    @property
    def egress_sockets(self) -> Path:
        """Where the egress proxy's per-install sockets live: by default beside the
        workspaces (a deployment in a container shares that path with Docker already)."""
        if self.egress_socket_dir:
            return Path(self.egress_socket_dir)
        default = self.workspace_root / ".egress"
        if len(os.fsencode(default)) <= SOCKET_DIR_MAX:
            return default
        digest = hashlib.sha256(os.fsencode(self.workspace_root)).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"petri-egress-{digest}"

    @property
    def egress_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.egress_allow.split(",") if h.strip())


def _convert(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
        return raw
    except ValueError:
        kind = type(default).__name__
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None


POOL_MAX = 64  # warm containers per language, at most


def parse_pool_size(raw: str) -> dict[str, int] | int:
    """`PETRI_POOL_SIZE`: one number for every language, or `lang=n` pairs split by commas."""
    text = raw.strip()
    if text.isdigit():
        if int(text) > POOL_MAX:
            raise ValueError(f"at most {POOL_MAX} per language")
        return int(text)
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        lang, eq, number = (x.strip() for x in item.partition("="))
        if not eq or not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", lang) or not number.isdigit():
            raise ValueError(f"{item[:40]!r} is not `language=count`")
        if int(number) > POOL_MAX:
            raise ValueError(f"at most {POOL_MAX} per language")
        sizes[lang] = int(number)
    return sizes


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the README's config table."""
    rows = []
    for f in dataclasses.fields(Settings):
        rows.append((f"PETRI_{f.name.upper()}", str(f.default), f.metadata.get("doc", "")))
    return rows
