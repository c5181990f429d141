"""The Python SDK of Petri: run untrusted code in sandboxes on your own gateway.

    from petri_sdk import Sandbox

    with Sandbox.create("python") as sb:          # deleted when the block ends
        sb.files.upload_dir("./my_project")
        ex = sb.run_tests()
        print(ex.tests.passed, ex.tests.failed, ex.stdout)
        print(sb.files.read("out/report.txt"))

`AsyncSandbox` has the same names and methods (`async with AsyncSandbox.create(...)`,
`await sb.run_code(...)`, `async for event in sb.stream(...)`). The gateway is `PETRI_URL`
(default http://127.0.0.1:8000) with `PETRI_API_KEY`; arguments win. A run's non-zero exit
code is data (`Execution.exit_code`); what the gateway refuses or cannot do raises a
`PetriError` subclass. Imports nothing from the gateway.
"""

from ._async.client import AsyncClient
from ._async.files import AsyncFiles
from ._async.sandbox import AsyncSandbox
from ._async.services import AsyncServices
from ._base import DEFAULT_EXCLUDE, App
from ._sync.client import Client
from ._sync.files import Files
from ._sync.sandbox import Sandbox
from ._sync.services import Services
from .errors import (
    AppExited,
    AppNotReady,
    Conflict,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionNotFound,
    Expired,
    FileNotFound,
    GatewayError,
    GatewayUnavailable,
    InstallFailed,
    InvalidRequest,
    NotFound,
    PetriError,
    QuotaExceeded,
    RequestTimeout,
    SandboxNotFound,
    ServiceFailed,
    ServiceNotFound,
    TooLarge,
    Unauthorized,
)
from .events import (
    AppEvent,
    ErrorEvent,
    Event,
    ExitEvent,
    InstallEvent,
    ReadyEvent,
    ReportEvent,
    StartEvent,
    StderrEvent,
    StdoutEvent,
    TestCase,
    TestReport,
    TruncatedEvent,
)
from .executions import Execution, ExecutionInfo
from .records import FileInfo, Package, SandboxInfo, Service

__all__ = [
    "DEFAULT_EXCLUDE",
    "App",
    "AppEvent",
    "AppExited",
    "AppNotReady",
    "AsyncClient",
    "AsyncFiles",
    "AsyncSandbox",
    "AsyncServices",
    "Client",
    "Conflict",
    "ErrorEvent",
    "Event",
    "Execution",
    "ExecutionFailed",
    "ExecutionInfo",
    "ExecutionInterrupted",
    "ExecutionNotFound",
    "ExitEvent",
    "Expired",
    "FileInfo",
    "FileNotFound",
    "Files",
    "GatewayError",
    "GatewayUnavailable",
    "InstallEvent",
    "InstallFailed",
    "InvalidRequest",
    "NotFound",
    "Package",
    "PetriError",
    "QuotaExceeded",
    "ReadyEvent",
    "ReportEvent",
    "RequestTimeout",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFound",
    "Service",
    "ServiceFailed",
    "ServiceNotFound",
    "Services",
    "StartEvent",
    "StderrEvent",
    "StdoutEvent",
    "TestCase",
    "TestReport",
    "TooLarge",
    "TruncatedEvent",
    "Unauthorized",
]
