"""Small typed records of the domain, the strict request bodies of the API, and models of
its response bodies and event data.

Request bodies are pydantic models (the one importer of pydantic): unknown fields and wrong
types are rejected, and the same models give `/openapi.json` its schemas. Response and event
models only document (handlers build dicts); tests hold real responses to them.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import Invalid

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SandboxStatus = Literal["running", "stopped"]
ExecutionStatus = Literal["running", "exited", "killed", "timed_out", "interrupted", "failed"]


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- domain records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int


@dataclass(slots=True)
class Sandbox:
    id: str
    language: str
    status: SandboxStatus
    created_at: float
    last_active_at: float
    ttl_seconds: int
    limits: Limits
    env: dict[str, str] = field(default_factory=dict)
    container_id: str = ""
    tenant: str = "default"  # who owns it (auth.py): other tenants get 404
    # environment variable -> name of a secret of its tenant (vault.py), resolved per exec
    secret_env: dict[str, str] = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        return self.last_active_at + self.ttl_seconds

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": self.language,
            "status": self.status,
            "created_at": iso(self.created_at),
            "last_active_at": iso(self.last_active_at),
            "expires_at": iso(self.expires_at),
            "ttl_seconds": self.ttl_seconds,
            "limits": asdict(self.limits),
            "env": sorted({*self.env, *self.secret_env}),
            "secret_env": {k: {"secret": v} for k, v in sorted(self.secret_env.items())},
            "tenant": self.tenant,
        }


@dataclass(slots=True)
class Execution:
    id: str
    sandbox_id: str
    argv: list[str]
    status: ExecutionStatus = "running"
    created_at: float = field(default_factory=now)
    ended_at: float | None = None
    exit_code: int | None = None
    timed_out: bool = False
    truncated: bool = False
    oom_killed: bool = False
    test: bool = False
    idempotency_key: str | None = None
    error_code: str | None = None

    @property
    def killed(self) -> bool:
        """Ended by `POST .../kill` (the `killed` of its `exit` event)."""
        return self.status == "killed"

    @property
    def duration_ms(self) -> int | None:
        if self.ended_at is None:
            return None
        return int((self.ended_at - self.created_at) * 1000)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sandbox_id": self.sandbox_id,
            "status": self.status,
            "argv": self.argv,
            "test": self.test,
            "created_at": iso(self.created_at),
            "ended_at": iso(self.ended_at),
            "duration_ms": self.duration_ms,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "truncated": self.truncated,
            "oom_killed": self.oom_killed,
            "killed": self.killed,
            "error_code": self.error_code,
        }


# --- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SecretRef(_Body):
    """An environment value taken from a stored secret of the sandbox's tenant (§11)."""

    secret: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")


EnvMap = dict[str, str | SecretRef]
MetaValue = str | int | float | bool | None
M = TypeVar("M", bound=BaseModel)


def split_env(env: EnvMap | None) -> tuple[dict[str, str], dict[str, str]]:
    """(plain values, env name -> secret name)."""
    plain: dict[str, str] = {}
    refs: dict[str, str] = {}
    for key, value in (env or {}).items():
        if isinstance(value, SecretRef):
            refs[key] = value.secret
        else:
            plain[key] = value
    return plain, refs


def _check_env(env: EnvMap | None) -> EnvMap | None:
    if env is None:
        return None
    if len(env) > 128:
        raise ValueError("at most 128 environment variables")
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise ValueError(f"{key[:40]!r} is not a valid environment variable name")
        if isinstance(value, SecretRef):
            continue
        if "\x00" in value or len(value) > 32768:
            raise ValueError(f"value of {key} holds a NUL byte or is longer than 32768")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError(f"value of {key} is not valid Unicode (a lone surrogate)")
    return env


