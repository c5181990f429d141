"""The SDK's pure parts: typed events from recorded payloads (test mode, serve mode), the SSE
reader, errors by code and status, request bodies, the folder zip, and the twins' sameness."""

from __future__ import annotations

import inspect
import json
import ssl
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

import petri_sdk
from petri_sdk import (
    App,
    AppEvent,
    AppExited,
    AsyncClient,
    AsyncSandbox,
    Client,
    ErrorEvent,
    ExitEvent,
    FileNotFound,
    GatewayError,
    GatewayUnavailable,
    InstallFailed,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ReadyEvent,
    ReportEvent,
    Sandbox,
    SandboxNotFound,
    Service,
    ServiceFailed,
    StdoutEvent,
    TooLarge,
    Unauthorized,
)
from petri_sdk._base import _verifying, clean, exec_body, resolve, zip_folder
from petri_sdk.errors import from_error_event, from_response
from petri_sdk.events import SSEDecoder, parse_event
from petri_sdk.executions import Collector

ROOT = Path(__file__).resolve().parents[2]

# Recorded from the gateway's test mode (DESIGN §9): a Python project with one failing test,
# run with an app under test.
RECORDED_TEST_RUN = [
    ("1", "start", '{"execution_id":"ex-1","sandbox_id":"sb-1"}'),
    ("2", "install", '{"text":"Collecting flask\\n"}'),
    ("3", "app", '{"stream":"stderr","text":" * Running on http://127.0.0.1:5000\\n"}'),
    ("4", "ready", '{"port":5000,"after_ms":412}'),
    ("5", "stdout", '{"text":".F\\n"}'),
    (
        "6",
        "report",
        '{"runner":"pytest","passed":1,"failed":1,"skipped":0,"errors":0,"duration_ms":830,'
        '"cases":[{"name":"test_ok","suite":"tests.test_app","status":"passed","duration_ms":3},'
        '{"name":"test_sum","suite":"tests.test_app","status":"failed","duration_ms":5,'
        '"message":"assert 3 == 4"}]}',
    ),
    (
        "7",
        "exit",
        '{"exit_code":1,"duration_ms":2100,"timed_out":false,"truncated":false,'
        '"oom_killed":false,"killed":false,"tests":{"passed":1,"failed":1,"skipped":0,'
        '"errors":0}}',
    ),
]
RECORDED_SERVICE = {
    "id": "sv-0123456789abcdef",
    "sandbox_id": "sb-1",
    "command": "python app.py",
    "port": 8000,
    "ready_path": "/",
    "status": "ready",
    "preview_url": "http://127.0.0.1:8000/preview/tok/",
    "preview_host_url": None,
    "expires_at": "2026-01-01T00:00:00.000Z",
    "execution_id": "ex-2",
    "created_at": "2026-01-01T00:00:00.000Z",
    "ready_at": "2026-01-01T00:00:01.000Z",
    "ended_at": None,
}


def test_a_recorded_test_run_becomes_a_typed_execution() -> None:
    events = [parse_event(*raw) for raw in RECORDED_TEST_RUN]
    assert all(e is not None for e in events)
    collector = Collector()
    for event in events:
        assert event is not None
        collector.add(event)
    ex = collector.result()
    assert (ex.id, ex.sandbox_id, ex.exit_code, ex.status) == ("ex-1", "sb-1", 1, "exited")
    assert ex.stdout == ".F\n" and ex.install == "Collecting flask\n"
    assert ex.app_output == " * Running on http://127.0.0.1:5000\n" and ex.ready_after_ms == 412
    assert ex.tests is not None and ex.tests.runner == "pytest"
    assert (ex.tests.passed, ex.tests.failed, ex.tests.skipped, ex.tests.errors) == (1, 1, 0, 0)
    assert [c.name for c in ex.tests.failures] == ["test_sum"]
    assert ex.tests.failures[0].message == "assert 3 == 4" and not ex.tests.ok and not ex.ok
    assert isinstance(events[2], AppEvent) and events[2].stream == "stderr"
    assert isinstance(events[3], ReadyEvent) and events[3].port == 5000
    assert isinstance(events[5], ReportEvent)
    end = events[6]
    assert isinstance(end, ExitEvent) and end.tests is not None and end.tests.failed == 1


