"""Path escapes through the HTTP side: zip-slip, symlinks in zips, `..` and absolute paths in
uploads, and symlinks, FIFOs and odd names that a program plants in its own workspace for the
gateway (which runs on the host) to trip over. Nothing may be read or written outside the
workspace, every refusal is a clear JSON error, and the gateway never hangs."""

from __future__ import annotations

import io
import secrets
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Gateway

from .conftest import MakeSandbox, assert_gateway_fine, assert_usable, run

pytestmark = pytest.mark.docker


@pytest.fixture
def host_target(tmp_path: Path) -> Iterator[Path]:
    """A file on the host that nothing from a sandbox may read or change."""
    target = tmp_path / f"host-secret-{secrets.token_hex(6)}.txt"
    target.write_text("host secret\n")
    yield target
    assert target.read_text() == "host secret\n", "a host file was changed"


def _zip(*members: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info, data in members:
            z.writestr(info, data)
    return buf.getvalue()


def _symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16  # S_IFLNK
    return info


def _error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"code", "message"}
    if code is not None:
        assert error["code"] == code, error


def _files(hc: httpx.Client, sid: str) -> set[str]:
    r = hc.get(f"/v1/sandboxes/{sid}/files")
    assert r.status_code == 200, r.text
    return {f["path"] for f in r.json()["files"]}


@pytest.mark.parametrize(
    ("member", "code"),
    [
        ("../escaped.txt", "zip_unsafe_path"),
        ("a/../../escaped.txt", "zip_unsafe_path"),
        ("..\\escaped.txt", "zip_unsafe_path"),
        ("/tmp/escaped.txt", "zip_unsafe_path"),
        ("ok/\x01ctl.txt", "zip_unsafe_path"),
        (_symlink_member("link", "/etc/passwd"), "zip_symlink"),
    ],
    ids=["dotdot", "nested-dotdot", "backslash-dotdot", "absolute", "control-char", "symlink"],
)
def test_zip_slip_is_refused_before_anything_is_written(
    hostile_gateway: Gateway,
    hc: httpx.Client,
    box: MakeSandbox,
    member: zipfile.ZipInfo | str,
    code: str,
) -> None:
    sid = box()["id"]
    assert hc.put(f"/v1/sandboxes/{sid}/files/keep.txt", content=b"kept").status_code == 201
    body = _zip(("first.txt", b"first"), (member, b"payload"))
    for r in (
        hc.post(
            f"/v1/sandboxes/{sid}/upload", content=body, headers={"content-type": "application/zip"}
        ),
        hc.post(f"/v1/sandboxes/{sid}/upload", files={"file": ("x.zip", body)}),
    ):
        _error(r, 400, code)
    # Every member is checked first: not even the harmless first one was written.
    assert _files(hc, sid) == {"keep.txt"}
    root = hostile_gateway.workspace_root
    assert not list(root.parent.rglob("escaped.txt")), "a zip member escaped"
    assert not Path("/tmp/escaped.txt").exists()


