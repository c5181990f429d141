"""Host-path workspaces: one directory per sandbox, safe paths, uploads, zips and quotas.

The sandbox's own programs control the workspace, so every path is walked one component at a
time with `O_NOFOLLOW` relative to an open directory: a symlink planted inside can never send
a write, read or delete outside, whatever it points at and whenever it appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import tree
from .errors import BadRequest, Conflict, NotFound, PetriError, TooLarge, WorkspaceFull

log = logging.getLogger("petri.workspace")

MAX_PATH = 1024
MAX_COMPONENT = 255
LIST_LIMIT = 20000
LIST_VISITS = 200000
LIST_DEPTH = 64
LIST_SECONDS = 20.0
DELETE_SECONDS = 120.0  # one delete of a folder; past it, 409 `delete_incomplete`
REMOVE_SECONDS = 600.0  # a whole workspace, once its container is gone
STAGING = (".petri", "staging")  # uploads are staged here (gateway/uploads.py)
_DIR = tree.DIR_FLAGS


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    modified_at: float


@dataclass(frozen=True, slots=True)
class Listing:
    files: list[FileInfo]
    cut: str  # why part of the tree was left out ("" when nothing was)


def clean_path(raw: str) -> tuple[str, ...]:
    """Split a client path into safe components, or raise `BadRequest` (`invalid_path`)."""
    if not raw or len(raw) > MAX_PATH:
        raise BadRequest("a path must hold 1 to 1024 characters", code="invalid_path")
    if raw.startswith("/") or raw.startswith("\\"):
        raise BadRequest(f"absolute paths are not allowed: {raw[:80]!r}", code="invalid_path")
    parts = tuple(p for p in raw.replace("\\", "/").split("/") if p not in ("", "."))
    if not parts:
        raise BadRequest("the path names no file", code="invalid_path")
    for part in parts:
        if part == "..":
            raise BadRequest(f"'..' is not allowed in paths: {raw[:80]!r}", code="invalid_path")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
            raise BadRequest("a path component is longer than 255 bytes", code="invalid_path")
        if any(ord(c) < 32 or c in "\x7f\ufffd" or 0xD800 <= ord(c) <= 0xDFFF for c in part):
            raise BadRequest(
                "paths must be valid UTF-8 without control characters", code="invalid_path"
            )
    return parts


class Workspace:
    """One sandbox's directory. Paths are client paths, relative to its root."""

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid

    @contextlib.contextmanager
    def directory(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """An fd of the directory `parts`, walked without following any symlink."""
        try:
            fd = os.open(self.root, _DIR)
        except FileNotFoundError:
            raise NotFound("the sandbox's workspace is gone", code="workspace_gone") from None
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise NotFound(f"no such directory: {'/'.join(parts)}") from None
                    nxt = self._mkdir_at(fd, part, parts)
                except OSError as exc:
                    raise path_error(exc, "/".join(parts)) from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _mkdir_at(self, fd: int, part: str, parts: tuple[str, ...]) -> int:
        """Create one directory (a full disk or a racing program is an error, not a crash)."""
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, _DIR, dir_fd=fd)
        except OSError as exc:
            raise path_error(exc, "/".join(parts)) from None
        try:
            os.fchown(nxt, self.uid, self.gid)
        except OSError as exc:
            os.close(nxt)
            raise path_error(exc, "/".join(parts)) from None
        return nxt

    def write(self, path: str, source: BinaryIO | bytes, limit: int) -> int:
        """Write one file (replacing it); return its size. Refuses to follow symlinks."""
        return self.write_at(clean_path(path), source, limit)

    def write_at(self, parts: tuple[str, ...], source: BinaryIO | bytes, limit: int) -> int:
        """`write` for clean parts: to a temporary name beside it, then renamed over it."""
        path = "/".join(parts)
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        with self.directory(parts[:-1], create=True) as dfd:
            tmp = f".petri-tmp-{os.getpid()}-{id(data)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
            except OSError as exc:  # e.g. no inodes left
                raise path_error(exc, path) from None
            written = 0
            try:
                os.fchown(fd, self.uid, self.gid)
                with os.fdopen(fd, "wb", closefd=True) as out:
                    while chunk := data.read(1024 * 1024):
                        written += len(chunk)
                        if written > limit:
                            raise TooLarge(f"{path[:80]} is larger than {limit} bytes")
                        out.write(chunk)
                _refuse_dir(dfd, parts[-1])
                os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                if isinstance(exc, OSError):
                    raise path_error(exc, path) from None
                raise
        return written

    def create_at(self, parts: tuple[str, ...]) -> int:
        """A new, empty file (its folders made as needed), open for writing: an fd."""
        with self.directory(parts[:-1], create=True) as dfd:
            _refuse_dir(dfd, parts[-1])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=dfd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(parts[-1], flags, 0o644, dir_fd=dfd)
            except OSError as exc:
                raise path_error(exc, "/".join(parts)) from None
        try:
            os.fchown(fd, self.uid, self.gid)
        except OSError as exc:
            os.close(fd)
            raise path_error(exc, "/".join(parts)) from None
        return fd

    def read(self, path: str) -> tuple[BinaryIO, int]:
        fd, size = self.open_file(path)
        return os.fdopen(fd, "rb"), size

    def open_file(self, path: str) -> tuple[int, int]:
        """(an fd open for reading, its size): a regular file only, reached without
        following symlinks."""
        parts = clean_path(path)
        with self.directory(parts[:-1]) as dfd:
            # O_NONBLOCK: a FIFO the program planted must not block the gateway on open.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                fd = os.open(parts[-1], flags, dir_fd=dfd)
            except OSError as exc:
                raise path_error(exc, path) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BadRequest(f"{path[:80]} is not a regular file", code="not_a_file")
        return fd, st.st_size

    def open_socket(self, path: str) -> int:
        """An `O_PATH` fd of the Unix socket at `path`, for `connect("/proc/self/fd/<fd>")`.
        The walk follows no symlink and the file itself must be a socket: a link planted in
        its place (say, to the Docker socket) is refused, never connected to."""
        parts = clean_path(path)
        with self.directory(parts[:-1]) as dfd:
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(parts[-1], flags, dir_fd=dfd)
            except OSError as exc:
                raise path_error(exc, path) from None
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadRequest(f"{path[:80]} is not a socket", code="not_a_socket")
        return fd

    def is_dir(self, path: str) -> bool:
        """Whether `path` is a directory, reached without following any symlink."""
        try:
            with self.directory(clean_path(path)):
                return True
        except PetriError:
            return False

    def files_in(self, path: str, limit: int) -> list[tuple[str, int]]:
        """(name, size) of the regular files directly in directory `path`, sorted by name,
        at most `limit` of them; [] when it is not a directory (or is reached by a symlink)."""
        try:
            with self.directory(clean_path(path)) as dfd, os.scandir(dfd) as it:
                found = []
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        found.append((entry.name, st.st_size))
                    if len(found) >= limit:
                        break
        except (PetriError, OSError):
            return []
        return sorted(found)

    def delete(self, path: str, *, seconds: float = DELETE_SECONDS) -> None:
        """Remove a file, a symlink (never followed) or a whole folder, however deep. A
        folder that takes longer than `seconds` is 409 `delete_incomplete`."""
        self.delete_at(clean_path(path), seconds=seconds)

    def delete_at(self, parts: tuple[str, ...], *, seconds: float = DELETE_SECONDS) -> None:
        with self.directory(parts[:-1]) as dfd:
            try:
                tree.remove(dfd, parts[-1], seconds=seconds)
            except OSError as exc:
                raise path_error(exc, "/".join(parts)) from None

    def listing(self) -> Listing:
        """Regular files, walked by directory fd without following symlinks (the program may
        swap a directory for a symlink to a host path at any moment). Bounded: at most
        `LIST_LIMIT` files, `LIST_VISITS` entries, `LIST_DEPTH` levels and `LIST_SECONDS`;
        `cut` says what was left out. A name that is not valid UTF-8 is listed with U+FFFD
        for its bad bytes. Uploads being staged are not listed."""
        found: list[FileInfo] = []
        with self.directory(()) as root:
            deadline = time.monotonic() + LIST_SECONDS
            walk = tree.Walk(root, LIST_DEPTH, LIST_VISITS, skip=_unlisted, deadline=deadline)
            for entry in walk:
                if stat.S_ISREG(entry.stat.st_mode):
                    found.append(FileInfo(entry.path, entry.stat.st_size, entry.stat.st_mtime))
                    if len(found) >= LIST_LIMIT:
                        walk.cut = f"more than {LIST_LIMIT} files"
                        break
        found.sort(key=lambda f: f.path)
        return Listing(found, walk.cut)