def test_exit_tests_stand_in_when_no_report_came() -> None:
    collector = Collector()
    collector.add(ExitEvent(1, {}, exit_code=0, tests=_report(passed=3)))
    ex = collector.result()
    assert ex.tests is not None and ex.tests.passed == 3 and ex.tests.ok and ex.ok


def _report(**counts: int) -> petri_sdk.TestReport:
    base = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, **counts}
    return petri_sdk.TestReport.from_json(base)


def test_a_report_with_nothing_parsed_keeps_nulls() -> None:
    event = parse_event(
        "3",
        "report",
        '{"runner":"go test","passed":null,"failed":null,"skipped":null,"errors":null,'
        '"duration_ms":10,"cases":null,"message":"no report"}',
    )
    assert isinstance(event, ReportEvent) and event.report is not None
    assert event.report.passed is None and event.report.cases is None
    assert event.report.message == "no report" and not event.report.ok


def test_a_recorded_service_is_typed() -> None:
    service = Service.from_json(RECORDED_SERVICE)
    assert service.id == "sv-0123456789abcdef" and service.port == 8000
    assert service.status == "ready" and service.execution_id == "ex-2"
    assert service.preview_url == "http://127.0.0.1:8000/preview/tok/"
    assert service.data["ready_at"] == "2026-01-01T00:00:01.000Z"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (("1", "future_type", "{}"), "unknown type"),
        (("1", "stdout", "not json"), "not JSON"),
        (("1", "stdout", "[1]"), "not an object"),
        (("", "stdout", '{"text":"x"}'), "no id"),
        (("x1", "stdout", '{"text":"x"}'), "not an integer"),
        (("\u00b2", "stdout", '{"text":"x"}'), "a superscript digit"),
        (("1" * 20, "stdout", '{"text":"x"}'), "past 64 bits"),
    ],
)
def test_what_is_not_a_petri_event_is_skipped(raw: tuple[str, str, str], why: str) -> None:
    assert parse_event(*raw) is None, why


def test_event_json_reads_the_same_on_the_fast_path() -> None:
    """Output events are read by orjson where it is installed: the same text, lone
    surrogates included (orjson refuses them; `json` reads them); other events keep exact
    integers past 64 bits."""
    for text in ("plain", "\u2028 é \\n", "\\ud800 lone"):
        event = parse_event("1", "stdout", '{"text":"' + text + '"}')
        assert isinstance(event, StdoutEvent)
        assert event.text == json.loads('"' + text + '"')
    event = parse_event("1", "exit", '{"exit_code":0,"duration_ms":123456789012345678901234}')
    assert isinstance(event, ExitEvent) and event.data["duration_ms"] == 123456789012345678901234


def test_ids_must_move_forward() -> None:
    assert parse_event("3", "stdout", '{"text":"x"}', after=3) is None
    assert isinstance(parse_event("4", "stdout", '{"text":"x"}', after=3), StdoutEvent)


def test_the_sse_reader_never_makes_an_event_of_a_keepalive() -> None:
    decoder = SSEDecoder()
    lines = [
        ": keep-alive",  # a comment alone (the gateway's form)
        "id: 1",
        "event: stdout",
        'data: {"text":"a"}',
        "",
        ": ping",  # a comment followed by a blank line (sse-starlette's own form)
        "",
        "",
        "retry: 100",
        "id: 2",
        "event: exit",
        "data: {",
        'data: "exit_code": 0}',  # data over two lines joins with a newline
        "",
    ]
    out = [e for line in lines if (e := decoder.feed(line)) is not None]
    assert out == [("1", "stdout", '{"text":"a"}'), ("2", "exit", '{\n"exit_code": 0}')]
    assert isinstance(parse_event(*out[1]), ExitEvent)


