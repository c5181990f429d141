"""Uploads, all or nothing.

Every file of one request (multipart parts, zip members, a PUT body) is first written into a
staging folder inside the workspace itself, `.petri/staging/<random>`: on the workspace's own
filesystem, so it counts against the quota and the final moves are renames. Only when every
file is staged (paths clean, sizes within limits, zip members intact, the disk not full) and
checked against what the workspace holds is anything moved into place. A refused upload
removes its staging folder and leaves every existing file as it was.

Moving in needs no new inodes: where a folder does not exist yet, the staged folder is moved
in whole; a file replaces its namesake with one atomic rename. Paths are walked by directory
fd with `O_NOFOLLOW` on both sides. The program may change its workspace while this runs;
it can only make a racing upload fail, never send a file outside.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import zipfile
import zlib
from types import TracebackType
from typing import BinaryIO

from .errors import BadRequest, Conflict, NotFound, TooLarge
from .tree import DIR_FLAGS as _DIR
from .workspace import STAGING, Workspace, clean_path, path_error

DISCARD_SECONDS = 60.0


class Upload:
    """One all-or-nothing upload into a workspace. Use as a context manager: the staging
    folder is made on entry and removed on exit, committed or not."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.base = (*STAGING, secrets.token_hex(8))
        self.items: dict[tuple[str, ...], bool] = {}  # staged paths, in order: is a folder
        self._made: list[tuple[str, ...]] = []  # the first folder of STAGING it created

    def __enter__(self) -> Upload:
        for depth in range(1, len(STAGING) + 1):
            try:
                with self.workspace.directory(STAGING[:depth]):
                    pass
            except NotFound:
                self._made.append(STAGING[:depth])
                break
        with self.workspace.directory(self.base, create=True):
            pass
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the staging folder, and `.petri/staging` (`.petri`) if this upload made
        them and nothing else is in them now: an upload leaves no trace in the workspace."""
        with contextlib.suppress(Exception):  # it may be gone already: nothing to undo
            self.workspace.delete_at(self.base, seconds=DISCARD_SECONDS)
        if self._made:
            for depth in range(len(STAGING), len(self._made[0]) - 1, -1):
                self._remove_empty(STAGING[:depth])

    def _remove_empty(self, parts: tuple[str, ...]) -> None:
        with contextlib.suppress(Exception), self.workspace.directory(parts[:-1]) as fd:
            os.rmdir(parts[-1], dir_fd=fd)  # only when empty: another upload may be in it

    # --- staging --------------------------------------------------------------------------

    def add(self, parts: tuple[str, ...], source: BinaryIO | bytes, limit: int) -> int:
        """Stage one file; its size. A second file with the same path replaces the first."""
        size = self.workspace.write_at((*self.base, *parts), source, limit)
        self.items[parts] = False
        return size

    def create(self, parts: tuple[str, ...]) -> int:
        """Stage an empty file and return an fd to write it (the caller closes it)."""
        fd = self.workspace.create_at((*self.base, *parts))
        self.items[parts] = False
        return fd

    def add_folder(self, parts: tuple[str, ...]) -> None:
        with self.workspace.directory((*self.base, *parts), create=True):
            pass
        self.items.setdefault(parts, True)

    def add_zip(self, source: BinaryIO, *, max_members: int, max_bytes: int) -> list[str]:
        """Stage a zip's members, preserving folders. Every member's name, kind and declared
        size is checked before any is extracted; a member that does not extract (corrupt,
        encrypted, an unknown method) refuses the whole upload."""
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise BadRequest("the upload is not a valid zip file", code="invalid_zip") from None
        with archive:
            members = archive.infolist()
            _check_members(members, max_members, max_bytes)
            files = []
            for m in members:
                parts = clean_path(m.filename)
                if m.is_dir():
                    self.add_folder(parts)
                    continue
                try:
                    with archive.open(m) as src:
                        self.add(parts, src, m.file_size)  # type: ignore[arg-type]
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    raise BadRequest(
                        f"zip member {m.filename[:80]!r} cannot be read: {exc}", code="invalid_zip"
                    ) from None
                except RuntimeError as exc:  # encrypted: zipfile wants a password
                    raise BadRequest(
                        f"zip member {m.filename[:80]!r}: {exc}", code="invalid_zip"
                    ) from None
                files.append("/".join(parts))
            return files

    # --- moving in ------------------------------------------------------------------------

    def commit(self) -> None:
        """Check every staged path against the workspace, then move them all in."""
        for parts, folder in self.items.items():
            self._check(parts, folder)
        moved: set[tuple[str, ...]] = set()
        for parts, folder in self.items.items():
            if not any(parts[:i] in moved for i in range(1, len(parts) + 1)):
                self._move(parts, folder, moved)

    def _check(self, parts: tuple[str, ...], folder: bool) -> None:
        """Would `parts` fit: each existing folder on the way a real folder (not a link, not
        a file), and a file never in the place of a folder nor the reverse."""
        path = "/".join(parts)
        with self.workspace.directory(()) as root:
            fd = os.dup(root)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    return  # made by the move
                except OSError as exc:
                    raise path_error(exc, path) from None
                os.close(fd)
                fd = nxt
            try:
                mode = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return
            if stat.S_ISDIR(mode) and not folder:
                raise Conflict(f"{path[:80]} is a directory", code="is_a_directory")
            if folder and not stat.S_ISDIR(mode):
                raise Conflict(f"{path[:80]} is a file, not a folder", code="not_a_directory")
        finally:
            os.close(fd)

    def _move(self, parts: tuple[str, ...], folder: bool, moved: set[tuple[str, ...]]) -> None:
        """Rename the staged `parts` into place: at the first folder the workspace lacks,
        the staged folder is moved in whole (with everything staged under it)."""
        path = "/".join(parts)
        with self.workspace.directory(()) as root:
            fd = os.dup(root)
        try:
            for depth, part in enumerate(parts):
                last = depth == len(parts) - 1
                if not last or folder:
                    try:
                        nxt = os.open(part, _DIR, dir_fd=fd)
                    except FileNotFoundError:
                        self._rename(parts[: depth + 1], fd)
                        moved.add(parts[: depth + 1])
                        return
                    except OSError as exc:
                        raise path_error(exc, path) from None
                    os.close(fd)
                    fd = nxt
                    continue
                self._rename(parts, fd)  # a file replaces its namesake atomically
        finally:
            os.close(fd)

    def _rename(self, parts: tuple[str, ...], dst_fd: int) -> None:
        with self.workspace.directory((*self.base, *parts[:-1])) as src_fd:
            try:
                os.rename(parts[-1], parts[-1], src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    exc = IsADirectoryError(errno.EISDIR, exc.strerror)
                raise path_error(exc, "/".join(parts)) from None


def _check_members(members: list[zipfile.ZipInfo], max_members: int, max_bytes: int) -> None:
    if len(members) > max_members:
        raise TooLarge(
            f"the zip holds {len(members)} members; at most {max_members}",
            code="zip_too_many_members",
        )
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise TooLarge(
            f"the zip expands to {total} bytes; at most {max_bytes}", code="zip_too_large"
        )
    for m in members:
        if stat.S_ISLNK(m.external_attr >> 16):
            raise BadRequest(f"zip member {m.filename[:80]!r} is a symlink", code="zip_symlink")
        try:
            clean_path(m.filename)
        except BadRequest as exc:
            raise BadRequest(
                f"zip member {m.filename[:80]!r}: {exc.message}", code="zip_unsafe_path"
            ) from None
