"""The MCP server (Model Context Protocol): Petri's tools for agents. The one importer of `mcp`.

Two ways in, one set of tools, each built on the SDK (`petri_sdk.AsyncSandbox`), so a tool
does exactly what the HTTP API does, with the same checks:
- `petri mcp`: stdio, for desktop agents (Claude Code, Cursor); talks HTTP to the gateway at
  `PETRI_URL` with `PETRI_API_KEY`.
- `/mcp` on the gateway (streamable HTTP, stateless): the tools call the gateway's own API
  in-process (`InProcessTransport`), streaming, with the caller's `Authorization` header and
  client address, so auth and tenancy apply as to any other request.

While a run goes on, its output is sent as progress notifications (to a client that asked
for progress); the result keeps stdout, stderr, exit code and the test report apart. What the
gateway refuses or cannot do is a tool error whose text says what to do next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote

import anyio
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from petri_sdk import (
    App,
    AsyncClient,
    AsyncSandbox,
    Event,
    ExecutionFailed,
    InstallEvent,
    PetriError,
    SandboxInfo,
    SandboxNotFound,
    StartEvent,
    StderrEvent,
    StdoutEvent,
)
from petri_sdk import Execution as SdkExecution
from petri_sdk import TestReport as SdkReport

log = logging.getLogger("petri.mcp")

# Text kept per stream in a result (head and tail); progress text sent per run.
RESULT_CHARS = 32_000
PROGRESS_CHARS = 256_000
INSTRUCTIONS = """\
Petri runs code in isolated sandboxes (Docker containers without network access) on the
user's own machines. Create a sandbox for a language, write or upload files into its
workspace (/sandbox; paths are relative to it), then run code, commands or the project's
tests. Dependencies in the project's manifest (requirements.txt, pyproject.toml,
package.json, go.mod, pom.xml), or imported by Python code, are installed before a run.
A non-zero exit code is a result, not a failure of the tool. Delete sandboxes when done."""

ClientFactory = Callable[[Context], contextlib.AbstractAsyncContextManager[AsyncClient]]
T = TypeVar("T")

# --- inputs ------------------------------------------------------------------------------------

SandboxId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="id of a sandbox, as create_sandbox returned it (sb-...)",
    ),
]
Timeout = Annotated[
    int | None,
    Field(
        ge=1,
        le=3600,
        description="seconds the whole run may take, dependency install included; "
        "default: the gateway's (60 s unless configured)",
    ),
]
Path = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        description="path relative to the workspace /sandbox, e.g. src/app.py",
    ),
]

# --- results -----------------------------------------------------------------------------------


class SandboxOut(BaseModel):
    sandbox_id: str
    language: str
    expires_at: str | None = Field(description="deleted after this unless used again")
    workspace: str = "/sandbox"


class TestCaseOut(BaseModel):
    name: str
    suite: str
    status: str
    message: str | None = None


class TestsOut(BaseModel):
    runner: str | None
    passed: int | None
    failed: int | None
    skipped: int | None
    errors: int | None
    failures: list[TestCaseOut] = Field(description="the cases that failed or erred")
    message: str | None = None


class RunOut(BaseModel):
    execution_id: str
    status: str = Field(description="exited, killed or timed_out")
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    oom_killed: bool
    killed: bool
    duration_ms: int | None
    missing_modules: list[str] = Field(description="modules the program failed to import")
    tests: TestsOut | None = Field(default=None, description="the test report (run_tests)")
    app_output: str | None = Field(default=None, description="output of the app under test")
    output_shortened: bool = Field(
        description="stdout or stderr was longer than shown: the middle was left out"
    )


class FileOut(BaseModel):
    path: str
    size: int


class FileContent(BaseModel):
    path: str
    content: str
    shortened: bool = Field(description="the file is longer than shown (the start is shown)")


class FileList(BaseModel):
    files: list[FileOut]


class ServiceOut(BaseModel):
    service_id: str
    status: str
    port: int
    preview_url: str | None = Field(description="the URL that reaches the service")
    execution_id: str


class Done(BaseModel):
    ok: bool = True
    detail: str


# --- conversions -------------------------------------------------------------------------------


def _shorten(text: str, limit: int = RESULT_CHARS) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    head = limit // 4
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters left out ...]\n{text[-tail:]}", True


def _tests(report: SdkReport | None) -> TestsOut | None:
    if report is None:
        return None
    return TestsOut(
        runner=report.runner,
        passed=report.passed,
        failed=report.failed,
        skipped=report.skipped,
        errors=report.errors,
        failures=[
            TestCaseOut(name=c.name, suite=c.suite, status=c.status, message=c.message)
            for c in report.failures[:50]
        ],
        message=report.message,
    )


def _run_out(ex: SdkExecution) -> RunOut:
    stdout, cut_out = _shorten(ex.stdout)
    stderr, cut_err = _shorten(ex.stderr)
    return RunOut(
        execution_id=ex.id,
        status=ex.status,
        exit_code=ex.exit_code,
        stdout=stdout,
        stderr=stderr,
        timed_out=ex.timed_out,
        oom_killed=ex.oom_killed,
        killed=ex.killed,
        duration_ms=ex.duration_ms,
        missing_modules=ex.missing_modules,
        tests=_tests(ex.tests),
        app_output=_shorten(ex.app_output, 8000)[0] if ex.app_output else None,
        output_shortened=cut_out or cut_err,
    )


def _tool_error(exc: PetriError) -> ToolError:
    hints = {
        "sandbox_not_found": " (it was deleted or expired: create_sandbox makes a new one)",
        "unknown_language": " (one of python, node, go, java)",
        "gateway_unreachable": "",
    }
    text = f"{exc.code}: {exc.message}{hints.get(exc.code, '')}"
    if isinstance(exc, ExecutionFailed) and exc.execution is not None:
        ex = exc.execution
        if ex.install and exc.code != "install_failed":
            text += "\n--- install output (end) ---\n" + ex.install[-4000:]
        if ex.app_output:
            text += "\n--- app output (end) ---\n" + ex.app_output[-4000:]
    return ToolError(text)


# --- progress ----------------------------------------------------------------------------------


class _Progress:
    """Sends a run's output as progress notifications, labelled by stream, up to a budget."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.count, self.sent, self.capped = ctx, 0, 0, False
        self.execution_id = ""

    async def note(self, message: str) -> None:
        self.count += 1
        try:
            await self.ctx.report_progress(self.count, None, message)
        except Exception:  # a client that went away must not fail the run
            log.debug("progress notification failed", exc_info=True)

    async def event(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.execution_id = event.execution_id
            await self.note(f"started execution {event.execution_id} in {event.sandbox_id}")
            return
        if isinstance(event, StdoutEvent | StderrEvent | InstallEvent):
            if self.sent >= PROGRESS_CHARS:
                if not self.capped:
                    self.capped = True
                    await self.note("(more output: it is in the result)")
                return
            # An event may be large (output is coalesced up to 256 KiB): send only what the
            # budget has left, so the notifications never exceed it.
            text = event.text[: PROGRESS_CHARS - self.sent]
            self.sent += len(text)
            await self.note(f"{event.type}: {text}")


# --- the tools ---------------------------------------------------------------------------------


def build(client_for: ClientFactory) -> MCPServer:
    """The MCP server with Petri's tools; `client_for` gives each call its SDK client."""
    server: MCPServer = MCPServer(
        "petri", instructions=INSTRUCTIONS, version="0.2.0", log_level="WARNING"
    )

    async def on(
        ctx: Context, sandbox_id: str | None, fn: Callable[[AsyncSandbox], Awaitable[T]]
    ) -> T:
        """`fn` with the sandbox (or, for None, a client alone); PetriError -> ToolError."""
        async with client_for(ctx) as client:
            sb = AsyncSandbox(SandboxInfo(sandbox_id or "", "", ""), client)
            try:
                return await fn(sb)
            except PetriError as exc:
                raise _tool_error(exc) from None

    async def run(
        ctx: Context,
        sandbox_id: str,
        start: Callable[
            [AsyncSandbox, Callable[[Event], Awaitable[None]]], Awaitable[SdkExecution]
        ],
    ) -> RunOut:
        progress = _Progress(ctx)

        async def go(sb: AsyncSandbox) -> SdkExecution:
            try:
                return await start(sb, progress.event)
            except asyncio.CancelledError:  # the call was cancelled: so is the run
                if progress.execution_id:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        with anyio.fail_after(10):
                            await sb.kill(progress.execution_id)
                raise

        return _run_out(await on(ctx, sandbox_id, go))

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    changes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    destroys = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)

    @server.tool(annotations=changes)
    async def create_sandbox(
        language: Annotated[
            Literal["python", "node", "go", "java"],
            Field(description="the sandbox's language: its runtime and how files are run"),
        ],
        ctx: Context,
        ttl_seconds: Annotated[
            int | None,
            Field(ge=60, le=86400, description="seconds it lives after its last use"),
        ] = None,
    ) -> SandboxOut:
        """Create a sandbox: an empty workspace (/sandbox) and an isolated container with the
        language's toolchain and no network. Returns its id for the other tools."""

        async def make(unused: AsyncSandbox) -> SandboxOut:
            sb = await AsyncSandbox.create(language, ttl=ttl_seconds, client=unused.client)
            return SandboxOut(sandbox_id=sb.id, language=sb.language, expires_at=sb.info.expires_at)

        return await on(ctx, None, make)

    @server.tool(annotations=changes)
    async def run_code(
        sandbox_id: SandboxId,
        code: Annotated[
            str,
            Field(
                min_length=1,
                max_length=4 * 1024 * 1024,
                description="source code in the sandbox's language (a whole program)",
            ),
        ],
        ctx: Context,
        timeout_seconds: Timeout = None,
        stdin: Annotated[str | None, Field(description="text sent to its stdin")] = None,
    ) -> RunOut:
        """Run source code in the sandbox (python, node, go or java, as created). Packages
        it imports are installed first (Python). Returns stdout, stderr and the exit code;
        output streams as progress notifications while it runs."""
        return await run(
            ctx,
            sandbox_id,
            lambda sb, on: sb.run_code(code, timeout=timeout_seconds, stdin=stdin, on_event=on),
        )

    @server.tool(annotations=changes)
    async def run_command(
        sandbox_id: SandboxId,
        command: Annotated[
            str,
            Field(
                min_length=1,
                max_length=65536,
                description="a bash command line, run in /sandbox (e.g. `ls -la`, "
                "`python main.py --fast`, `npm run build`)",
            ),
        ],
        ctx: Context,
        timeout_seconds: Timeout = None,
    ) -> RunOut:
        """Run a shell command in the sandbox's workspace. Returns stdout, stderr and the
        exit code (non-zero is a result, not a tool failure)."""
        return await run(
            ctx,
            sandbox_id,
            lambda sb, on: sb.run_command(command, timeout=timeout_seconds, on_event=on),
        )

    @server.tool(annotations=changes)
    async def run_tests(
        sandbox_id: SandboxId,
        ctx: Context,
        path: Annotated[
            str | None,
            Field(description="a test file or folder to run; default: the whole project"),
        ] = None,
        app_command: Annotated[
            str | None,
            Field(
                description="a command that starts the app the tests call (e.g. `python "
                "app.py`); it runs during the tests and must listen on app_port"
            ),
        ] = None,
        app_port: Annotated[
            int | None, Field(ge=1024, le=65535, description="the port app_command listens on")
        ] = None,
        ready_path: Annotated[
            str | None,
            Field(description="HTTP path probed until the app answers (default /)"),
        ] = None,
        ready_timeout_seconds: Annotated[
            int | None,
            Field(ge=1, le=3600, description="seconds the app has to answer (default 30)"),
        ] = None,
        timeout_seconds: Timeout = None,
    ) -> RunOut:
        """Run the project's tests with its language's runner (pytest; npm test or node
        --test; go test; JUnit), after installing its dependencies and, if app_command is
        given, starting the app and waiting until it answers. Returns the test report
        (passed, failed, skipped, errors, and each failure with its message)."""
        if (app_command is None) != (app_port is None):
            raise ToolError("give app_command and app_port together (or neither)")
        app = (
            App(app_command, app_port, ready_path, ready_timeout_seconds)
            if app_command and app_port
            else None
        )
        return await run(
            ctx,
            sandbox_id,
            lambda sb, on: sb.run_tests(path, app=app, timeout=timeout_seconds, on_event=on),
        )

    @server.tool(annotations=changes)
    async def write_file(
        sandbox_id: SandboxId,
        path: Path,
        content: Annotated[str, Field(description="the whole file, as text (UTF-8)")],
        ctx: Context,
    ) -> FileOut:
        """Write a text file into the workspace (folders are made; an existing file is
        replaced)."""

        async def write(sb: AsyncSandbox) -> FileOut:
            info = await sb.files.write(path, content)
            return FileOut(path=info.path, size=info.size)

        return await on(ctx, sandbox_id, write)

    @server.tool(annotations=read_only)
    async def read_file(sandbox_id: SandboxId, path: Path, ctx: Context) -> FileContent:
        """Read a file of the workspace as text (up to 100,000 characters are shown)."""
        text = await on(ctx, sandbox_id, lambda sb: sb.files.read(path))
        shown = text[:100_000]
        return FileContent(path=path, content=shown, shortened=len(shown) < len(text))

    @server.tool(annotations=read_only)
    async def list_files(
        sandbox_id: SandboxId,
        ctx: Context,
        path: Annotated[
            str, Field(max_length=1024, description="a folder to list; default: everything")
        ] = "",
    ) -> FileList:
        """List the files of the workspace (recursively), with their sizes."""
        files = await on(ctx, sandbox_id, lambda sb: sb.files.list(path))
        return FileList(files=[FileOut(path=f.path, size=f.size) for f in files[:2000]])

    @server.tool(annotations=changes)
    async def start_service(
        sandbox_id: SandboxId,
        command: Annotated[
            str,
            Field(
                min_length=1, max_length=65536, description="starts a server, e.g. `python app.py`"
            ),
        ],
        port: Annotated[int, Field(ge=1, le=65535, description="the port the server listens on")],
        ctx: Context,
        ready_path: Annotated[
            str | None, Field(description="HTTP path probed until it answers (default /)")
        ] = None,
    ) -> ServiceOut:
        """Start a long-running server in the sandbox and wait until it answers HTTP on its
        port. Returns a preview URL that reaches it; stop it with stop_service."""
        progress = _Progress(ctx)

        async def start(sb: AsyncSandbox) -> ServiceOut:
            svc = await sb.services.start(
                command,
                port,
                ready_path=ready_path,
                on_stdout=lambda t: progress.note(f"stdout: {t}"),
                on_stderr=lambda t: progress.note(f"stderr: {t}"),
            )
            return ServiceOut(
                service_id=svc.id,
                status=svc.status,
                port=svc.port,
                preview_url=svc.preview_url,
                execution_id=svc.execution_id,
            )

        return await on(ctx, sandbox_id, start)

    @server.tool(annotations=destroys)
    async def stop_service(
        sandbox_id: SandboxId,
        service_id: Annotated[str, Field(min_length=1, max_length=64, description="sv-...")],
        ctx: Context,
    ) -> Done:
        """Stop a service started with start_service; its preview URL stops working."""
        await on(ctx, sandbox_id, lambda sb: sb.services.stop(service_id))
        return Done(detail=f"service {service_id} stopped")

    @server.tool(annotations=destroys)
    async def kill_execution(
        sandbox_id: SandboxId,
        execution_id: Annotated[
            str,
            Field(
                min_length=1,
                max_length=64,
                description="ex-..., from the progress notifications of a running tool",
            ),
        ],
        ctx: Context,
    ) -> Done:
        """Kill a running execution (a run_code, run_command or run_tests still going)."""
        info = await on(ctx, sandbox_id, lambda sb: sb.kill(execution_id))
        return Done(detail=f"execution {info.id}: {info.status}")

    @server.tool(annotations=destroys)
    async def delete_sandbox(sandbox_id: SandboxId, ctx: Context) -> Done:
        """Delete a sandbox: stop its container and remove its workspace and files."""

        async def delete(sb: AsyncSandbox) -> None:
            await sb.client.request("DELETE", sb.path, not_found=SandboxNotFound)

        await on(ctx, sandbox_id, delete)
        return Done(detail=f"sandbox {sandbox_id} deleted")

    return server


