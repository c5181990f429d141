"""One exception root, `PetriError`, and one class per family of error codes.

Every error the gateway answers (`{"error": {"code", "message"}}`) and every terminal `error`
event of a run becomes one of these, so an agent can `except SandboxNotFound:` rather than
compare strings. A program that exits non-zero is not an error: it is `Execution.exit_code`.

    try:
        sb.files.read("missing.txt")
    except FileNotFound as exc:
        print(exc.code, exc.message)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executions import Execution

__all__ = [
    "AppExited",
    "AppNotReady",
    "Conflict",
    "ExecutionFailed",
    "ExecutionInterrupted",
    "ExecutionNotFound",
    "Expired",
    "FileNotFound",
    "GatewayError",
    "GatewayUnavailable",
    "InstallFailed",
    "InvalidRequest",
    "NotFound",
    "PetriError",
    "QuotaExceeded",
    "RequestTimeout",
    "SandboxNotFound",
    "ServiceFailed",
    "ServiceNotFound",
    "TooLarge",
    "Unauthorized",
]


class PetriError(Exception):
    """The root of every error the SDK raises. `status` is the HTTP status (0 when no answer
    came), `code` the gateway's stable snake_case code, `message` the text for people."""

    status: int = 0
    code: str = "petri_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequest(PetriError, ValueError):
    """400, 415, 422: the request was refused as it stands (a bad field, an unknown language,
    a limit above the gateway's maximum). Fix the arguments; retrying will not help."""

    status, code = 422, "invalid"


class Unauthorized(PetriError):
    """401/403: no API key, or one the gateway does not accept (set `PETRI_API_KEY`)."""

    status, code = 401, "unauthorized"


class NotFound(PetriError, LookupError):
    """404: something that does not exist, or is not yours."""

    status, code = 404, "not_found"


class SandboxNotFound(NotFound):
    """The sandbox does not exist (deleted, expired past its TTL, or another tenant's)."""

    code = "sandbox_not_found"


class ExecutionNotFound(NotFound):
    code = "execution_not_found"


class FileNotFound(NotFound):
    """No such file or folder in the sandbox's workspace."""


class ServiceNotFound(NotFound):
    code = "service_not_found"


class Conflict(PetriError):
    """409: the request clashes with the current state (killing a finished run, writing over
    a folder)."""

    status, code = 409, "conflict"


class Expired(PetriError):
    """410: it existed but is gone for good (a replay of evicted events, an expired URL)."""

    status, code = 410, "expired"


class TooLarge(PetriError):
    """413: a body or upload above the gateway's limit."""

    status, code = 413, "too_large"


class QuotaExceeded(PetriError):
    """429: over a limit (sandboxes, running executions, services). `retry_after` holds the
    seconds the gateway asked to wait, when it said."""

    status, code = 429, "quota_exceeded"
    retry_after: float | None = None


class GatewayError(PetriError):
    """500 or an answer that is not Petri's: a bug or a proxy in the way."""

    status, code = 500, "internal_error"


class GatewayUnavailable(PetriError):
    """The gateway cannot be reached, is shutting down, or cannot reach Docker (502/503).
    Worth retrying later."""

    status, code = 503, "gateway_unavailable"


class RequestTimeout(PetriError):
    """A call (not a run: runs follow their own `timeout`) got no answer in time."""

    code = "request_timeout"


class ExecutionFailed(PetriError):
    """The gateway could not run the program: the run ended with an `error` event rather than
    an exit. `execution` holds what the run produced before (install output, app output)."""

    code = "execution_failed"
    execution: Execution | None = None


class InstallFailed(ExecutionFailed):
    """The dependency install failed (or ran out of the run's time); `message` holds the tail
    of its output, `execution.install` all of it."""

    code = "install_failed"


class AppExited(ExecutionFailed):
    """Test mode: the app under test exited before the tests ran."""

    code = "app_exited"


class AppNotReady(ExecutionFailed):
    """Test mode: the app under test never answered on its port."""

    code = "app_not_ready"


class ExecutionInterrupted(ExecutionFailed):
    """The gateway stopped the run (it shut down or restarted, or the sandbox went away)."""

    code = "interrupted"


class ServiceFailed(ExecutionFailed):
    """A service ended (or never answered) before it was ready; `execution` holds its output."""

    code = "service_failed"


_BY_CODE: dict[str, type[PetriError]] = {
    "sandbox_not_found": SandboxNotFound,
    "sandbox_gone": SandboxNotFound,
    "workspace_gone": SandboxNotFound,
    "execution_not_found": ExecutionNotFound,
    "service_not_found": ServiceNotFound,
    "unauthorized": Unauthorized,
    "forbidden": Unauthorized,
    "quota_exceeded": QuotaExceeded,
    "shutting_down": GatewayUnavailable,
    "docker_unavailable": GatewayUnavailable,
    "install_failed": InstallFailed,
    "app_exited": AppExited,
    "app_not_ready": AppNotReady,
    "interrupted": ExecutionInterrupted,
    "service_not_ready": ServiceFailed,
}

_BY_STATUS: dict[int, type[PetriError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    410: Expired,
    413: TooLarge,
    415: InvalidRequest,
    422: InvalidRequest,
    429: QuotaExceeded,
    502: GatewayUnavailable,
    503: GatewayUnavailable,
    504: GatewayUnavailable,
}


def from_response(
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    not_found: type[NotFound] = NotFound,
) -> PetriError:
    """The exception for an HTTP error answer. `not_found` is the class a plain 404 becomes
    (a file route's 404 is `FileNotFound`); specific codes win over it."""
    import json

    code, message = "", ""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:300].decode("utf-8", "replace").strip() or f"HTTP {status}"
    cls = _BY_CODE.get(code)
    if cls is None or issubclass(cls, ExecutionFailed):
        cls = _BY_STATUS.get(status, GatewayError if status >= 500 else InvalidRequest)
        if cls is NotFound:
            cls = not_found
    exc = cls(message, status=status, code=code or cls.code)
    if isinstance(exc, QuotaExceeded):
        exc.retry_after = _seconds((headers or {}).get("retry-after"))
    return exc


def from_error_event(data: dict[str, Any], execution: Execution | None) -> ExecutionFailed:
    """The exception for a run that ended with an `error` event."""
    code = str(data.get("code") or "execution_failed")
    message = str(data.get("message") or code)
    cls = _BY_CODE.get(code)
    if cls is None or not issubclass(cls, ExecutionFailed):
        cls = ExecutionFailed
    exc = cls(message, code=code)
    exc.execution = execution
    return exc


def _seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if 0 <= value < 10**7 else None
