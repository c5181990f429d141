"""Runtime descriptions: one `runtimes/<lang>/runtime.toml` (data only) per language."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# Detector and format names have one home, the code that implements them.
from .deps import BOM_FORMATS, DETECTORS, TEST_DETECTORS

FILE_PLACEHOLDER = "{file}"
IMAGE_TAG = "latest"

_STR_KEYS = ("name", "image", "source_file", "smoke", "smoke_expect")
_ARGV_KEYS = ("run", "manifests")
_KNOWN_KEYS = frozenset((*_STR_KEYS, *_ARGV_KEYS, "env", "install", "test"))
# `[install]`: how dependencies are installed (gateway/deps.py runs the plans).
_INSTALL_KEYS = frozenset(
    {"env", "plans", "bom", "bom_format", "tools", "tool_packages", "missing_module"}
)
_PLAN_KEYS = frozenset({"name", "when", "detect", "hash", "run", "skip"})
# `[test]`: test mode's runners (gateway/testmode.py picks one, gateway/reports.py reads it).
REPORT_FORMATS = frozenset({"junit", "go-json"})
_TEST_KEYS = frozenset({"paths", "runners"})
_RUNNER_KEYS = frozenset({"name", "detect", "run", "report"})


@dataclass(frozen=True)
class InstallPlan:
    """One way to install: selected when every `when` file exists (or, with `detect`, when
    that detector finds imports); `run` is a shell script for the install container, or
    `skip` says why this image cannot install this kind of project."""

    name: str
    when: tuple[str, ...] = ()
    detect: str = ""
    hash: tuple[str, ...] = ()
    run: str = ""
    skip: str = ""


@dataclass(frozen=True)
class InstallSpec:
    """`[install]` of a runtime.toml: plans in order of preference, the environment that
    installs and execs share, the bill-of-materials command and its format, helper files."""

    plans: tuple[InstallPlan, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bom: str = ""
    bom_format: str = ""
    tools: tuple[str, ...] = ()
    tool_packages: tuple[str, ...] = ()
    missing_module: str = ""


@dataclass(frozen=True)
class TestRunner:
    """One way to run a project's tests: chosen when its detector (if any) matches; `run` is
    a bash script (run in /sandbox, `"$@"` = the exec's `filename`, `$PETRI_REPORT_DIR`
    made); `report` says where its results are: JUnit XML files in `$PETRI_REPORT_DIR`
    (`junit`) or `go test -json` on its stdout (`go-json`)."""

    name: str
    run: str
    report: str
    detect: str = ""


@dataclass(frozen=True)
class TestSpec:
    """`[test]` of a runtime.toml: runners in order of preference; `paths` says whether they
    take a file or folder (an exec's `filename`) as their argument."""

    runners: tuple[TestRunner, ...]
    paths: bool = False


@dataclass(frozen=True)
class Runtime:
    """One language runtime: its image, how to run a file, how to test, where its smoke is."""

    name: str
    image: str
    source_file: str
    run: tuple[str, ...]
    manifests: tuple[str, ...]
    smoke: str
    smoke_expect: str
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    folder: Path = Path()
    install: InstallSpec | None = None
    test: TestSpec | None = None

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
        manifests=lists["manifests"],
        smoke=strs["smoke"],
        smoke_expect=strs["smoke_expect"],
        env=MappingProxyType(env),
        folder=folder,
        install=_install(path, data["install"]) if "install" in data else None,
        test=_test(path, data["test"]) if "test" in data else None,
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


def _install(path: Path, value: object) -> InstallSpec:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: [install] must be a table, got {value!r}")
    unknown = sorted(set(value) - _INSTALL_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown [install] key(s): {', '.join(unknown)}")
    plans = value.get("plans", [])
    if not isinstance(plans, list) or not all(isinstance(p, dict) for p in plans):
        raise ValueError(f"{path}: install.plans must be an array of tables ([[install.plans]])")
    parsed = tuple(_plan(path, i, p) for i, p in enumerate(plans))
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: install plan names must be unique, got {names}")
    texts = {k: value.get(k, "") for k in ("bom", "bom_format", "missing_module")}
    for key, text in texts.items():
        if not isinstance(text, str):
            raise ValueError(f"{path}: install.{key} must be a string, got {text!r}")
    if texts["bom_format"] and texts["bom_format"] not in BOM_FORMATS:
        known = ", ".join(sorted(BOM_FORMATS))
        raise ValueError(f"{path}: install.bom_format must be one of: {known}")
    if bool(texts["bom"]) != bool(texts["bom_format"]):
        raise ValueError(f"{path}: install.bom and install.bom_format go together")
    if texts["missing_module"]:
        try:
            groups = re.compile(texts["missing_module"]).groups
        except re.error as exc:
            raise ValueError(f"{path}: install.missing_module is not a regex: {exc}") from None
        if groups != 1:
            raise ValueError(f"{path}: install.missing_module needs exactly one group")
    tools = _optional_strings(path, value, "tools")
    for rel in tools:
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not (path.parent / rel).is_file():
            raise ValueError(f"{path}: install tool {rel!r} is not a file inside the folder")
    return InstallSpec(
        plans=parsed,
        env=MappingProxyType(_env(path, value.get("env", {}))),
        bom=texts["bom"],
        bom_format=texts["bom_format"],
        tools=tools,
        tool_packages=_optional_strings(path, value, "tool_packages"),
        missing_module=texts["missing_module"],
    )


def _plan(path: Path, index: int, value: dict[str, Any]) -> InstallPlan:
    where = f"{path}: install.plans[{index}]"
    unknown = sorted(set(value) - _PLAN_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s): {', '.join(unknown)}")
    texts = {k: value.get(k, "") for k in ("name", "detect", "run", "skip")}
    if not all(isinstance(t, str) for t in texts.values()) or not texts["name"]:
        raise ValueError(f"{where}: name, detect, run and skip are strings; name is required")
    when = _optional_strings(path, value, "when")
    hashed = _optional_strings(path, value, "hash")
    if bool(when) == bool(texts["detect"]):
        raise ValueError(f"{where}: give exactly one of `when` (files) or `detect`")
    if texts["detect"] and texts["detect"] not in DETECTORS:
        raise ValueError(f"{where}: detect must be one of: {', '.join(sorted(DETECTORS))}")
    if bool(texts["run"]) == bool(texts["skip"]):
        raise ValueError(f"{where}: give exactly one of `run` (a script) or `skip` (why not)")
    for rel in (*when, *hashed):
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"{where}: {rel!r} must be a path inside the workspace")
    return InstallPlan(
        texts["name"], when, texts["detect"], hashed or when, texts["run"], texts["skip"]
    )


def _optional_strings(path: Path, data: dict[str, Any], key: str) -> tuple[str, ...]:
    return _strings(path, data, key) if key in data else ()


def _test(path: Path, value: object) -> TestSpec:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: test must be a table ([test] with [[test.runners]])")
    unknown = sorted(set(value) - _TEST_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown [test] key(s): {', '.join(unknown)}")
    paths = value.get("paths", False)
    if not isinstance(paths, bool):
        raise ValueError(f"{path}: test.paths must be true or false, got {paths!r}")
    runners = value.get("runners", [])
    if not (isinstance(runners, list) and runners and all(isinstance(r, dict) for r in runners)):
        raise ValueError(f"{path}: test.runners must be a non-empty array of tables")
    parsed: list[TestRunner] = []
    for index, runner in enumerate(runners):
        where = f"{path}: test.runners[{index}]"
        unknown = sorted(set(runner) - _RUNNER_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s): {', '.join(unknown)}")
        texts = {k: runner.get(k, "") for k in ("name", "run", "report", "detect")}
        if not all(isinstance(t, str) for t in texts.values()):
            raise ValueError(f"{where}: name, run, report and detect are strings")
        if not (texts["name"] and texts["run"].strip() and texts["report"]):
            raise ValueError(f"{where}: name, run and report are required")
        if texts["report"] not in REPORT_FORMATS:
            known = ", ".join(sorted(REPORT_FORMATS))
            raise ValueError(f"{where}: report must be one of: {known}")
        if texts["detect"] and texts["detect"] not in TEST_DETECTORS:
            known = ", ".join(sorted(TEST_DETECTORS))
            raise ValueError(f"{where}: detect must be one of: {known}")
        parsed.append(TestRunner(texts["name"], texts["run"], texts["report"], texts["detect"]))
    if parsed[-1].detect:
        raise ValueError(f"{path}: the last test runner must have no detect (the fallback)")
    return TestSpec(tuple(parsed), paths)
