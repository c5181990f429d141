"""Files: multipart, raw PUT, listing, download, delete, zip upload, and every path escape."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, running_gateway

pytestmark = pytest.mark.docker


def make_zip(members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            z.writestr(info, target)
    return buf.getvalue()


def run(client: httpx.Client, sid: str, command: str) -> dict[str, Any]:
    body: dict[str, Any] = client.post(
        f"/v1/sandboxes/{sid}/exec", json={"command": command}
    ).json()
    return body


def test_multipart_upload_with_relative_paths_then_list_read_delete(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    files = [
        ("file", ("main.py", b"print('hi')\n")),
        ("file", ("src/pkg/util.py", b"X = 1\n")),
        ("file", ("data/empty.txt", b"")),
    ]
    r = client.post(f"/v1/sandboxes/{sid}/files", files=files)
    assert r.status_code == 201, r.text
    assert {f["path"] for f in r.json()["files"]} == {
        "main.py",
        "src/pkg/util.py",
        "data/empty.txt",
    }
    listing = client.get(f"/v1/sandboxes/{sid}/files").json()["files"]
    by_path = {f["path"]: f for f in listing}
    assert by_path["src/pkg/util.py"]["size"] == 6 and by_path["data/empty.txt"]["size"] == 0
    assert by_path["main.py"]["modified_at"].endswith("Z")
    got = client.get(f"/v1/sandboxes/{sid}/files/src/pkg/util.py")
    assert got.status_code == 200 and got.content == b"X = 1\n"
    # The program sees the same files and may change them.
    assert (
        run(client, sid, "cat src/pkg/util.py && echo Y >> src/pkg/util.py")["stdout"] == "X = 1\n"
    )
    assert client.get(f"/v1/sandboxes/{sid}/files/src/pkg/util.py").content == b"X = 1\nY\n"
    assert client.delete(f"/v1/sandboxes/{sid}/files/src/pkg/util.py").status_code == 204
    assert client.get(f"/v1/sandboxes/{sid}/files/src/pkg/util.py").status_code == 404
    assert client.delete(f"/v1/sandboxes/{sid}/files/src").status_code == 204
    assert run(client, sid, "ls")["stdout"].split() == ["data", "main.py"]


def test_put_replaces_and_binary_round_trips(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    blob = bytes(range(256)) * 1000
    assert client.put(f"/v1/sandboxes/{sid}/files/bin/blob", content=b"old").status_code == 201
    r = client.put(f"/v1/sandboxes/{sid}/files/bin/blob", content=blob)
    assert r.status_code == 201 and r.json()["size"] == len(blob)
    assert client.get(f"/v1/sandboxes/{sid}/files/bin/blob").content == blob


def test_zip_upload_preserves_folders(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    archive = make_zip(
        {
            "proj/app.py": b"import lib.m\nprint(lib.m.V)\n",
            "proj/lib/__init__.py": b"",
            "proj/lib/m.py": b"V = 'zip ok'\n",
        }
    )
    r = client.post(
        f"/v1/sandboxes/{sid}/upload", content=archive, headers={"Content-Type": "application/zip"}
    )
    assert r.status_code == 201, r.text
    assert set(r.json()["files"]) == {"proj/app.py", "proj/lib/__init__.py", "proj/lib/m.py"}
    assert run(client, sid, "cd proj && python3 app.py")["stdout"] == "zip ok\n"
    again = client.post(
        f"/v1/sandboxes/{sid}/upload",
        files={"file": ("p.zip", make_zip({"x/y.txt": b"multipart"}))},
    )
    assert again.status_code == 201
    assert client.get(f"/v1/sandboxes/{sid}/files/x/y.txt").content == b"multipart"


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "%2e%2e/escape.txt",
        "a/%2e%2e/%2e%2e/escape.txt",
        "..%2fescape.txt",
    ],
)
def test_dotdot_paths_are_refused(
    client: httpx.Client, sandbox: dict[str, Any], gateway: Gateway, path: str
) -> None:
    r = client.put(f"/v1/sandboxes/{sandbox['id']}/files/{path}", content=b"x")
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["code"] in ("invalid_path", "route_not_found")
    assert not (gateway.workspace_root / "escape.txt").exists()
    assert not (gateway.workspace_root.parent / "escape.txt").exists()


def test_absolute_and_dotdot_multipart_names_are_refused(
    client: httpx.Client, sandbox: dict[str, Any], gateway: Gateway
) -> None:
    sid = sandbox["id"]
    for name in ("/etc/evil", "../evil", "a/../../evil", "..\\evil"):
        r = client.post(f"/v1/sandboxes/{sid}/files", files=[("file", (name, b"x"))])
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["code"] == "invalid_path"
    assert not (gateway.workspace_root / "evil").exists()


def test_symlinks_pointing_out_are_never_followed(
    client: httpx.Client, sandbox: dict[str, Any], tmp_path: Any
) -> None:
    sid = sandbox["id"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    os.chmod(tmp_path, 0o755)
    # The sandbox's program plants symlinks (it can only name paths, not reach them).
    assert (
        run(
            client,
            sid,
            f"ln -s {outside} dirlink && ln -s {outside}/secret filelink && ln -s /etc/passwd pw",
        )["exit_code"]
        == 0
    )
    for path in ("dirlink/secret", "filelink", "pw"):
        r = client.get(f"/v1/sandboxes/{sid}/files/{path}")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", (path, r.text)
        w = client.put(f"/v1/sandboxes/{sid}/files/{path}", content=b"overwritten")
        if path == "dirlink/secret":
            assert w.status_code == 400, w.text  # a directory symlink is never walked
        else:
            assert w.status_code == 201, w.text  # the link itself is replaced, not followed
            assert client.get(f"/v1/sandboxes/{sid}/files/{path}").content == b"overwritten"
    assert (outside / "secret").read_text() == "host secret"
    assert "root:" in Path("/etc/passwd").read_text()
    assert client.delete(f"/v1/sandboxes/{sid}/files/dirlink/secret").status_code == 400
    assert (outside / "secret").exists()
    listed = {f["path"] for f in client.get(f"/v1/sandboxes/{sid}/files").json()["files"]}
    assert "dirlink/secret" not in listed


def test_zip_slip_and_symlink_members_write_nothing(
    client: httpx.Client, sandbox: dict[str, Any], gateway: Gateway
) -> None:
    sid = sandbox["id"]
    cases = {
        "zip_unsafe_path": make_zip({"ok.txt": b"fine", "../../zipslip.txt": b"x"}),
        "zip_symlink": make_zip({"ok.txt": b"fine"}, symlinks={"link": "/etc/passwd"}),
    }
    for code, archive in cases.items():
        r = client.post(
            f"/v1/sandboxes/{sid}/upload",
            content=archive,
            headers={"Content-Type": "application/zip"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    abs_zip = make_zip({"/tmp/abs-zipslip.txt": b"x"})
    r = client.post(
        f"/v1/sandboxes/{sid}/upload", content=abs_zip, headers={"Content-Type": "application/zip"}
    )
    assert r.status_code == 400
    assert not (gateway.workspace_root.parent / "zipslip.txt").exists()
    assert not os.path.exists("/tmp/abs-zipslip.txt")
    # Checked before anything is written: not even the safe member landed.
    assert client.get(f"/v1/sandboxes/{sid}/files/ok.txt").status_code == 404


def test_zip_bombs_are_refused(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    many = make_zip({f"f{i}": b"" for i in range(10001)})
    r = client.post(
        f"/v1/sandboxes/{sid}/upload", content=many, headers={"Content-Type": "application/zip"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "zip_too_many_members"
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("zeros", "w", force_zip64=True) as f,
    ):
        chunk = b"\0" * (1 << 20)
        for _ in range(600):
            f.write(chunk)
    assert len(buf.getvalue()) < 5 * 1024 * 1024
    r = client.post(
        f"/v1/sandboxes/{sid}/upload",
        content=buf.getvalue(),
        headers={"Content-Type": "application/zip"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "zip_too_large"
    assert client.get(f"/v1/sandboxes/{sid}/files/zeros").status_code == 404
    bad = client.post(
        f"/v1/sandboxes/{sid}/upload",
        content=b"not a zip",
        headers={"Content-Type": "application/zip"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_zip"


def test_file_errors_are_clear(client: httpx.Client, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    assert (
        client.get(f"/v1/sandboxes/{sid}/files/missing.txt").json()["error"]["code"] == "not_found"
    )
    client.put(f"/v1/sandboxes/{sid}/files/d/f.txt", content=b"x")
    r = client.put(f"/v1/sandboxes/{sid}/files/d", content=b"x")
    assert r.status_code == 409 and r.json()["error"]["code"] == "is_a_directory"
    r = client.get(f"/v1/sandboxes/{sid}/files/d")
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_a_file"
    r = client.post(f"/v1/sandboxes/{sid}/files", data={"other": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_files"
    assert client.get("/v1/sandboxes/sb-nope/files").status_code == 404


# --- uploads are all or nothing ------------------------------------------------------------


def _listing(client: httpx.Client, sid: str) -> dict[str, bytes]:
    """Every file of the workspace (as the program sees it, hidden ones included) and its
    bytes."""
    out = run(client, sid, "find . -mindepth 1 | sort")["stdout"].split()
    files = {}
    for path in out:
        got = client.get(f"/v1/sandboxes/{sid}/files/{path[2:]}")
        files[path[2:]] = got.content if got.status_code == 200 else b"<dir>"
    return files


def _seed(client: httpx.Client, sid: str) -> dict[str, bytes]:
    for name, data in (("one.txt", b"original one"), ("keep/two.txt", b"original two")):
        assert client.put(f"/v1/sandboxes/{sid}/files/{name}", content=data).status_code == 201
    return _listing(client, sid)


def test_zip_with_a_corrupt_second_member_changes_nothing(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    before = _seed(client, sid)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("one.txt", b"replaced by the zip")
        z.writestr("newdir/b.txt", b"hello world" * 100)
    archive = bytearray(buf.getvalue())
    at = archive.find(b"hello world")
    archive[at : at + 5] = b"HELLO"  # the second member's CRC no longer matches
    for r in (
        client.post(
            f"/v1/sandboxes/{sid}/upload",
            content=bytes(archive),
            headers={"Content-Type": "application/zip"},
        ),
        client.post(f"/v1/sandboxes/{sid}/upload", files={"file": ("a.zip", bytes(archive))}),
    ):
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_zip", r.text
    assert _listing(client, sid) == before
    assert client.get(f"/v1/sandboxes/{sid}/files/one.txt").content == b"original one"


def test_multipart_with_an_escaping_third_part_changes_nothing(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    before = _seed(client, sid)
    for bad in ("../x", "keep/../../x", "/abs"):
        parts = [
            ("file", ("one.txt", b"new one")),
            ("file", ("newdir/deep/two.txt", b"new two")),
            ("file", (bad, b"escape")),
        ]
        r = client.post(f"/v1/sandboxes/{sid}/files", files=parts)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", r.text
        assert _listing(client, sid) == before
    # Without the bad part it goes in whole, and leaves nothing of its staging behind.
    r = client.post(f"/v1/sandboxes/{sid}/files", files=parts[:2])
    assert r.status_code == 201, r.text
    assert _listing(client, sid) == {
        **before,
        "one.txt": b"new one",
        "newdir": b"<dir>",
        "newdir/deep": b"<dir>",
        "newdir/deep/two.txt": b"new two",
    }


def test_multipart_whose_third_part_conflicts_changes_nothing(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    """A part that would replace a folder (`keep`), or two parts that need `x` to be both a
    file and a folder, is refused after staging: still nothing changes."""
    sid = sandbox["id"]
    before = _seed(client, sid)
    for third in (("keep", b"not a folder"), ("one.txt/inner", b"under a file")):
        parts = [
            ("file", ("one.txt", b"new one")),
            ("file", ("newdir/two.txt", b"new two")),
            ("file", third),
        ]
        r = client.post(f"/v1/sandboxes/{sid}/files", files=parts)
        assert r.status_code in (400, 409), r.text
        assert _listing(client, sid) == before


def test_an_upload_over_the_quota_changes_nothing(
    client: httpx.Client, new_sandbox: Any
) -> None:
    sid = new_sandbox("python", limits={"disk_mb": 16})["id"]
    _seed(client, sid)
    # Fill the disk, then free 1 MB: the upload below needs ~1.8 MB.
    fill = run(client, sid, "head -c 64M /dev/zero >fill 2>&-; truncate -s -1M fill; echo ok")
    assert fill["stdout"] == "ok\n", fill
    before = _listing(client, sid)
    parts = [("file", ("one.txt", b"new one"))] + [
        ("file", (f"big/{i}.bin", os.urandom(600 * 1024))) for i in range(3)
    ]
    r = client.post(f"/v1/sandboxes/{sid}/files", files=parts)
    assert r.status_code == 413 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert _listing(client, sid) == before
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        z.writestr("one.txt", b"new one")
        for i in range(3):
            z.writestr(f"big/{i}.bin", os.urandom(600 * 1024))
    r = client.post(
        f"/v1/sandboxes/{sid}/upload",
        content=zipped.getvalue(),
        headers={"Content-Type": "application/zip"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "quota_exceeded", r.text
    r = client.put(f"/v1/sandboxes/{sid}/files/one.txt", content=os.urandom(1536 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert _listing(client, sid) == before


@pytest.fixture(scope="module")
def small_uploads(docker_ready: None) -> Iterator[Gateway]:
    """A gateway whose uploads may be at most 64 KiB each."""
    with running_gateway("uploads", max_upload_bytes=str(64 * 1024)) as gw:
        yield gw


def test_a_part_or_put_over_the_size_limit_changes_nothing(small_uploads: Gateway) -> None:
    with small_uploads.client() as c:
        sid = c.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        try:
            before = _seed(c, sid)
            parts = [
                ("file", ("one.txt", b"new one")),
                ("file", ("newdir/two.txt", b"new two")),
                ("file", ("three.bin", b"x" * (64 * 1024 + 1))),
            ]
            r = c.post(f"/v1/sandboxes/{sid}/files", files=parts)
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
            assert _listing(c, sid) == before
            r = c.put(f"/v1/sandboxes/{sid}/files/newdir/sub/big.bin", content=b"x" * 70000)
            assert r.status_code == 413, r.text
            r = c.put(f"/v1/sandboxes/{sid}/files/one.txt", content=b"x" * 70000)
            assert r.status_code == 413, r.text
            assert _listing(c, sid) == before
        finally:
            c.delete(f"/v1/sandboxes/{sid}")


# --- reading a file that a program is writing ----------------------------------------------


def test_download_of_a_file_being_written_is_always_well_formed(
    client: httpx.Client, sandbox: dict[str, Any]
) -> None:
    """A program appends to a file (and now and then empties it) while a client downloads it
    in a loop: every response is well-formed, never more than the file held when opened."""
    sid = sandbox["id"]
    writer = client.post(
        f"/v1/sandboxes/{sid}/exec",
        json={
            "command": (
                ": > grow.bin; end=$((SECONDS+6)); i=0; while [ $SECONDS -lt $end ]; do "
                "head -c 65536 /dev/zero >> grow.bin; i=$((i+1)); "
                "[ $((i % 40)) = 0 ] && : > grow.bin; done; echo done"
            ),
            "wait": False,
        },
    )
    assert writer.status_code == 202, writer.text
    deadline = time.monotonic() + 20
    while client.get(f"/v1/sandboxes/{sid}/files/grow.bin").status_code == 404:
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    deadline = time.monotonic() + 4
    sizes = []
    while time.monotonic() < deadline:
        r = client.get(f"/v1/sandboxes/{sid}/files/grow.bin")  # never a protocol error
        assert r.status_code == 200, r.text
        assert r.content == b"\0" * len(r.content)
        if "content-length" in r.headers:
            assert int(r.headers["content-length"]) == len(r.content)
        sizes.append(len(r.content))
    assert len(sizes) > 10 and max(sizes) > 0, sizes
