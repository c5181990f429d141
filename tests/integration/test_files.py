"""Files: multipart, raw PUT, listing, download, delete, zip upload, and every path escape."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway

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