def test_the_sse_reader_takes_bytes_split_anywhere() -> None:
    """Bytes as the network hands them over: lines end at CRLF, LF or CR only (not at U+2028
    or a form feed inside the data), a CRLF or a UTF-8 character split between two chunks is
    still one, and a BOM opening the stream (split up, too) is not part of the first field."""
    wire = (
        "\ufeffevent: stdout\r\n: keep-alive\r\n"
        "id: 1\r\n"
        'data: {"text":"caf\u00e9 \u2028 \x0c \U0001f600"}\r\n\r\n'
        "id: 2\revent: stderr\rdata: {\"text\":\"b\"}\r\r"
        "id: 3\nevent: exit\ndata: {\ndata: \"exit_code\": 0}\n\n"
        "id: 4\nevent: stdout\ndata: never ended"
    ).encode()
    want = [
        ("1", "stdout", '{"text":"caf\u00e9 \u2028 \x0c \U0001f600"}'),
        ("2", "stderr", '{"text":"b"}'),
        ("3", "exit", '{\n"exit_code": 0}'),
    ]
    for size in range(1, len(wire) + 1):
        decoder = SSEDecoder()
        pieces = [wire[at : at + size] for at in range(0, len(wire), size)]
        got = [e for piece in pieces for e in decoder.decode(piece)]
        assert got == want, size
        assert decoder.decode(b"") == []
    # Between two chunks: every split point, with an empty chunk in between.
    for at in range(len(wire) + 1):
        decoder = SSEDecoder()
        got = [e for piece in (wire[:at], b"", wire[at:]) for e in decoder.decode(piece)]
        assert got == want, at


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (422, "unknown_language", InvalidRequest),
        (400, "invalid_path", InvalidRequest),
        (415, "unsupported_media_type", InvalidRequest),
        (401, "unauthorized", Unauthorized),
        (404, "sandbox_not_found", SandboxNotFound),
        (404, "sandbox_gone", SandboxNotFound),
        (404, "not_found", NotFound),
        (413, "too_large", TooLarge),
        (429, "quota_exceeded", QuotaExceeded),
        (429, "too_many_sandboxes", QuotaExceeded),
        (503, "docker_unavailable", GatewayUnavailable),
        (500, "internal_error", GatewayError),
        (418, "teapot", InvalidRequest),
    ],
)
def test_errors_by_code_and_status(status: int, code: str, cls: type) -> None:
    body = f'{{"error":{{"code":"{code}","message":"m"}}}}'.encode()
    exc = from_response(status, body)
    assert type(exc) is cls and (exc.status, exc.code, exc.message) == (status, code, "m")


def test_a_plain_404_on_a_file_route_is_file_not_found_and_retry_after_is_read() -> None:
    body = b'{"error":{"code":"not_found","message":"no such file: x"}}'
    assert type(from_response(404, body, not_found=FileNotFound)) is FileNotFound
    over = from_response(
        429, b'{"error":{"code":"quota_exceeded","message":"m"}}', {"retry-after": "7"}
    )
    assert isinstance(over, QuotaExceeded) and over.retry_after == 7.0
    proxy = from_response(502, b"<html>Bad Gateway</html>")
    assert isinstance(proxy, GatewayUnavailable) and "Bad Gateway" in proxy.message


def test_error_events_map_to_execution_failures() -> None:
    assert type(from_error_event({"code": "install_failed", "message": "m"}, None)) is (
        InstallFailed
    )
    assert type(from_error_event({"code": "app_exited", "message": "m"}, None)) is AppExited
    assert type(from_error_event({"code": "service_not_ready", "message": "m"}, None)) is (
        ServiceFailed
    )
    other = from_error_event({"code": "something_new"}, None)
    assert isinstance(other, petri_sdk.ExecutionFailed) and other.code == "something_new"
    assert isinstance(ErrorEvent(1, {}, "x", "y"), ErrorEvent)


def test_request_bodies() -> None:
    body = exec_body(
        file="/sandbox/./x.py", args=("a", 1), timeout=1.2, app=App("python app.py", 5000, "/h")
    )
    assert body == {
        "filename": "x.py",
        "app": {"command": "python app.py", "port": 5000, "ready_path": "/h"},
        "args": ["a", "1"],
        "timeout_seconds": 2,  # whole seconds, rounded up
    }
    with pytest.raises(InvalidRequest):
        exec_body(code="x", args="a b")  # one string is not a list of args
    with pytest.raises(InvalidRequest):
        exec_body(code="x", timeout=float("nan"))
    assert clean("/sandbox") == "" and clean("./a/b") == "a/b" and clean("/etc/x") == "etc/x"