# --- stdio: `petri mcp` ------------------------------------------------------------------------


def run_stdio(url: str | None = None, api_key: str | None = None) -> None:
    """Serve the tools over stdin/stdout, against the gateway at `url` (PETRI_URL)."""
    client = AsyncClient(url, api_key)

    @contextlib.asynccontextmanager
    async def client_for(ctx: Context) -> AsyncIterator[AsyncClient]:
        yield client

    async def main() -> None:
        try:
            await build(client_for).run_stdio_async()
        finally:
            await client.aclose()

    asyncio.run(main())


# --- /mcp on the gateway: the API called in-process --------------------------------------------

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


class InProcessTransport(httpx.AsyncBaseTransport):
    """httpx requests served by an ASGI app in this process, the response streamed as the
    app writes it (httpx's own ASGITransport waits for the whole body: no live output).
    Requests carry `client`/`server` of the MCP request they serve."""

    def __init__(self, app: ASGIApp, client: Any = None, server: Any = None) -> None:
        self.app, self.client, self.server = app, client, server

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": unquote(request.url.path),
            "raw_path": request.url.raw_path.split(b"?", 1)[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": self.client,
            "server": self.server,
        }
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        started, closed = asyncio.Event(), asyncio.Event()
        head: dict[str, Any] = {}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                head["status"], head["headers"] = message["status"], message.get("headers", [])
                started.set()
            elif message["type"] == "http.response.body" and not closed.is_set():
                if message.get("body"):
                    await chunks.put(message["body"])
                if not message.get("more_body", False):
                    await chunks.put(None)

        async def serve() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception:
                log.exception("in-process request %s %s failed", request.method, scope["path"])
            finally:
                started.set()
                if not closed.is_set():
                    with contextlib.suppress(asyncio.QueueFull):
                        chunks.put_nowait(None)

        task = asyncio.create_task(serve())
        await started.wait()
        if "status" not in head:
            await task
            raise httpx.RemoteProtocolError("the gateway answered nothing", request=request)
        return httpx.Response(
            head["status"],
            headers=head["headers"],
            stream=_Stream(chunks, task, closed),
            request=request,
        )


