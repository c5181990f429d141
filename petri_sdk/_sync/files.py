# Generated from petri_sdk/_async/files.py by scripts/gen_sync_sdk.py: do not edit.
"""`sb.files`: the sandbox's workspace (/sandbox). Paths are relative to it; `/sandbox/a.py`
and `./a.py` mean `a.py`."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from .._base import DEFAULT_EXCLUDE, clean, to_bytes, workspace_path, zip_folder
from ..errors import FileNotFound
from ..records import FileInfo
from . import _io

if TYPE_CHECKING:
    from .sandbox import Sandbox


class Files:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _url(self, path: str) -> str:
        return f"{self._sandbox.path}/files/{workspace_path(path)}"

    def write(self, path: str, data: str | bytes | IO[bytes]) -> FileInfo:
        """Write one file (its folders are made); text is written as UTF-8."""
        if isinstance(data, str | bytes | bytearray | memoryview):
            content = to_bytes(data)
            answer = self._sandbox.client.json("PUT", self._url(path), content=content)
        else:
            answer = self._sandbox.client.json("PUT", self._url(path), content=_io.body(data))
        return FileInfo(str(answer.get("path", clean(path))), int(answer.get("size") or 0))

    def read(self, path: str) -> str:
        """A file as text (UTF-8; undecodable bytes become U+FFFD). `read_bytes` for binary."""
        return (self.read_bytes(path)).decode("utf-8", "replace")

    def read_bytes(self, path: str) -> bytes:
        response = self._sandbox.client.request("GET", self._url(path), not_found=FileNotFound)
        return response.content

    def list(self, path: str = "") -> builtins.list[FileInfo]:
        """Every file under `path` (the whole workspace by default), recursively."""
        answer = self._sandbox.client.json("GET", f"{self._sandbox.path}/files")
        prefix = clean(path).strip("/")
        files = [FileInfo.from_json(f) for f in answer.get("files", [])]
        if not prefix:
            return files
        return [f for f in files if f.path == prefix or f.path.startswith(prefix + "/")]

    def exists(self, path: str) -> bool:
        target = clean(path).strip("/")
        return any(f.path == target or f.path.startswith(target + "/") for f in self.list(target))

    def remove(self, path: str) -> None:
        """Remove a file, or a folder with everything in it."""
        self._sandbox.client.request("DELETE", self._url(path), not_found=FileNotFound)

    def upload_dir(
        self,
        folder: str | os.PathLike[str],
        dest: str = "",
        *,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
    ) -> builtins.list[str]:
        """Upload a local folder (zipped on the fly, one request) into `dest` of the
        workspace, folders kept. Skipped: names in `exclude` (by default .git, caches,
        virtualenvs, node_modules) and symlinks. Returns the paths written."""
        archive, _ = _io.to_thread(zip_folder, folder, dest, exclude)
        try:
            answer = self._sandbox.client.json(
                "POST",
                f"{self._sandbox.path}/upload",
                content=_io.body(archive),
                headers={"Content-Type": "application/zip"},
            )
        finally:
            archive.close()
        return [str(p) for p in answer.get("files", [])]
