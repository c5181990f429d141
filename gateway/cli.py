"""The `petri` command. Client commands (run, exec, sandboxes, logs) talk HTTP to a gateway
through `petri_sdk`; `serve` and `images` run this machine's gateway (`server.py`), and `mcp`
serves the MCP tools over stdio (`mcp.py`). Heavy modules are imported by the command that
needs them, so `petri run` starts fast.

Output: a program's stdout goes to stdout and its stderr to stderr, byte for byte; Petri's
own lines (install output, test summaries, errors) go to stderr, coloured only on a terminal
and never with NO_COLOR set. `run` and `exec` exit with the program's exit code; 125 when
Petri could not run it (as `docker run` does), 130 after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from petri_sdk import (
    ErrorEvent,
    Event,
    ExitEvent,
    InstallEvent,
    PetriError,
    ReportEvent,
    Sandbox,
    SandboxNotFound,
    StartEvent,
    StderrEvent,
    StdoutEvent,
    TestReport,
)

PETRI_FAILED, INTERRUPTED = 125, 130
EXTENSIONS = {
    ".py": "python",
    ".js": "node",
    ".mjs": "node",
    ".cjs": "node",
    ".go": "go",
    ".java": "java",
}
MANIFESTS = (
    ("pyproject.toml", "python"),
    ("requirements.txt", "python"),
    ("setup.py", "python"),
    ("package.json", "node"),
    ("go.mod", "go"),
    ("pom.xml", "java"),
)
ENTRIES = {
    "python": ("main.py", "app.py", "__main__.py"),
    "node": ("index.js", "main.js", "app.js"),
    "go": ("main.go",),
    "java": ("Main.java", "App.java"),
}


# --- output ------------------------------------------------------------------------------------


def _colour(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _note(text: str, colour: str | None = None, *, dim: bool = False, nl: bool = True) -> None:
    """One of Petri's own lines, on stderr."""
    if _colour(sys.stderr):
        text = click.style(text, fg=colour, dim=dim)
    sys.stderr.write(text + ("\n" if nl else ""))
    sys.stderr.flush()


def _fail(message: str, code: int = 1) -> NoReturn:
    _note(f"petri: {message}", "red")
    sys.exit(code)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _plain(text: str) -> str:
    """Text from the gateway or a program shown in Petri's own lines: control characters
    (terminal escapes that could fake a line, retitle or reprogram the terminal) become `?`."""
    return _CONTROL.sub("?", text)


def _write(stream: IO[str], text: str) -> None:
    stream.write(text)
    stream.flush()