class _Stream(httpx.AsyncByteStream):
    def __init__(
        self, chunks: asyncio.Queue[bytes | None], task: asyncio.Task[None], closed: asyncio.Event
    ) -> None:
        self.chunks, self.task, self.closed = chunks, task, closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.chunks.get()
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        """The reader is done: the app sees a disconnect, and is cancelled if it lingers."""
        self.closed.set()
        for _ in range(20):
            while not self.chunks.empty():  # unblock a send waiting on a full queue
                self.chunks.get_nowait()
            if self.task.done():
                return
            await asyncio.sleep(0.05)
        self.task.cancel()


def _bearer(ctx: Context) -> str | None:
    auth = (ctx.headers or {}).get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def http_app(
    app: Callable[[], ASGIApp], allowed_hosts: list[str]
) -> tuple[ASGIApp, Callable[[], contextlib.AbstractAsyncContextManager[None]]]:
    """The `/mcp` endpoint (an ASGI app for the route) and the context manager that runs its
    session manager (enter it in the gateway's lifespan). `app()` is the gateway's own app;
    `allowed_hosts` the Host values accepted (DNS-rebinding protection; `*` turns it off)."""

    @contextlib.asynccontextmanager
    async def client_for(ctx: Context) -> AsyncIterator[AsyncClient]:
        scope = getattr(ctx.request_context.request, "scope", None) or {}
        transport = InProcessTransport(app(), scope.get("client"), scope.get("server"))
        # The tools' calls carry the Host of the /mcp request they serve, which the gateway's
        # Host check (hosts.py) and MCP's own already let in; no DNS is involved in-process.
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if not _HOST.fullmatch(host):
            host = "localhost"
        async with AsyncClient(f"http://{host}", _bearer(ctx), transport=transport) as client:
            yield client

    server = build(client_for)
    if "*" in allowed_hosts:
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    else:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=allowed_hosts,
            allowed_origins=[f"http://{h}" for h in allowed_hosts]
            + [f"https://{h}" for h in allowed_hosts],
        )
    starlette_app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, transport_security=security
    )
    endpoint = starlette_app.routes[0].app  # type: ignore[attr-defined]
    return endpoint, server.session_manager.run