def _unlisted(entry: tree.Entry) -> bool:
    """Folders the listing does not enter: the image's lost+found, uploads being staged."""
    return entry.path in ("lost+found", "/".join(STAGING))


def _refuse_dir(dfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise Conflict(f"{name} is a directory", code="is_a_directory")


def path_error(exc: OSError, path: str) -> PetriError:
    short = path[:80]
    if exc.errno == errno.ENOENT:
        return NotFound(f"no such file: {short}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return BadRequest(f"{short} passes through a symlink or a file", code="invalid_path")
    if exc.errno == errno.EISDIR:
        return Conflict(f"{short} is a directory", code="is_a_directory")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WorkspaceFull(f"the workspace is full writing {short}")
    if exc.errno == errno.ENAMETOOLONG:
        return BadRequest(f"{short}: name too long", code="invalid_path")
    return BadRequest(f"{short}: {exc.strerror}", code="file_error")


class Workspaces:
    """Creates and removes workspaces under the root, each on its own loop-mounted ext4 image
    when a disk quota is asked for and the host allows mounting (else a plain directory)."""

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self._images = root / ".images"
        root.mkdir(parents=True, exist_ok=True)

    def get(self, sandbox_id: str) -> Workspace:
        return Workspace(self.root / sandbox_id, self.uid, self.gid)

    async def create(self, sandbox_id: str, disk_mb: int) -> Workspace:
        path = self.root / sandbox_id
        path.mkdir(mode=0o755)
        if disk_mb > 0:
            try:
                await self._mount_image(sandbox_id, path, disk_mb)
            except OSError as exc:
                log.warning("workspace quota unavailable, using a plain directory: %s", exc)
        os.chown(path, self.uid, self.gid)
        return self.get(sandbox_id)

    async def remount(self, sandbox_id: str) -> None:
        """After a host reboot, mount a workspace image again (no-op when mounted)."""
        path, image = self.root / sandbox_id, self._images / f"{sandbox_id}.ext4"
        if image.exists() and not os.path.ismount(path):
            path.mkdir(exist_ok=True)
            await _run("mount", "-o", "loop,nosuid,nodev", str(image), str(path))

    async def remove(self, sandbox_id: str) -> None:
        path, image = self.root / sandbox_id, self._images / f"{sandbox_id}.ext4"
        if os.path.ismount(path):
            await _run("umount", "-l", str(path))
        await tree.in_remover(_remove_tree, self.root, sandbox_id)
        with contextlib.suppress(FileNotFoundError):
            image.unlink()

    async def _mount_image(self, sandbox_id: str, path: Path, disk_mb: int) -> None:
        if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
            raise OSError("needs root and mkfs.ext4")
        self._images.mkdir(mode=0o700, exist_ok=True)
        image = self._images / f"{sandbox_id}.ext4"
        with open(image, "wb") as f:
            f.truncate(disk_mb * 1024 * 1024)
        try:
            await _run(
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                f"root_owner={self.uid}:{self.gid},lazy_itable_init=1",
                str(image),
            )
            await _run("mount", "-o", "loop,nosuid,nodev", str(image), str(path))
        except OSError:
            image.unlink(missing_ok=True)
            raise
        lost = path / "lost+found"
        if lost.is_dir():
            lost.rmdir()


def _remove_tree(root: Path, name: str) -> None:
    """A whole workspace, however deep, without following a link. Failures are logged:
    the sandbox goes anyway."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # ours: may be a link
        try:
            tree.remove(fd, name, seconds=REMOVE_SECONDS)
        finally:
            os.close(fd)
    except FileNotFoundError:
        pass
    except (OSError, PetriError) as exc:
        log.warning("workspace %s was not fully removed: %s", name, exc)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{argv[0]} failed: {err.decode(errors='replace').strip()[:200]}")