class LimitsBody(_Body):
    memory_mb: int | None = Field(default=None, ge=16)
    cpus: float | None = Field(default=None, ge=0.01)
    pids: int | None = Field(default=None, ge=8)
    disk_mb: int | None = Field(default=None, ge=16)

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus_int(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class CreateSandbox(_Body):
    language: str = Field(min_length=1, max_length=32, examples=["python", "node", "go", "java"])
    ttl_seconds: int | None = Field(default=None, ge=1)
    env: EnvMap | None = None
    limits: LimitsBody | None = None

    _env = field_validator("env")(_check_env)


READY_PATH = re.compile(r"^/[!-~]{0,2047}$")  # printable ASCII, no spaces: one request line


class AppBody(_Body):
    """Test mode's app under test (DESIGN §9): started in the sandbox before the tests and
    probed from inside it until `port` answers (with `ready_path`, any HTTP status line)."""

    command: str = Field(min_length=1, max_length=8192, examples=["python app.py"])
    port: int = Field(ge=1024, le=65535, examples=[5000])
    ready_path: str | None = Field(default=None, min_length=1, max_length=2048, examples=["/"])
    # default 30 s (or the run's timeout_seconds, if shorter); at most timeout_seconds
    ready_timeout_seconds: int | None = Field(default=None, ge=1)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if "\x00" in value or not value.strip():
            raise ValueError("must not be blank or hold NUL bytes")
        return value

    @field_validator("ready_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not READY_PATH.match(value):
            raise ValueError("must start with / and hold only printable ASCII, no spaces")
        return value


class ExecBody(_Body):
    command: str | None = Field(default=None, min_length=1, max_length=65536)
    code: str | None = Field(default=None, max_length=4 * 1024 * 1024)
    filename: str | None = Field(default=None, min_length=1, max_length=1024)
    test: bool = False
    app: AppBody | None = None  # test mode only
    # appended to the program's argv: after the file that `code` or `filename` runs, or as
    # $1, $2, ... of a `command` (never through a shell: no quoting needed)
    args: list[Annotated[str, Field(max_length=65536)]] | None = Field(
        default=None, max_length=1024
    )
    timeout_seconds: int | None = Field(default=None, ge=1)
    # no output (stdout or stderr) for this long: killed, `timed_out` and `idle` on `exit`
    idle_timeout_seconds: int | None = Field(default=None, ge=1)
    env: EnvMap | None = None
    stdin: str | None = Field(default=None, max_length=16 * 1024 * 1024)
    wait: bool = True
    # Who ran what, with which prompt: recorded with the run in the audit ledger (§11).
    metadata: dict[str, MetaValue] | None = Field(
        default=None, examples=[{"prompt_id": "p-123", "model": "some-model", "agent_run": "r-9"}]
    )

    _env = field_validator("env")(_check_env)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, MetaValue] | None) -> dict[str, MetaValue] | None:
        if value is None:
            return None
        if len(value) > 32:
            raise ValueError("at most 32 keys")
        for key, item in value.items():
            if not 0 < len(key) <= 64:
                raise ValueError("keys hold 1 to 64 characters")
            if isinstance(item, str) and len(item) > 1024:
                raise ValueError(f"{key[:64]}: at most 1024 characters")
            if isinstance(item, float) and item != item:
                raise ValueError(f"{key[:64]}: not a number")
        return value

    @field_validator("command", "code", "filename", "stdin")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not hold NUL bytes")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ExecBody:
        given = [n for n in ("command", "code", "filename") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError("give only one of command, code, filename")
        if not given and not self.test:
            raise ValueError("give one of command, code, filename (or test: true)")
        if self.app is not None and not self.test:
            raise ValueError("app is for test mode (test: true); a long-running app is a service")
        if self.test and self.code is not None:
            raise ValueError("test mode runs the project's tests: give no code")
        if self.args is not None and self.test:
            raise ValueError("args go to a program (command, code or filename), not to test mode")
        if self.args is not None and any("\x00" in a for a in self.args):
            raise ValueError("args must not hold NUL bytes")
        return self


# --- response bodies and event data: what /openapi.json documents ---------------------------
# The handlers build plain dicts (`Sandbox.public()`, ...); these models describe them, and
# tests check real responses and events against the schemas made from them. Fields may be
# added (clients ignore what they do not know), so the schemas allow more properties.

Stamp = Annotated[
    str, Field(description="UTC, ISO 8601 with milliseconds", examples=["2025-01-01T12:00:00.000Z"])
]
RunStatus = Literal["exited", "killed", "timed_out", "interrupted", "failed"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Doc):
    code: str = Field(description="stable snake_case code, e.g. `sandbox_not_found`")
    message: str = Field(description="for people")


class Error(_Doc):
    """Every error response: a status that fits, and this body."""

    error: ErrorDetail


class LimitsOut(_Doc):
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int


class SandboxOut(_Doc):
    id: str
    language: str
    status: SandboxStatus
    created_at: Stamp
    last_active_at: Stamp
    expires_at: Stamp = Field(description="last activity plus the TTL: when it may be removed")
    ttl_seconds: int
    limits: LimitsOut
    env: list[str] = Field(description="names of its environment variables (never the values)")
    secret_env: dict[str, SecretRef] = Field(
        description="environment variables taken from secrets: name -> `{secret}`"
    )
    tenant: str = Field(description="the tenant that owns it")


class SandboxPage(_Doc):
    sandboxes: list[SandboxOut]
    next: str | None = Field(description="pass as `after` for the next page; null on the last")


class FileEntry(_Doc):
    path: str
    size: int
    modified_at: Stamp


class FileListing(_Doc):
    files: list[FileEntry]
    truncated: bool = Field(
        description="true when a bound (depth, entries, time) cut the listing short"
    )
    note: str | None = Field(default=None, description="what was left out, when truncated")


class WrittenFile(_Doc):
    path: str
    size: int


class WrittenFiles(_Doc):
    files: list[WrittenFile]


class ExtractedFiles(_Doc):
    files: list[str] = Field(description="paths of the files the zip held, as extracted")


class Package(_Doc):
    name: str
    version: str
    language: str


class InstallOut(_Doc):
    status: Literal["installed", "cached", "skipped", "failed"]
    packages: list[Package]
    log: str = Field(description="the install output (the `install` events' text)")


class ReportCounts(_Doc):
    """`exit.tests`: the report's counts (null where the runner left nothing to parse)."""

    passed: int | None
    failed: int | None
    skipped: int | None
    errors: int | None


class CaseData(_Doc):
    name: str
    suite: str = Field(description="the class, module or package the case belongs to")
    status: Literal["passed", "failed", "skipped", "error"]
    duration_ms: int | None
    message: str | None = Field(default=None, description="the failure message, if it failed")


class ReportData(ReportCounts):
    """Test mode's parsed results (the `report` event; `tests` of the JSON answer)."""

    runner: str = Field(description="e.g. `pytest`, `npm test`, `go test`, `junit`, `command`")
    duration_ms: int = Field(description="the runner's wall time")
    cases: list[CaseData] | None = Field(
        description="at most 1000, failures first; null where there was nothing to parse"
    )
    message: str | None = Field(default=None, description="why there are no cases, or fewer")
    cases_omitted: int | None = Field(default=None, description="cases counted, not listed")


class AppData(_Doc):
    stream: Literal["stdout", "stderr"]
    text: str = Field(description="a chunk of the app's output, as it arrived")


class AppResult(_Doc):
    """Test mode's app under test, in the JSON answer."""

    ready_after_ms: int | None
    stdout: str
    stderr: str


class ExecResult(_Doc):
    """`exec` without `Accept: text/event-stream` and with `wait` (the default): the run's
    record and output. The `exit` event's fields are copied in when the run exited; `error`
    is there when it ended with an `error` event instead."""

    execution_id: str
    status: RunStatus
    exit_code: int | None = Field(description="null when the run ended with an `error` event")
    stdout: str
    stderr: str
    duration_ms: int | None
    timed_out: bool
    truncated: bool
    oom_killed: bool
    killed: bool = Field(description="ended by `POST .../kill`")
    install: InstallOut
    idle: bool | None = Field(default=None, description="timed out for lack of output")
    signal: str | None = Field(default=None, description="e.g. `SIGKILL`, when a signal ended it")
    missing_modules: list[str] | None = Field(default=None)
    error: ErrorDetail | None = Field(default=None, description="how the run failed to run")
    tests: ReportData | None = Field(default=None, description="test mode: the whole report")
    app: AppResult | None = Field(default=None, description="test mode: the app under test")


class Accepted(_Doc):
    """`exec` with `"wait": false`: the run started; follow it at `events_url`."""

    execution_id: str
    events_url: str


class ExecutionOut(_Doc):
    id: str
    sandbox_id: str
    status: ExecutionStatus
    argv: list[str]
    test: bool
    created_at: Stamp
    ended_at: Stamp | None
    duration_ms: int | None
    exit_code: int | None
    timed_out: bool
    truncated: bool
    oom_killed: bool
    killed: bool = Field(description="ended by `POST .../kill` (status `killed`)")
    error_code: str | None = Field(description="the `error` event's code, if it ended with one")


class ExecutionList(_Doc):
    executions: list[ExecutionOut]


class Packages(_Doc):
    """The bill of materials of the sandbox's last successful dependency install."""

    packages: list[Package]
    manifest_hash: str | None
    plan: str | None = None
    installed_at: Stamp | None = None


class SecretWritten(_Doc):
    name: str
    created: bool = Field(description="false when it replaced a value")


class SecretOut(_Doc):
    tenant: str
    name: str
    created_at: Stamp
    updated_at: Stamp


class SecretList(_Doc):
    """Names only: no route returns a secret's value."""

    secrets: list[SecretOut]


class AuditRecord(_Doc):
    """`hash = sha256(prev_hash + canonical JSON of the other fields)`; the first
    `prev_hash` is 64 zeros, or a `ledger.checkpoint` leads where retention removed records."""

    seq: int
    at: str
    tenant: str
    key_id: str | None
    action: str = Field(examples=["sandbox.create", "exec.start", "exec.finish", "secret.put"])
    target: str
    detail: dict[str, Any]
    metadata: dict[str, Any] = Field(description="the `metadata` the exec was given")
    prev_hash: str
    hash: str


class AuditPage(_Doc):
    records: list[AuditRecord]
    next: int | None = Field(description="pass as `after` for the next page; null on the last")


class Health(_Doc):
    status: Literal["ok"]


class Ready(_Doc):
    status: Literal["ready"]
    docker: Literal["ok"]


class StartData(_Doc):
    execution_id: str
    sandbox_id: str


class TextData(_Doc):
    text: str = Field(description="a chunk as it arrived, not necessarily a whole line")


class TruncatedData(_Doc):
    budget_bytes: int
    message: str
    source: Literal["app"] | None = Field(
        default=None, description='"app": the app under test\'s own budget (test mode)'
    )


class ExitData(_Doc):
    exit_code: int
    duration_ms: int
    timed_out: bool = Field(description="killed by `timeout_seconds` or `idle_timeout_seconds`")
    idle: bool = Field(description="the timeout was `idle_timeout_seconds` (no output)")
    truncated: bool = Field(description="the output budget was reached")
    oom_killed: bool = Field(description="the kernel killed it for lack of memory")
    killed: bool = Field(description="ended by `POST .../kill`")
    signal: str | None = Field(default=None, description="e.g. `SIGKILL`, when a signal ended it")
    missing_modules: list[str] | None = Field(
        default=None, description="modules it failed to import (non-zero exits only)"
    )
    tests: ReportCounts | None = Field(default=None, description="test mode: the report's counts")


class ReadyData(_Doc):
    port: int = Field(description="the service's or test mode's app's port")
    after_ms: int = Field(description="milliseconds from the program's start to its first answer")


# The `data` of each event type (DESIGN.md §4); `install`, `stdout`, `stderr` carry text.
EVENT_DATA: dict[str, type[BaseModel]] = {
    "start": StartData,
    "install": TextData,
    "stdout": TextData,
    "stderr": TextData,
    "truncated": TruncatedData,
    "exit": ExitData,
    "error": ErrorDetail,
    "ready": ReadyData,
    "app": AppData,
    "report": ReportData,
}


def parse(model: type[M], data: Any) -> M:
    """Validate a decoded JSON body; raise `Invalid` (422) naming the first bad field."""
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        code = "unknown_field" if first["type"] == "extra_forbidden" else "invalid_field"
        raise Invalid(f"{where}: {first['msg']}", code=code) from None


def schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


# --- serve mode ------------------------------------------------------------------------------

ServiceStatus = Literal["starting", "ready", "exited", "stopped"]
LIVE_SERVICE: tuple[ServiceStatus, ...] = ("starting", "ready")


@dataclass(slots=True)
class Service:
    """A long-running process in a sandbox, reached through its preview URL. The URL's token
    is a capability: only its sha256 is kept (`token_hash`; empty once revoked)."""

    id: str
    sandbox_id: str
    execution_id: str
    command: str
    port: int
    ready_path: str
    expires_at: float
    token_hash: str
    status: ServiceStatus = "starting"
    created_at: float = field(default_factory=now)
    ready_at: float | None = None
    ended_at: float | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE_SERVICE

    def public(self, preview_url: str | None, preview_host_url: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "sandbox_id": self.sandbox_id,
            "command": self.command,
            "port": self.port,
            "ready_path": self.ready_path,
            "status": self.status,
            "preview_url": preview_url,
            "preview_host_url": preview_host_url,
            "expires_at": iso(self.expires_at),
            "execution_id": self.execution_id,
            "created_at": iso(self.created_at),
            "ready_at": iso(self.ready_at),
            "ended_at": iso(self.ended_at),
        }


class ServiceBody(_Body):
    command: str = Field(min_length=1, max_length=65536)
    port: int = Field(ge=1, le=65535)
    # an origin-form request target: printable ASCII, no spaces
    ready_path: str = Field(default="/", min_length=1, max_length=2048, pattern=r"^/[!-~]*$")
    ready_timeout_seconds: int = Field(default=30, ge=1, le=3600)
    preview_ttl_seconds: int | None = Field(default=None, ge=1)

    @field_validator("command")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not hold NUL bytes")
        return value


class ServiceOut(_Doc):
    id: str = Field(examples=["sv-0123456789abcdef"])
    sandbox_id: str
    command: str
    port: int
    ready_path: str
    status: ServiceStatus = Field(
        description="`starting` -> `ready` -> `exited` (by itself, never ready, or a gateway "
        "restart) or `stopped` (`DELETE`, a kill, or its preview expired)"
    )
    preview_url: str | None = Field(
        description="`{PETRI_PUBLIC_URL}/preview/{token}/`: a capability; null once revoked or "
        "after a gateway restart"
    )
    preview_host_url: str | None = Field(
        description="`{token}.{PETRI_PREVIEW_DOMAIN}`, when that is set"
    )
    expires_at: Stamp
    execution_id: str = Field(description="its output: that execution's event stream")
    created_at: Stamp
    ready_at: Stamp | None
    ended_at: Stamp | None


class ServiceList(_Doc):
    services: list[ServiceOut]
