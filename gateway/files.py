"""Workspace files on request paths: the one place the HTTP side does file I/O, all of it off
the event loop.

Walks, deletes, zip extraction and staged uploads are loops of syscalls on directory fds
(`workspace`, `tree`, `uploads`): each runs whole in a worker thread. Bytes that stream (a
download, a PUT body, a zip body) go through aiofiles, a chunk per worker-thread hop, so a
150k-file folder or a 100 MB body never holds the loop that serves every other request.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedReader

from . import tree
from .errors import PetriError, TooLarge
from .uploads import Upload
from .workspace import Listing, Workspace, clean_path, path_error

SMALL_FILE = 1024 * 1024  # read whole, and sent with its exact length
CHUNK = 256 * 1024


@dataclass(slots=True)
class Download:
    """A file as it was when opened. Small: `body`, all of it. Larger: `chunks`, at most
    `size` bytes (never more than the file held when opened; fewer if it shrank since), to
    be sent without a Content-Length, so the response stays well-formed either way."""

    size: int
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None


async def listing(workspace: Workspace) -> Listing:
    return await asyncio.to_thread(workspace.listing)


async def digest(workspace: Workspace, path: str, max_bytes: int) -> str | None:
    """The sha256 of a workspace file, read in a thread; None when it is absent, not a
    regular file, or larger than `max_bytes`."""

    def work() -> str | None:
        try:
            handle, size = workspace.read(path)
        except (PetriError, OSError):
            return None
        with handle:
            if size > max_bytes:
                return None
            hashed = hashlib.sha256()
            while chunk := handle.read(1024 * 1024):
                hashed.update(chunk)
            return hashed.hexdigest()

    return await asyncio.to_thread(work)


async def delete(workspace: Workspace, path: str) -> None:
    await tree.in_remover(workspace.delete, path)


async def download(workspace: Workspace, path: str) -> Download:
    clean = "/".join(clean_path(path))  # a clear 400 before `open` sees a NUL byte
    opener = _Opener(workspace)
    handle = await aiofiles.open(clean, "rb", opener=opener)
    if opener.size > SMALL_FILE:
        return Download(opener.size, chunks=_chunks(handle, opener.size))
    try:
        return Download(opener.size, body=await handle.read(opener.size))
    finally:
        await handle.close()


class _Opener:
    """`open`'s opener (called in aiofiles' worker thread): the workspace's `O_NOFOLLOW`
    walk, a regular file only; keeps the size seen at open."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.size = 0

    def __call__(self, path: str, flags: int) -> int:
        fd, self.size = self.workspace.open_file(path)
        return fd


async def _chunks(handle: AsyncBufferedReader, size: int) -> AsyncIterator[bytes]:
    try:
        left = size
        while left > 0:
            chunk = await handle.read(min(CHUNK, left))
            if not chunk:
                return  # it shrank: end here, well-formed (chunked)
            left -= len(chunk)
            yield chunk
    finally:
        await handle.close()


async def put(workspace: Workspace, path: str, body: AsyncIterator[bytes], limit: int) -> int:
    """Stream a body into one file, all or nothing: staged, then renamed over the old one.
    A body over `limit`, a full disk or a dropped client changes nothing."""
    parts = clean_path(path)
    upload = Upload(workspace)
    await asyncio.to_thread(upload.__enter__)
    try:
        fd = await asyncio.to_thread(upload.create, parts)
        size = 0
        try:
            async with aiofiles.open(fd, "wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"{path[:80]} is larger than {limit} bytes")
                    await out.write(chunk)
        except OSError as exc:  # a full disk, on a write or on the last flush
            raise path_error(exc, path) from None
        await asyncio.to_thread(upload.commit)
    finally:
        await asyncio.to_thread(upload.discard)
    return size


async def upload(
    workspace: Workspace, files: list[tuple[str, BinaryIO]], limit: int
) -> list[dict[str, Any]]:
    """Multipart parts (name, data), all or nothing. Every name is checked before any byte
    is written; then all are staged, checked against the workspace, and moved in."""
    named = [(clean_path(name), name, source) for name, source in files]

    def stage_and_commit() -> list[dict[str, Any]]:
        with Upload(workspace) as staged:
            sizes = [(name, staged.add(parts, source, limit)) for parts, name, source in named]
            staged.commit()
        return [{"path": name, "size": size} for name, size in sizes]

    return await asyncio.to_thread(stage_and_commit)


async def extract_zip(
    workspace: Workspace, source: BinaryIO, *, max_members: int, max_bytes: int
) -> list[str]:
    """A zip, all or nothing (see `uploads.Upload.add_zip`)."""

    def stage_and_commit() -> list[str]:
        with Upload(workspace) as staged:
            written = staged.add_zip(source, max_members=max_members, max_bytes=max_bytes)
            staged.commit()
        return written

    return await asyncio.to_thread(stage_and_commit)


async def spool(body: AsyncIterator[bytes], limit: int) -> BinaryIO:
    """A request body in an anonymous temporary file (rewound), for readers that need to
    seek (zip). More than `limit` bytes is 413."""
    spooled: BinaryIO = await asyncio.to_thread(tempfile.TemporaryFile)
    try:
        size = 0
        async with aiofiles.open(spooled.fileno(), "wb", closefd=False) as out:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the body is larger than {limit} bytes")
                await out.write(chunk)
        spooled.seek(0)
    except BaseException:
        spooled.close()
        raise
    return spooled