class Printer:
    """Prints a run's events as they arrive: stdout and stderr to their own streams, install
    output dimmed on stderr, a test summary at the end. `exit_code` is the program's."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.exit_code: int | None = None
        self.execution_id = ""
        self.report: TestReport | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.execution_id = event.execution_id
        elif isinstance(event, StdoutEvent):
            _write(sys.stdout, event.text)
        elif isinstance(event, StderrEvent):
            _write(sys.stderr, event.text)
        elif isinstance(event, InstallEvent) and not self.quiet:
            _note(event.text, dim=True, nl=False)
        elif isinstance(event, ReportEvent):
            self.report = event.report
        elif isinstance(event, ExitEvent):
            self.exit_code = event.exit_code
            if self.report is None and event.tests is not None:
                self.report = event.tests
            if self.report is not None:
                _summary(self.report)
            if event.timed_out:
                _note("petri: the run timed out and was killed", "yellow")
            elif event.oom_killed:
                _note("petri: the run ran out of memory and was killed", "yellow")
            elif event.killed:
                _note("petri: the run was killed", "yellow")
        elif isinstance(event, ErrorEvent):
            _note(_plain(f"petri: {event.code}: {event.message}"), "red")


def _summary(report: TestReport) -> None:
    for case in report.failures:
        where = f"{case.suite}::{case.name}" if case.suite else case.name
        _note(_plain(f"FAILED {where}"), "red")
        if case.message:
            lines = case.message.strip()[:2000].splitlines()
            _note("\n".join("    " + _plain(line) for line in lines), dim=True)
    if report.passed is None:
        _note(_plain(f"tests: {report.message or 'no report'}"), "yellow")
        return
    parts = [f"{report.passed} passed", f"{report.failed} failed", f"{report.skipped} skipped"]
    if report.errors:
        parts.append(f"{report.errors} errors")
    took = f", {report.duration_ms / 1000:.1f} s" if report.duration_ms is not None else ""
    summary = f"tests: {', '.join(parts)} ({report.runner}{took})"
    _note(_plain(summary), "green" if report.ok else "red")


# --- the command group -------------------------------------------------------------------------


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PetriError as exc:  # one clear line: no traceback for the gateway's answers
            text = _plain(exc.message if exc.code in _PLAIN else f"{exc.code}: {exc.message}")
            runs = isinstance(ctx.obj, dict) and ctx.obj.get("runs")  # set by run and exec
            _fail(text, PETRI_FAILED if runs else 1)
        except KeyboardInterrupt:
            _fail("interrupted", INTERRUPTED)


_PLAIN = {"gateway_unreachable", "connection_failed", "request_timeout"}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PETRI_URL", help="the gateway (PETRI_URL; http://127.0.0.1:8000)")
@click.option("--api-key", envvar="PETRI_API_KEY", help="an API key (PETRI_API_KEY)")
@click.version_option("0.2.0", prog_name="petri")
@click.pass_context
def cli(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    """Petri: run untrusted code in hardened sandboxes on your own machines.

    \b
    petri serve                     run a gateway on this machine
    petri run app.py                run a file in a new sandbox
    petri run ./project --test      upload a project and run its tests
    petri mcp                       the MCP server (stdio) for Claude Code, Cursor, ...
    """
    ctx.obj = {"url": url, "api_key": api_key}


def _connect(ctx: click.Context, sandbox_id: str) -> Sandbox:
    return Sandbox.connect(sandbox_id, url=ctx.obj["url"], api_key=ctx.obj["api_key"])


# --- the gateway on this machine ---------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="address to bind (PETRI_HOST; 127.0.0.1)")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str | None, port: int) -> None:
    """Run the gateway (settings: PETRI_* variables, see the README)."""
    from .server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_server(host, port))


@cli.group()
def images() -> None:
    """The runtime images."""


@images.command("build")
@click.argument("langs", nargs=-1)
@click.option("--force", is_flag=True, help="rebuild even when unchanged")
def images_build(langs: tuple[str, ...], force: bool) -> None:
    """Build the runtime images (all by default), skipping unchanged ones."""
    from .server import images as build

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(build(list(langs), force))


@cli.command()
@click.pass_context
def mcp(ctx: click.Context) -> None:
    """The MCP server over stdio, for Claude Code, Cursor and other desktop agents. It talks
    to the gateway at PETRI_URL (start one with `petri serve`)."""
    from .mcp import run_stdio

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    run_stdio(ctx.obj["url"], ctx.obj["api_key"])



# --- teams: keys and the audit ledger (admin.py; they read this machine's data dir) ----------

_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _admin(name: str, argv: list[str]) -> NoReturn:
    import argparse

    from . import admin

    parser = argparse.ArgumentParser(prog="petri")
    admin.add_parsers(parser.add_subparsers(dest="command", required=True))
    sys.exit(admin.run(parser.parse_args([name, *argv])))


@cli.command(context_settings=_PASSTHROUGH, add_help_option=False)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def keys(argv: tuple[str, ...]) -> None:
    """API keys and tenants: create --tenant NAME [--admin], ls, revoke ID."""
    _admin("keys", list(argv))


@cli.command(context_settings=_PASSTHROUGH, add_help_option=False)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def audit(argv: tuple[str, ...]) -> None:
    """The hash-chained audit ledger: verify, export."""
    _admin("audit", list(argv))


# --- runs --------------------------------------------------------------------------------------


def _language(path: Path) -> str | None:
    if path.is_file():
        return EXTENSIONS.get(path.suffix.lower())
    for name, language in MANIFESTS:
        if (path / name).is_file():
            return language
    counts: dict[str, int] = {}
    for i, file in enumerate(path.rglob("*")):
        if i > 5000:
            break
        found = EXTENSIONS.get(file.suffix.lower())
        if found and not any(p.startswith(".") or p == "node_modules" for p in file.parts):
            counts[found] = counts.get(found, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def _follow(events: Iterator[Event], printer: Printer, on_start: Callable[[str], None]) -> None:
    for event in events:
        printer(event)
        if isinstance(event, StartEvent):
            on_start(event.execution_id)


def _stream_to_exit(sb: Sandbox, printer: Printer, **run: Any) -> int:
    """Stream a run until it ends; Ctrl-C kills it. Returns the exit code to exit with."""
    started: list[str] = []
    try:
        _follow(sb.stream(**run), printer, started.append)
    except KeyboardInterrupt:
        if started:
            with contextlib.suppress(PetriError):
                sb.kill(started[0])
        _note("petri: interrupted", "yellow")
        return INTERRUPTED
    if printer.exit_code is None:
        return PETRI_FAILED
    return printer.exit_code


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-l",
    "--language",
    type=click.Choice(["python", "node", "go", "java"]),
    help="the sandbox's language (default: from the file or the project)",
)
@click.option("--test", is_flag=True, help="run the project's tests (test mode)")
@click.option("--entry", metavar="FILE", help="for a folder: the file to run")
@click.option(
    "--timeout",
    type=click.IntRange(1),
    metavar="SECONDS",
    help="limit for the whole run, install included",
)
@click.option(
    "-e",
    "--env",
    "env",
    multiple=True,
    metavar="NAME=VALUE",
    help="an environment variable (repeatable)",
)
@click.option("--keep", is_flag=True, help="keep the sandbox afterwards (its id is printed)")
@click.option("-q", "--quiet", is_flag=True, help="hide dependency-install output")
@click.pass_context
def run(
    ctx: click.Context,
    path: Path,
    args: tuple[str, ...],
    language: str | None,
    test: bool,
    entry: str | None,
    timeout: int | None,
    env: tuple[str, ...],
    keep: bool,
    quiet: bool,
) -> None:
    """Run PATH (a file, or a project folder) in a new sandbox, then delete it.

    \b
    petri run hello.py
    petri run ./project                  runs its main file (main.py, index.js, ...)
    petri run ./project --test           runs its tests, with a report
    petri run script.py -- --flag value  ARGS after -- go to the program

    Exits with the program's exit code (125: Petri could not run it).
    """
    ctx.obj["runs"] = True
    lang = language or _language(path)
    if lang is None:
        _fail(f"cannot tell the language of {path}: give --language", 2)
    variables = _env(env)
    body: dict[str, Any] = {"timeout": timeout, "env": variables or None}
    if test:
        if args:
            _fail("ARGS go to a program; --test runs the project's test runner", 2)
        body["test"] = True
    elif path.is_file():
        body.update(file=path.name, args=list(args) or None)
    else:
        name = entry or next((n for n in ENTRIES[lang] if (path / n).is_file()), None)
        if name is None and lang == "go" and (path / "go.mod").is_file():
            body.update(command="go run . " + shlex.join(args))
        elif name is None:
            _fail(f"no {' or '.join(ENTRIES[lang])} in {path}: give --entry FILE", 2)
        else:
            body.update(file=name, args=list(args) or None)
    sb = Sandbox.create(lang, url=ctx.obj["url"], api_key=ctx.obj["api_key"])
    try:
        if path.is_file():
            sb.files.write(path.name, path.read_bytes())
        else:
            sb.files.upload_dir(path)
        code = _stream_to_exit(sb, Printer(quiet), **body)
    finally:
        if keep:
            _note(f"petri: kept sandbox {sb.id}")
            sb.close()
        else:
            sb.delete()
    sys.exit(code)


@cli.command("exec")
@click.argument("sandbox_id", metavar="SANDBOX")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=click.IntRange(1), metavar="SECONDS", help="limit for the run")
@click.option(
    "-e",
    "--env",
    "env",
    multiple=True,
    metavar="NAME=VALUE",
    help="an environment variable (repeatable)",
)
@click.pass_context
def exec_(
    ctx: click.Context,
    sandbox_id: str,
    command: tuple[str, ...],
    timeout: int | None,
    env: tuple[str, ...],
) -> None:
    """Run COMMAND in SANDBOX (bash, in /sandbox) and exit with its exit code.

    \b
    petri exec sb-1234 -- ls -la           words are quoted as given
    petri exec sb-1234 -- 'make && ./app'  one word is a shell command line
    """
    ctx.obj["runs"] = True
    line = command[0] if len(command) == 1 else shlex.join(command)
    sb = _connect(ctx, sandbox_id)
    try:
        code = _stream_to_exit(sb, Printer(), command=line, timeout=timeout, env=_env(env) or None)
    finally:
        sb.close()
    sys.exit(code)


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"--env takes NAME=VALUE, not {pair!r}", 2)
        out[name] = value
    return out


@cli.command()
@click.argument("sandbox_id", metavar="SANDBOX")
@click.argument("execution_id", metavar="EXECUTION")
@click.option("-f", "--follow", is_flag=True, help="keep following a running execution")
@click.option("--after", type=click.IntRange(0), default=0, help="start after this event id")
@click.pass_context
def logs(ctx: click.Context, sandbox_id: str, execution_id: str, follow: bool, after: int) -> None:
    """Print the output of an execution (stdout and stderr to their own streams). A running
    one is shown up to now, or followed to its end with -f."""
    sb = _connect(ctx, sandbox_id)
    try:
        running = sb.execution(execution_id).status == "running"
        printer = Printer()
        events: Iterator[Event] = sb.stream(execution_id=execution_id, after=after)
        if running and not follow:
            events = _until_quiet(events, 1.0)
        for event in events:
            printer(event)
        if running and not follow and printer.exit_code is None:
            _note("petri: still running (-f follows it to the end)", dim=True)
    finally:
        sb.close()
    sys.exit(printer.exit_code or 0)


def _until_quiet(events: Iterator[Event], seconds: float) -> Iterator[Event]:
    """The events that arrive with no gap longer than `seconds` (the backlog of a live run)."""
    import queue
    import threading

    box: queue.Queue[Event | None] = queue.Queue()

    def pump() -> None:
        try:
            for event in events:
                box.put(event)
        finally:
            box.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            event = box.get(timeout=seconds)
        except queue.Empty:
            return
        if event is None:
            return
        yield event


@cli.group()
def sandboxes() -> None:
    """List and remove sandboxes."""


@sandboxes.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def sandboxes_ls(ctx: click.Context, as_json: bool) -> None:
    """List the live sandboxes."""
    found = Sandbox.list(url=ctx.obj["url"], api_key=ctx.obj["api_key"])
    if as_json:
        click.echo(json.dumps([s.data for s in found], indent=2))
        return
    rows = [("ID", "LANGUAGE", "STATUS", "CREATED", "EXPIRES")]
    rows += [(s.id, s.language, s.status, _ago(s.created_at), _ago(s.expires_at)) for s in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        click.echo(click.style(line, bold=True) if i == 0 and _colour(sys.stdout) else line)


def _ago(stamp: str | None) -> str:
    if not stamp:
        return "-"
    from datetime import datetime

    try:
        seconds = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - time.time()
    except ValueError:
        return stamp
    span = abs(seconds)
    text = (
        f"{span:.0f}s"
        if span < 120
        else f"{span / 60:.0f}m"
        if span < 7200
        else f"{span / 3600:.0f}h"
        if span < 172800
        else f"{span / 86400:.0f}d"
    )
    return f"in {text}" if seconds > 0 else f"{text} ago"


@sandboxes.command("rm")
@click.argument("sandbox_ids", metavar="SANDBOX...", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="remove every sandbox")
@click.pass_context
def sandboxes_rm(ctx: click.Context, sandbox_ids: tuple[str, ...], remove_all: bool) -> None:
    """Remove sandboxes (their containers and workspaces)."""
    url, key = ctx.obj["url"], ctx.obj["api_key"]
    ids = list(sandbox_ids)
    if remove_all:
        ids += [s.id for s in Sandbox.list(url=url, api_key=key)]
    if not ids:
        _fail("name the sandboxes to remove (or --all)", 2)
    missing = 0
    for sandbox_id in ids:
        try:
            Sandbox.connect(sandbox_id, url=url, api_key=key).delete()
            click.echo(sandbox_id)
        except SandboxNotFound:
            _note(f"petri: no sandbox {sandbox_id}", "yellow")
            missing += 1
    sys.exit(1 if missing else 0)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="petri", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
