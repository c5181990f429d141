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
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import BadRequest, Conflict, NotFound, PetriError, TooLarge

log = logging.getLogger("petri.workspace")

MAX_PATH = 1024
MAX_COMPONENT = 255
LIST_LIMIT = 20000
LIST_VISITS = 200000
LIST_DEPTH = 64
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class QuotaExceeded(PetriError):
    status, code = 413, "quota_exceeded"


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    modified_at: float


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
    def _dir(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
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
                    raise _path_error(exc, "/".join(parts)) from None
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
            raise _path_error(exc, "/".join(parts)) from None
        try:
            os.fchown(nxt, self.uid, self.gid)
        except OSError as exc:
            os.close(nxt)
            raise _path_error(exc, "/".join(parts)) from None
        return nxt

    def write(self, path: str, source: BinaryIO | bytes, limit: int) -> int:
        """Write one file (replacing it); return its size. Refuses to follow symlinks."""
        parts = clean_path(path)
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        with self._dir(parts[:-1], create=True) as dfd:
            tmp = f".petri-tmp-{os.getpid()}-{id(data)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
            except OSError as exc:  # e.g. no inodes left
                raise _path_error(exc, path) from None
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
                    raise _path_error(exc, path) from None
                raise
        return written

    def read(self, path: str) -> tuple[BinaryIO, int]:
        parts = clean_path(path)
        with self._dir(parts[:-1]) as dfd:
            # O_NONBLOCK: a FIFO the program planted must not block the gateway on open.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                fd = os.open(parts[-1], flags, dir_fd=dfd)
            except OSError as exc:
                raise _path_error(exc, path) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BadRequest(f"{path[:80]} is not a regular file", code="not_a_file")
        return os.fdopen(fd, "rb"), st.st_size

    def open_socket(self, path: str) -> int:
        """An `O_PATH` fd of the Unix socket at `path`, for `connect("/proc/self/fd/<fd>")`.
        The walk follows no symlink and the file itself must be a socket: a link planted in
        its place (say, to the Docker socket) is refused, never connected to."""
        parts = clean_path(path)
        with self._dir(parts[:-1]) as dfd:
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(parts[-1], flags, dir_fd=dfd)
            except OSError as exc:
                raise _path_error(exc, path) from None
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadRequest(f"{path[:80]} is not a socket", code="not_a_socket")
        return fd

    def delete(self, path: str) -> None:
        parts = clean_path(path)
        with self._dir(parts[:-1]) as dfd:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    _rmtree_at(dfd, parts[-1])
                else:
                    os.unlink(parts[-1], dir_fd=dfd)
            except OSError as exc:
                raise _path_error(exc, path) from None

    def listing(self) -> list[FileInfo]:
        """Regular files, walked by directory fd without following symlinks (the program may
        swap a directory for a symlink to a host path at any moment). Bounded: at most
        `LIST_LIMIT` files, `LIST_VISITS` entries and `LIST_DEPTH` levels. A name that is not
        valid UTF-8 is listed with U+FFFD for its bad bytes."""
        found: list[FileInfo] = []
        visits = [LIST_VISITS]
        with self._dir(()) as root:
            _walk(root, "", 0, found, visits)
        return sorted(found, key=lambda f: f.path)

    def extract_zip(self, source: BinaryIO, *, max_members: int, max_bytes: int) -> list[str]:
        """Extract a zip preserving folders. Every member is checked before anything is written."""
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise BadRequest("the upload is not a valid zip file", code="invalid_zip") from None
        with archive:
            members = archive.infolist()
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
                mode = m.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise BadRequest(
                        f"zip member {m.filename[:80]!r} is a symlink", code="zip_symlink"
                    )
                try:
                    clean_path(m.filename)
                except BadRequest as exc:
                    raise BadRequest(
                        f"zip member {m.filename[:80]!r}: {exc.message}", code="zip_unsafe_path"
                    ) from None
            written = []
            for m in members:
                if m.is_dir():
                    with self._dir(clean_path(m.filename), create=True):
                        pass
                    continue
                try:
                    with archive.open(m) as src:
                        self.write(m.filename, src, m.file_size)  # type: ignore[arg-type]
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    raise BadRequest(
                        f"zip member {m.filename[:80]!r} cannot be read: {exc}", code="invalid_zip"
                    ) from None
                except RuntimeError as exc:  # encrypted: zipfile wants a password
                    raise BadRequest(
                        f"zip member {m.filename[:80]!r}: {exc}", code="invalid_zip"
                    ) from None
                written.append("/".join(clean_path(m.filename)))
            return written


def _walk(dfd: int, rel: str, depth: int, found: list[FileInfo], visits: list[int]) -> None:
    try:
        with os.scandir(dfd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if len(found) >= LIST_LIMIT or visits[0] <= 0:
            return
        visits[0] -= 1
        if entry.name == "lost+found" and not rel:
            continue
        name = entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        path = f"{rel}/{name}" if rel else name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append(FileInfo(path, st.st_size, st.st_mtime))
        elif stat.S_ISDIR(st.st_mode) and depth < LIST_DEPTH:
            try:
                fd = os.open(entry.name, _DIR, dir_fd=dfd)
            except OSError:
                continue  # gone, or swapped for a symlink since the scan
            try:
                _walk(fd, path, depth + 1, found, visits)
            finally:
                os.close(fd)


def _refuse_dir(dfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise Conflict(f"{name} is a directory", code="is_a_directory")


def _rmtree_at(dfd: int, name: str) -> None:
    fd = os.open(name, _DIR, dir_fd=dfd)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def _path_error(exc: OSError, path: str) -> PetriError:
    short = path[:80]
    if exc.errno == errno.ENOENT:
        return NotFound(f"no such file: {short}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return BadRequest(f"{short} passes through a symlink or a file", code="invalid_path")
    if exc.errno == errno.EISDIR:
        return Conflict(f"{short} is a directory", code="is_a_directory")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return QuotaExceeded(f"the workspace is full writing {short}")
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

    def exists(self, sandbox_id: str) -> bool:
        return (self.root / sandbox_id).is_dir()

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
        await asyncio.to_thread(shutil.rmtree, path, True)
        with contextlib.suppress(FileNotFoundError):
            image.unlink()

    def known(self) -> set[str]:
        # Dot-folders are the gateway's own (`.images`, the egress proxy's `.egress`).
        return {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}

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


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{argv[0]} failed: {err.decode(errors='replace').strip()[:200]}")