def test_url_and_key_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PETRI_URL", raising=False)
    monkeypatch.delenv("PETRI_API_KEY", raising=False)
    assert resolve(None, None) == ("http://127.0.0.1:8000", None)
    monkeypatch.setenv("PETRI_URL", "gw.internal:9000/")
    monkeypatch.setenv("PETRI_API_KEY", "env-key")
    assert resolve(None, None) == ("http://gw.internal:9000", "env-key")
    assert resolve("https://x", "arg-key") == ("https://x", "arg-key")
    assert resolve(None, "") == ("http://gw.internal:9000", None)  # "" turns the key off


def test_clients_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle costs ~50 ms of CPU: once per process for https, never for
    http, whose context trusts nothing (a TLS connection through it fails, never unchecked)."""
    built: list[object] = []
    real = httpx.create_ssl_context

    def counting() -> object:
        built.append(real())
        return built[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    _verifying.cache_clear()
    try:
        plain = Client("http://127.0.0.1:1")
        assert built == []
        context = plain.http._transport._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.get_ca_certs() == []
        clients = [Client("https://a.example"), Client("https://b.example")]
        clients.append(AsyncClient("https://c.example"))
        assert len(built) == 1
        assert all(c.http._transport._pool._ssl_context is built[0] for c in clients)
        for c in [plain, *clients[:2]]:
            c.close()
    finally:
        _verifying.cache_clear()


def test_the_folder_zip_skips_excluded_names_and_links(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "src" / "__pycache__").mkdir(parents=True)
    (root / "src" / "a.py").write_text("a")
    (root / "src" / "__pycache__" / "a.pyc").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("x")
    (tmp_path / "secret").write_text("s")
    (root / "leak").symlink_to(tmp_path / "secret")
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    archive, names = zip_folder(root, "dest/")
    assert names == ["dest/src/a.py"]
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["dest/src/a.py"] and z.read("dest/src/a.py") == b"a"
    with pytest.raises(InvalidRequest):
        zip_folder(root / "src" / "a.py")


def _public(cls: type) -> dict[str, list[str]]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__enter__", "__aenter__"):
            continue
        if callable(member):
            params = inspect.signature(member).parameters
            out[name.replace("aenter", "enter")] = [p for p in params if p != "self"]
    return out


@pytest.mark.parametrize(
    ("sync", "async_"),
    [
        (Sandbox, AsyncSandbox),
        (petri_sdk.Files, petri_sdk.AsyncFiles),
        (petri_sdk.Services, petri_sdk.AsyncServices),
        (petri_sdk.Client, petri_sdk.AsyncClient),
    ],
)
def test_the_twins_have_the_same_names_and_parameters(sync: type, async_: type) -> None:
    mine, theirs = _public(sync), _public(async_)
    theirs.pop("aclose", None)
    mine.pop("close", None) if sync is petri_sdk.Client else None
    assert mine == theirs


def test_the_sync_twin_is_generated_from_the_async_one() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_sync_sdk.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_sdk_imports_nothing_from_the_gateway() -> None:
    code = "import sys, petri_sdk; print(sorted(m for m in sys.modules if m.startswith('gateway')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"


def test_docs_sdk_names_every_public_name_and_method() -> None:
    doc = (ROOT / "docs" / "sdk.md").read_text()
    missing = [name for name in petri_sdk.__all__ if f"`{name}" not in doc]
    assert not missing, f"docs/sdk.md lacks {missing}"
    for cls, prefix in (
        (Sandbox, "sb."),
        (petri_sdk.Files, "files."),
        (petri_sdk.Services, "services."),
    ):
        for name in _public(cls):
            if name in ("create", "connect", "list") and cls is Sandbox:
                assert f"Sandbox.{name}" in doc, name
            elif name != "__enter__":
                assert f"{prefix}{name}" in doc, f"{prefix}{name}"
