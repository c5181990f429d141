"""Runtime descriptions: one `runtimes/<lang>/runtime.toml` (data only) per language."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

FILE_PLACEHOLDER = "{file}"
IMAGE_TAG = "latest"

_STR_KEYS = ("name", "image", "source_file", "smoke", "smoke_expect")
_ARGV_KEYS = ("run", "test", "manifests")
_KNOWN_KEYS = frozenset((*_STR_KEYS, *_ARGV_KEYS, "env"))


@dataclass(frozen=True)
class Runtime:
    """One language runtime: its image, how to run a file, how to test, where its smoke is."""

    name: str
    image: str
    source_file: str
    run: tuple[str, ...]
    test: tuple[str, ...]
    manifests: tuple[str, ...]
    smoke: str
    smoke_expect: str
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    folder: Path = Path()

    def run_argv(self, file: str) -> list[str]:
        """The argv that runs `file` (a path relative to /sandbox)."""
        return [arg.replace(FILE_PLACEHOLDER, file) for arg in self.run]

    @property
    def smoke_path(self) -> Path:
        """The smoke program on the host."""
        return self.folder / self.smoke


def load_runtimes(folder: Path) -> dict[str, Runtime]:
    """Read every `<folder>/*/runtime.toml`, keyed by runtime name; ValueError on bad data."""
    if not folder.is_dir():
        raise ValueError(f"runtimes folder {folder} does not exist")
    runtimes: dict[str, Runtime] = {}
    for path in sorted(folder.glob("*/runtime.toml")):
        runtime = load_runtime(path)
        runtimes[runtime.name] = runtime
    if not runtimes:
        raise ValueError(f"no runtimes found: {folder} has no */runtime.toml")
    return runtimes


def load_runtime(path: Path) -> Runtime:
    """Read and validate one runtime.toml."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    return _parse(path, data)


def _parse(path: Path, data: dict[str, Any]) -> Runtime:
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s): {', '.join(unknown)}")
    strs = {key: _string(path, data, key) for key in _STR_KEYS}
    lists = {key: _strings(path, data, key) for key in _ARGV_KEYS}
    env = _env(path, data.get("env", {}))
    folder = path.parent
    if strs["name"] != folder.name:
        raise ValueError(
            f"{path}: name {strs['name']!r} must match its folder name {folder.name!r}"
        )
    if ":" in strs["image"] or "@" in strs["image"]:
        raise ValueError(f"{path}: image {strs['image']!r} must be a repository without a tag")
    if not any(FILE_PLACEHOLDER in arg for arg in lists["run"]):
        raise ValueError(f"{path}: run must contain the placeholder {FILE_PLACEHOLDER!r}")
    for key in ("source_file", "smoke"):
        rel = Path(strs[key])
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{path}: {key} must be a relative path inside the folder")
    if not (folder / strs["smoke"]).is_file():
        raise ValueError(f"{path}: smoke program {strs['smoke']!r} does not exist")
    return Runtime(
        name=strs["name"],
        image=f"{strs['image']}:{IMAGE_TAG}",
        source_file=strs["source_file"],
        run=lists["run"],
        test=lists["test"],
        manifests=lists["manifests"],
        smoke=strs["smoke"],
        smoke_expect=strs["smoke_expect"],
        env=MappingProxyType(env),
        folder=folder,
    )


def _string(path: Path, data: dict[str, Any], key: str) -> str:
    if key not in data:
        raise ValueError(f"{path}: missing required key {key!r}")
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _strings(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    if key not in data:
        raise ValueError(f"{path}: missing required key {key!r}")
    value = data[key]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise ValueError(f"{path}: {key!r} must be a non-empty list of strings, got {value!r}")
    return tuple(value)


def _env(path: Path, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: [env] must be a table, got {value!r}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"{path}: env.{key} must be a string, got {item!r}")
        if not key or "=" in key:
            raise ValueError(f"{path}: env key {key!r} is not a valid variable name")
        env[key] = item
    return env
