"""Workspace path safety, directly on a temp directory: what a program inside the sandbox can
plant (symlinks, FIFOs, sockets) never makes the gateway read, write or delete outside it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.errors import PetriError
from gateway.workspace import Workspace, clean_path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "outside.txt").write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    return Workspace(root, os.getuid(), os.getgid())


@pytest.mark.parametrize(
    "raw",
    ["", "/etc/passwd", "\\x", "..", "a/../../b", "a/\x00b", "tab\tname", "x" * 1025,
     "d/" + "c" * 256, "\ufffd", "\ud800", ".", "./", "a/\x7f"],
)
def test_unsafe_paths_are_invalid(raw: str) -> None:
    with pytest.raises(PetriError) as caught:
        clean_path(raw)
    assert caught.value.code == "invalid_path"


def test_safe_paths_are_normalised() -> None:
    assert clean_path("a//b/./c.txt") == ("a", "b", "c.txt")
    assert clean_path("a\\b") == ("a", "b")


def test_a_symlinked_file_is_neither_read_nor_written(ws: Workspace, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside.txt", ws.root / "link")
    with pytest.raises(PetriError):
        ws.read("link")
    ws.write("link", b"mine", 100)  # replaces the link itself, never writes through it
    assert (tmp_path / "outside.txt").read_bytes() == b"secret"
    assert not (ws.root / "link").is_symlink() and (ws.root / "link").read_bytes() == b"mine"


def test_a_symlinked_directory_is_never_walked(ws: Workspace, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", ws.root / "dir")
    for attempt in (
        lambda: ws.read("dir/outside.txt"),
        lambda: ws.write("dir/new.txt", b"x", 10),
        lambda: ws.delete("dir/x"),
    ):
        with pytest.raises(PetriError):
            attempt()
    assert list((tmp_path / "outside").iterdir()) == []
    assert not ws.is_dir("dir")


def test_delete_removes_a_link_not_its_target(ws: Workspace, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", ws.root / "dir")
    ws.delete("dir")
    assert (tmp_path / "outside").is_dir() and not os.path.lexists(ws.root / "dir")


def test_a_fifo_or_socket_is_not_a_file_and_never_blocks(ws: Workspace) -> None:
    os.mkfifo(ws.root / "fifo")
    with pytest.raises(PetriError) as caught:
        ws.read("fifo")  # O_NONBLOCK: no writer, and still no hang
    assert caught.value.code == "not_a_file"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ws.root / "sock"))
        os.close(ws.open_socket("sock"))
        with pytest.raises(PetriError):
            ws.read("sock")


def test_open_socket_refuses_a_link_to_a_socket(ws: Workspace, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "host.sock"))
        os.symlink(tmp_path / "host.sock", ws.root / "app.sock")
        with pytest.raises(PetriError):
            ws.open_socket("app.sock")


def test_writes_are_bounded_and_atomic(ws: Workspace) -> None:
    ws.write("f.txt", b"v1", 10)
    with pytest.raises(PetriError):
        ws.write("f.txt", b"x" * 11, 10)
    assert (ws.root / "f.txt").read_bytes() == b"v1"  # the refused write lost nothing
    assert [p.name for p in ws.root.iterdir()] == ["f.txt"]  # no temporary file left
