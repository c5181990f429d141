"""tree.py on a real filesystem: walks and removals of trees deeper than the recursion limit,
with symlinks planted everywhere, within their bounds and without leaking fds."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import tree

DEPTH = sys.getrecursionlimit() + 200


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, tree.DIR_FLAGS)
    yield fd
    tree.empty(fd, deadline=float("inf"))  # pytest's own clean-up would recurse
    os.close(fd)


def _deep(top: Path, outside: Path, depth: int = DEPTH) -> None:
    """`depth` nested folders `d`, each with a file and a symlink to `outside`."""
    here = os.getcwd()
    top.mkdir()
    os.chdir(top)
    try:
        for _ in range(depth):
            Path("f").write_text("x")
            os.symlink(outside, "link")
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)


def test_remove_takes_any_depth_and_never_follows_a_link(tmp_path: Path, root: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    _deep(tmp_path / "deep", outside)
    before = _open_fds()
    tree.remove(root, "deep", seconds=60)
    assert _open_fds() == before
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert (outside / "keep").read_text() == "host file"


def test_remove_of_a_link_to_a_folder_removes_the_link(tmp_path: Path, root: int) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").write_text("x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    tree.remove(root, "link", seconds=5)
    assert (tmp_path / "real" / "x").exists() and not (tmp_path / "link").exists()


def test_remove_out_of_time_is_a_clear_error(tmp_path: Path, root: int) -> None:
    (tmp_path / "big" / "sub").mkdir(parents=True)
    with pytest.raises(tree.TreeBusy) as caught:
        tree.remove(root, "big", seconds=-1)
    assert caught.value.status == 409 and caught.value.code == "delete_incomplete"


def test_walk_is_bounded_and_never_follows_a_link(tmp_path: Path, root: int) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    _deep(tmp_path / "deep", outside)
    before = _open_fds()
    walk = tree.Walk(root, max_depth=40, max_entries=10**6)
    paths = [e.path for e in walk]
    assert _open_fds() == before
    assert walk.cut == "deeper than 40 levels"
    assert not any(p.startswith("deep/") and p.endswith("secret") for p in paths)
    assert max(p.count("/") for p in paths) == 40
    # The entry budget and the clock cut it too, and say so.
    small = tree.Walk(root, max_depth=10**6, max_entries=50)
    assert len(list(small)) == 50 and small.cut == "more than 50 entries"
    late = tree.Walk(root, max_depth=10**6, max_entries=10**6, deadline=0.0)
    assert list(late) == [] and late.cut == "out of time"


def test_walk_closes_its_fds_when_left_early(tmp_path: Path, root: int) -> None:
    _deep(tmp_path / "deep", tmp_path, depth=30)
    before = _open_fds()
    for entry in tree.Walk(root, max_depth=100, max_entries=10**6):
        if entry.depth == 20:
            break
    assert _open_fds() == before
