"""Every exception class of the gateway, under one root. Each error the gateway raises on
purpose carries its HTTP status and a stable snake_case code; `routes` registers one handler
per class it answers (`PetriError`, Starlette's `HTTPException`, `ClientDisconnect`) and
turns anything else into one logged 500 `internal_error`. Errors that never reach a client
(configuration, image builds, reports) are `PetriError`s too, so `except PetriError` is the
one way to catch "the gateway said no"."""

from __future__ import annotations


class PetriError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """Headers the error response carries (`Retry-After`, `WWW-Authenticate`)."""
        return {}


class BadRequest(PetriError):
    status, code = 400, "bad_request"


class NotFound(PetriError):
    status, code = 404, "not_found"


class Conflict(PetriError):
    status, code = 409, "conflict"


class Gone(PetriError):
    status, code = 410, "gone"


class TooLarge(PetriError):
    status, code = 413, "too_large"


class UnsupportedMediaType(PetriError):
    status, code = 415, "unsupported_media_type"


class Invalid(PetriError):
    status, code = 422, "invalid"


class OverLimit(PetriError):
    status, code = 429, "over_limit"


class DockerUnavailable(PetriError):
    status, code = 503, "docker_unavailable"


class RunnerError(PetriError):
    """Docker answered, but not as needed (image missing, container gone, ...)."""

    status, code = 502, "runner_error"


class ContainerGone(RunnerError):
    """An exec found its container stopped or removed: the caller replaces it and retries
    (`Containers.ensure`), so an exec need not ask the engine first."""

    code = "container_gone"


class AppFailed(PetriError):
    """Test mode: the app under test exited (`app_exited`) or never answered on its port
    (`app_not_ready`). It ends an execution as its `error` event, never an HTTP answer."""

    status, code = 422, "app_exited"


class Unauthorized(PetriError):
    """No key, or one that is unknown, revoked or malformed (auth.py)."""

    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="petri"'}


class Forbidden(PetriError):
    status, code = 403, "forbidden"


class QuotaExceeded(OverLimit):
    """A tenant's quota is used up; `Retry-After` says when to ask again."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class WorkspaceFull(PetriError):
    """The workspace's disk quota (its loop-mounted image) is used up by a write."""

    status, code = 413, "quota_exceeded"


class SecretNotFound(PetriError):
    """An `env` entry names a secret the tenant does not have (vault.py)."""

    status, code = 422, "secret_not_found"


class EgressUnavailable(PetriError):
    """The install's egress proxy could not be set up (installer.py)."""

    status, code = 503, "egress_unavailable"


class SettingsError(PetriError, ValueError):
    """A `PETRI_*` variable holds a value the gateway cannot run with (config.py)."""

    status, code = 500, "bad_configuration"


class ImageBuildError(PetriError):
    """A runtime image could not be built, or its base found or made (images.py)."""

    status, code = 500, "image_build_failed"


class ReportError(PetriError):
    """A test report that cannot be read as what it claims to be (reports.py; the message
    says why). It ends up in a `report` event's note, never an HTTP answer."""

    status, code = 422, "invalid_report"


class BadGateway(PetriError):
    """A sandbox's service did not answer (exited, not listening, broke the connection)."""

    status, code = 502, "bad_gateway"


class UpstreamError(BadGateway):
    """The preview proxy: the service did not answer (no socket yet, nobody listening behind
    the relay, a reset)."""


class UpstreamProtocolError(UpstreamError):
    """The preview proxy's HTTP/1.1 client: the connection broke, or the service spoke
    something that is not HTTP/1.1."""
