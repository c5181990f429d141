# Generated from petri_sdk/_async/sandbox.py by scripts/gen_sync_sdk.py: do not edit.
"""`Sandbox`: one sandbox, its files, its runs and its services."""

from __future__ import annotations

import builtins
from collections.abc import Generator, Iterable, Mapping
from contextlib import closing
from typing import Any

from .._base import App, exec_body, quoted, sandbox_path, seconds
from ..errors import ExecutionNotFound, SandboxNotFound, from_error_event
from ..events import Event
from ..executions import Collector, EventCallback, Execution, ExecutionInfo, OutputCallback
from ..records import Package, SandboxInfo
from . import _io
from .client import Client
from .files import Files
from .services import Services


class Sandbox:
    """A sandbox: a workspace at /sandbox and one hardened container of its language.

    with Sandbox.create("python") as sb:   # deleted at the end of the block
        ex = sb.run_code("print(1 + 1)")
        print(ex.stdout)                               # "2\\n"
    """

    def __init__(self, info: SandboxInfo, client: Client, *, owns_client: bool = False):
        self.id, self.language, self.info = info.id, info.language, info
        self.client = client
        self.path = sandbox_path(info.id)
        self.files = Files(self)
        self.services = Services(self)
        self._owns_client = owns_client

    def __repr__(self) -> str:
        return f"Sandbox({self.id!r}, language={self.language!r})"

    # --- life -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        language: str = "python",
        *,
        ttl: float | None = None,
        env: Mapping[str, str] | None = None,
        limits: Mapping[str, Any] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        client: Client | None = None,
    ) -> Sandbox:
        """A new sandbox of `language` (python, node, go, java). `ttl`: seconds it lives
        after its last use; `limits`: {memory_mb, cpus, pids, disk_mb}. `url`/`api_key`
        default to PETRI_URL/PETRI_API_KEY; `timeout` bounds each call, never a run."""
        body: dict[str, Any] = {"language": language}
        if ttl is not None:
            body["ttl_seconds"] = seconds(ttl)
        if env is not None:
            body["env"] = dict(env)
        if limits is not None:
            body["limits"] = dict(limits)
        http = client or Client(url, api_key, timeout=timeout)
        try:
            info = SandboxInfo.from_json(http.json("POST", "/v1/sandboxes", json=body))
        except BaseException:
            if client is None:
                http.close()
            raise
        return cls(info, http, owns_client=client is None)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        client: Client | None = None,
    ) -> Sandbox:
        """An existing sandbox, by id (`SandboxNotFound` if it is gone)."""
        http = client or Client(url, api_key, timeout=timeout)
        try:
            answer = http.json("GET", sandbox_path(sandbox_id), not_found=SandboxNotFound)
        except BaseException:
            if client is None:
                http.close()
            raise
        return cls(SandboxInfo.from_json(answer), http, owns_client=client is None)

    @staticmethod
    def list(
        *,
        url: str | None = None,
        api_key: str | None = None,
        client: Client | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Every live sandbox (every page)."""
        http = client or Client(url, api_key)
        try:
            found: builtins.list[SandboxInfo] = []
            after = ""
            while True:
                params = {"limit": "500", **({"after": after} if after else {})}
                page = http.json("GET", "/v1/sandboxes", params=params)
                found += [SandboxInfo.from_json(s) for s in page.get("sandboxes", [])]
                after = page.get("next") or ""
                if not after:
                    return found
        finally:
            if client is None:
                http.close()

    def get_info(self) -> SandboxInfo:
        """The sandbox as the gateway sees it now (status, expiry, limits)."""
        answer = self.client.json("GET", self.path, not_found=SandboxNotFound)
        self.info = SandboxInfo.from_json(answer)
        return self.info

    def delete(self) -> None:
        """Stop the container and remove the workspace (a sandbox already gone is fine)."""
        if self._owns_client and self.client.http.is_closed:
            return  # deleted (or closed) before
        try:
            self.client.request("DELETE", self.path, not_found=SandboxNotFound)
        except SandboxNotFound:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (the sandbox lives on: `connect` to it again)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # --- runs -----------------------------------------------------------------------------

    def run_code(
        self,
        code: str,
        *,
        args: Iterable[str] | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_install: OutputCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> Execution:
        """Run source code in the sandbox's language; dependencies it imports are installed
        first. Returns when it ends; callbacks get each chunk of text as it arrives.
        `timeout`: seconds for the whole run, install included (gateway default otherwise)."""
        body = exec_body(
            code=code, args=args, timeout=timeout, idle_timeout=idle_timeout, env=env, stdin=stdin
        )
        return self._run(body, on_stdout, on_stderr, on_install, on_event)

    def run_command(
        self,
        command: str,
        *,
        args: Iterable[str] | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_install: OutputCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> Execution:
        """Run a shell command (bash -c, in /sandbox); `args` become $1, $2, ..."""
        body = exec_body(
            command=command,
            args=args,
            timeout=timeout,
            idle_timeout=idle_timeout,
            env=env,
            stdin=stdin,
        )
        return self._run(body, on_stdout, on_stderr, on_install, on_event)

    def run_file(
        self,
        path: str,
        *,
        args: Iterable[str] | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_install: OutputCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> Execution:
        """Run a file of the workspace with the sandbox's language, with `args`."""
        body = exec_body(
            file=path, args=args, timeout=timeout, idle_timeout=idle_timeout, env=env, stdin=stdin
        )
        return self._run(body, on_stdout, on_stderr, on_install, on_event)

    def run_tests(
        self,
        path: str | None = None,
        *,
        app: App | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_install: OutputCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> Execution:
        """Test mode: install, start `app` (if given) and wait until it answers, run the
        project's test runner (on `path` if given), and parse its report into
        `Execution.tests` (passed, failed, skipped, errors, cases)."""
        body = exec_body(
            file=path, test=True, app=app, timeout=timeout, idle_timeout=idle_timeout, env=env
        )
        return self._run(body, on_stdout, on_stderr, on_install, on_event)

    def _run(
        self,
        body: dict[str, Any],
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        on_install: OutputCallback | None,
        on_event: EventCallback | None,
    ) -> Execution:
        collector = Collector(
            on_stdout=on_stdout, on_stderr=on_stderr, on_install=on_install, on_event=on_event
        )
        with closing(self.client.run(self.id, body)) as events:
            for event in events:
                for fn, arg in collector.add(event):
                    _io.call(fn, arg)
        execution = collector.result()
        if execution.error is not None:
            raise from_error_event(execution.error.data, execution)
        return execution

    def stream(
        self,
        code: str | None = None,
        *,
        command: str | None = None,
        file: str | None = None,
        test: bool = False,
        app: App | Mapping[str, Any] | None = None,
        args: Iterable[str] | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        execution_id: str | None = None,
        after: int = 0,
    ) -> Generator[Event, None, None]:
        """Start a run (one of code, command, file, test) and yield its typed events until
        the terminal one (`ExitEvent` or `ErrorEvent`), resuming by itself if the connection
        drops. With `execution_id`: the events of that run after id `after` instead."""
        if execution_id is not None:
            events = self.client.follow(self.id, execution_id, after)
        else:
            body = exec_body(
                code=code,
                command=command,
                file=file,
                test=test,
                app=app,
                args=args,
                timeout=timeout,
                idle_timeout=idle_timeout,
                env=env,
                stdin=stdin,
            )
            events = self.client.run(self.id, body)
        with closing(events):
            for event in events:
                yield event

    def kill(self, execution_id: str) -> ExecutionInfo:
        """Kill a running execution (its stream ends with exit 137, `killed`)."""
        answer = self.client.json(
            "POST",
            f"{self.path}/executions/{quoted(execution_id)}/kill",
            not_found=ExecutionNotFound,
        )
        return ExecutionInfo.from_json(answer)

    def executions(self, limit: int = 100) -> builtins.list[ExecutionInfo]:
        """Past and running executions, newest first."""
        answer = self.client.json("GET", f"{self.path}/executions", params={"limit": str(limit)})
        return [ExecutionInfo.from_json(e) for e in answer.get("executions", [])]

    def execution(self, execution_id: str) -> ExecutionInfo:
        return ExecutionInfo.from_json(
            self.client.json(
                "GET", f"{self.path}/executions/{quoted(execution_id)}", not_found=ExecutionNotFound
            )
        )

    def packages(self) -> builtins.list[Package]:
        """The installed dependencies (the sandbox's bill of materials)."""
        answer = self.client.json("GET", f"{self.path}/packages")
        return [Package.from_json(p) for p in answer.get("packages", [])]