def test_broken_and_hostile_zips_get_clear_errors(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    url = f"/v1/sandboxes/{sid}/upload"
    zip_type = {"content-type": "application/zip"}
    _error(hc.post(url, content=b"PK\x03\x04 not a zip", headers=zip_type), 400, "invalid_zip")
    # A member whose data is corrupt (the CRC no longer matches).
    good = bytearray(_zip(("a.txt", b"hello world" * 100)))
    at = good.find(b"hello")
    good[at : at + 5] = b"HELLO"
    _error(hc.post(url, content=bytes(good), headers=zip_type), 400, "invalid_zip")
    # A name flagged as UTF-8 that is not.
    bad_name = bytearray(_zip(("abc.txt", b"x")))
    for marker in (b"abc.txt",):
        bad_name = bytearray(bytes(bad_name).replace(marker, b"a\xffc.txt"))
    bad_name[6:8] = (0x0800).to_bytes(2, "little")  # local header: UTF-8 flag
    central = bytes(bad_name).find(b"PK\x01\x02")
    bad_name[central + 8 : central + 10] = (0x0800).to_bytes(2, "little")
    _error(hc.post(url, content=bytes(bad_name), headers=zip_type), 400, "invalid_zip")
    # A zip bomb: small on the wire, too big once expanded (declared sizes are checked first).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.bin", b"\0" * (600 * 1024 * 1024))
    assert len(buf.getvalue()) < 2 * 1024 * 1024
    _error(hc.post(url, content=buf.getvalue(), headers=zip_type), 413, "zip_too_large")
    assert _files(hc, sid) == set()
    assert_usable(hc, sid)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b"../escaped.txt", "invalid_path"),
        (b"a/../../escaped.txt", "invalid_path"),
        (b"/etc/escaped.txt", "invalid_path"),
        (b"..", "invalid_path"),
        (b"a/\x00b", "invalid_path"),
        (b"a/\x1bb", "invalid_path"),
        (b"", "invalid_path"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "only-dotdot", "nul", "escape-char", "empty"],
)
def test_multipart_filenames_cannot_escape(
    hc: httpx.Client, box: MakeSandbox, name: bytes, code: str
) -> None:
    sid = box()["id"]
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"\r\npayload\r\n--b--\r\n"
    )
    r = hc.post(
        f"/v1/sandboxes/{sid}/files",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    _error(r, 400, code)
    assert _files(hc, sid) == set()


def test_multipart_filename_with_invalid_utf8(hc: httpx.Client, box: MakeSandbox) -> None:
    """The multipart parser reads a filename that is not UTF-8 as Latin-1: the file lands
    inside the workspace under that name (never a 500, never outside)."""
    sid = box()["id"]
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9\xff.txt"\r\n'
        b"\r\npayload\r\n--b--\r\n"
    )
    r = hc.post(
        f"/v1/sandboxes/{sid}/files",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code in (201, 400), r.text
    if r.status_code == 201:
        assert _files(hc, sid) == {"caf\u00e9\u00ff.txt"}


def _raw(gw: Gateway, request_line: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request byte for byte (no client normalises the path first)."""
    address = urlsplit(gw.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as s:
        s.sendall(
            request_line + b"\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    "path",
    [
        "../escaped.txt",
        "a/../../escaped.txt",
        "%2e%2e/escaped.txt",
        "..%2fescaped.txt",
        "a/%2e%2e/%2e%2e/escaped.txt",
        "%2fetc%2fescaped.txt",
        "a%00b",
        "%ff%fe",
        "a" * 2000,
        "b/" * 600 + "c",
        "c" * 300,
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "encoded-dotdot",
        "encoded-slash",
        "nested-encoded",
        "encoded-absolute",
        "nul",
        "invalid-utf8",
        "too-long",
        "too-deep",
        "long-component",
    ],
)
def test_file_paths_cannot_escape(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, path: str
) -> None:
    sid = box()["id"]
    for method in (b"PUT", b"GET", b"DELETE"):
        status, body = _raw(
            hostile_gateway, method + f" /v1/sandboxes/{sid}/files/{path} HTTP/1.1".encode(), b"x"
        )
        # Either a clear refusal of the path, or (where the client's `..` climbed out of the
        # files route) no such route: never a write.
        assert status in (400, 404), (method, status, body)
        assert body.startswith(b'{"error":{"code":'), body
    assert _files(hc, sid) == set()
    assert not list(hostile_gateway.workspace_root.parent.rglob("escaped.txt"))


def test_symlinks_planted_by_the_program_are_never_followed(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, host_target: Path
) -> None:
    sid = box()["id"]
    outside = host_target.parent
    run(
        hc,
        sid,
        # Paths that exist on the host, not in the container: only the host-side gateway
        # could follow them.
        f"ln -s {host_target} secret-link; ln -s {outside} dir-link; ln -s / root-link; "
        f"mkdir real; ln -s {outside} real/nested-link; echo ok",
    )
    files = "/v1/sandboxes/{}/files/{}".format
    for path in ("secret-link", f"dir-link/{host_target.name}", "root-link/etc/passwd"):
        r = hc.get(files(sid, path))
        _error(r, 400)
        assert b"host secret" not in r.content and b"root:" not in r.content
    for path in (f"dir-link/{host_target.name}", "real/nested-link/new.txt", "root-link/x"):
        _error(hc.put(files(sid, path), content=b"pwned"), 400, "invalid_path")
        _error(hc.delete(files(sid, path)), 400, "invalid_path")
    _error(hc.post(f"/v1/sandboxes/{sid}/files", files={"file": ("dir-link/x", b"pwned")}), 400)
    zipped = _zip((f"dir-link/{host_target.name}", b"pwned"))
    r = hc.post(
        f"/v1/sandboxes/{sid}/upload", content=zipped, headers={"content-type": "application/zip"}
    )
    _error(r, 400, "invalid_path")
    # Writing to the link's own name replaces the link, never its target.
    assert hc.put(files(sid, "secret-link"), content=b"replaced").status_code == 201
    assert hc.get(files(sid, "secret-link")).content == b"replaced"
    # Deleting a link removes the link only.
    assert hc.delete(files(sid, "dir-link")).status_code == 204
    assert outside.is_dir() and host_target.exists()
    # The listing shows regular files only and never walks into a link.
    assert _files(hc, sid) == {"secret-link"}
    assert_usable(hc, sid)


def test_listing_while_the_program_swaps_a_directory_for_a_symlink(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox, host_target: Path
) -> None:
    sid = box()["id"]
    outside = host_target.parent
    swapper = hc.post(
        f"/v1/sandboxes/{sid}/exec",
        json={
            "command": (
                "mkdir -p d.real && touch d.real/inside.txt; end=$((SECONDS+4)); "
                f"while [ $SECONDS -lt $end ]; do ln -sfn {outside} d; rm -f d; "
                "mv d.real d; mv d d.real; done"
            ),
            "wait": False,
            "timeout_seconds": 30,
        },
    ).json()["execution_id"]
    deadline = time.monotonic() + 3.5
    listings = 0
    while time.monotonic() < deadline:
        paths = _files(hc, sid)
        listings += 1
        assert not any(host_target.name in p for p in paths), paths
    assert listings > 5
    events = hc.get(f"/v1/sandboxes/{sid}/executions/{swapper}/events")
    assert events.status_code == 200


def test_fifo_planted_by_the_program_does_not_hang_the_gateway(
    hostile_gateway: Gateway, hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box()["id"]
    run(hc, sid, "mkfifo pipe; mkdir d; mkfifo d/pipe2; echo ok")
    for path in ("pipe", "d/pipe2"):
        started = time.monotonic()
        r = hc.get(f"/v1/sandboxes/{sid}/files/{path}", timeout=10)
        assert time.monotonic() - started < 5
        _error(r, 400, "not_a_file")
    assert hc.put(f"/v1/sandboxes/{sid}/files/pipe", content=b"data").status_code == 201
    assert hc.get(f"/v1/sandboxes/{sid}/files/pipe").content == b"data"
    assert_gateway_fine(hostile_gateway, hc)


def test_names_that_are_not_utf8_are_listed_not_fatal(hc: httpx.Client, box: MakeSandbox) -> None:
    sid = box()["id"]
    run(
        hc,
        sid,
        r"touch $'bad\xffname' $'new\nline' 'ok.txt'; mkdir -p $'dir\xfe'; touch $'dir\xfe/x'",
    )
    r = hc.get(f"/v1/sandboxes/{sid}/files")
    assert r.status_code == 200, r.text
    paths = {f["path"] for f in r.json()["files"]}
    assert paths == {"bad\ufffdname", "new\nline", "ok.txt", "dir\ufffd/x"}, paths
    # Such a name cannot be addressed through the API: a clear error, not a 500.
    _error(hc.get(f"/v1/sandboxes/{sid}/files/bad%EF%BF%BDname"), 400, "invalid_path")
    _error(hc.get(f"/v1/sandboxes/{sid}/files/bad%ffname"), 400, "invalid_path")
    assert hc.get(f"/v1/sandboxes/{sid}/files/ok.txt").status_code == 200


def test_deep_directory_nesting_is_bounded_in_the_listing(
    hc: httpx.Client, box: MakeSandbox
) -> None:
    sid = box()["id"]
    run(
        hc,
        sid,
        "p=.; for i in $(seq 200); do p=$p/d; done; mkdir -p $p && touch $p/deep.txt; "
        "touch shallow.txt",
    )
    started = time.monotonic()
    r = hc.get(f"/v1/sandboxes/{sid}/files")
    assert r.status_code == 200 and time.monotonic() - started < 10
    paths = {f["path"] for f in r.json()["files"]}
    assert "shallow.txt" in paths and not any(p.endswith("deep.txt") for p in paths)
