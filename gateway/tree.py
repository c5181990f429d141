"""Directory trees a sandbox controls, walked and removed without recursion and within bounds.

A program can nest folders deeper than Python's recursion limit, fill one with a million
names, or swap a folder for a symlink while the gateway looks. So every walk here is a loop
over an explicit stack of directory fds, each opened `O_NOFOLLOW` relative to its parent (a
symlink is never followed, wherever it appears), and is bounded in depth, entries and time.
Removal needs no depth bound: past `OPEN_DEPTH` open levels, a subtree is renamed up into
the folder being removed and taken apart from there, so any depth costs at most
`OPEN_DEPTH` fds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from .errors import Conflict

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_DEPTH = 48  # directory fds one removal holds at most
REMOVERS = 4  # removals running at once; more wait their turn
_removers = ThreadPoolExecutor(max_workers=REMOVERS, thread_name_prefix="petri-remove")
P = ParamSpec("P")
T = TypeVar("T")


async def in_remover(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a removal in a thread of its own pool: a long one (a huge tree, up to its time
    bound) never holds the default pool's workers, which the rest of the file I/O needs."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_removers, functools.partial(fn, *args, **kwargs))


class TreeBusy(Conflict):
    """A removal ran out of time (the tree is huge, or a program keeps filling it)."""

    code = "delete_incomplete"


@dataclass(frozen=True, slots=True)
class Entry:
    """One name met by `walk`. `dir_fd` (the folder holding it) stays open until the walk
    moves on, so `os.open(entry.name, ..., dir_fd=entry.dir_fd)` reads it safely."""

    path: str  # client-style path from the walk's root; bad bytes shown as U+FFFD
    name: str  # the name as the OS gave it (surrogate-escaped)
    dir_fd: int
    stat: os.stat_result  # lstat: a symlink is a symlink
    depth: int  # 0 for the root's own entries


@dataclass(slots=True)
class Walk:
    """A bounded walk; after it, `cut` says which bound (if any) stopped part of it."""

    root_fd: int
    max_depth: int
    max_entries: int
    skip: Callable[[Entry], bool] = lambda entry: False
    deadline: float | None = None
    cut: str = ""

    def __iter__(self) -> Iterator[Entry]:
        """Every entry, depth first: in each folder its files by name, then its folders by
        name. Folders deeper than
        `max_depth` are not entered; folders for which `skip(entry)` is true neither."""
        budget = self.max_entries
        stack: list[tuple[int, str, list[os.DirEntry[str]]]] = [
            (self.root_fd, "", _entries(self.root_fd, budget))
        ]
        try:
            while stack:
                fd, rel, entries = stack[-1]
                if not entries:
                    stack.pop()
                    if stack:
                        os.close(fd)
                    continue
                entry = entries.pop()
                if budget <= 0:
                    self.cut = self.cut or f"more than {self.max_entries} entries"
                    return
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.cut = self.cut or "out of time"
                    return
                budget -= 1
                depth = len(stack) - 1
                path = f"{rel}/{_shown(entry.name)}" if rel else _shown(entry.name)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since the scan
                found = Entry(path, entry.name, fd, st, depth)
                yield found
                if not stat.S_ISDIR(st.st_mode) or self.skip(found):
                    continue
                if depth + 1 > self.max_depth:
                    self.cut = self.cut or f"deeper than {self.max_depth} levels"
                    continue
                try:
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # gone, or swapped for a symlink since the scan
                try:
                    stack.append((child, path, _entries(child, budget)))
                except BaseException:
                    os.close(child)
                    raise
        finally:
            for fd, _, _ in stack[1:]:
                os.close(fd)


def _entries(fd: int, most: int) -> list[os.DirEntry[str]]:
    """Up to `most` + 1 of a folder's entries, in reverse walking order (they are popped
    from the end): a folder's files, by name, before its folders, so a shallow file is never
    left out for a deep one. A folder with more is cut by the walk's entry budget anyway."""
    try:
        with os.scandir(fd) as it:
            return sorted(itertools.islice(it, most + 1), key=_order, reverse=True)
    except OSError:
        return []


def _order(entry: os.DirEntry[str]) -> tuple[bool, str]:
    try:
        return entry.is_dir(follow_symlinks=False), entry.name
    except OSError:
        return False, entry.name


def _shown(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def remove(parent_fd: int, name: str, *, seconds: float) -> None:
    """Remove `name` under `parent_fd`: a file, a symlink (never followed) or a whole tree.
    Raises `TreeBusy` after `seconds` (what is left stays), `OSError` on other failures."""
    try:
        os.unlink(name, dir_fd=parent_fd)
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # some systems answer EPERM for a directory
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
    deadline = time.monotonic() + seconds
    while True:
        top = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            empty(top, deadline=deadline)
        finally:
            os.close(top)
        try:
            os.rmdir(name, dir_fd=parent_fd)
            return
        except OSError as exc:  # a program put something back meanwhile
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _check(deadline)


def empty(top: int, *, deadline: float) -> None:
    """Remove everything inside the folder `top` (which stays), depth first, iteratively."""
    token = secrets.token_hex(4)
    moved = 0
    # (fd, its name in the folder above, names not yet handled)
    stack: list[tuple[int, str, list[str]]] = [(top, "", os.listdir(top))]
    try:
        while stack:
            _check(deadline)
            fd, here, names = stack[-1]
            if not names:
                names.extend(os.listdir(fd))  # moved up here, or put back by a program
                if names:
                    continue
                stack.pop()
                if not stack:
                    return
                os.close(fd)
                above = stack[-1]
                try:
                    os.rmdir(here, dir_fd=above[0])
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    above[2].append(here)  # refilled meanwhile: once more
                continue
            name = names.pop()
            try:
                os.unlink(name, dir_fd=fd)
                continue
            except FileNotFoundError:
                continue
            except (IsADirectoryError, PermissionError) as exc:
                refused = exc  # EPERM: a folder on some systems, else a real refusal
            if len(stack) >= OPEN_DEPTH:
                moved += 1
                with contextlib.suppress(FileNotFoundError):
                    os.rename(name, f".petri-rm-{token}-{moved}", src_dir_fd=fd, dst_dir_fd=top)
                continue
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if isinstance(refused, PermissionError):
                    raise refused from None
                names.append(name)  # swapped for a link or a file: unlink it next round
                continue
            try:
                stack.append((child, name, os.listdir(child)))
            except BaseException:
                os.close(child)
                raise
    finally:
        for fd, _, _ in stack[1:]:
            os.close(fd)


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TreeBusy("the folder could not be removed in time (it is very large, or a "
                       "program keeps writing into it); what is left stays")
