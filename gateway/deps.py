"""Per-language dependency plans: manifest first, auto-detect as a fallback.

The plans are data (`[install]` in each runtime.toml). Before an exec, the first plan that
applies is keyed by a hash of its manifest files (or, with no manifest, by the imports a
detector finds); an unchanged key is a cache hit that costs no container. Otherwise the
plan's script runs in a short-lived container of the sandbox's image that writes into the
workspace, with no network but a relay to the allowlisting proxy (`egress`), within the
exec's timeout, and its output is streamed as `install` events, never as program output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import tree
from .errors import PetriError
from .models import Sandbox
from .workspace import Workspace

if TYPE_CHECKING:  # runtimes.py takes its detector and format names from here
    from .runtimes import InstallPlan, InstallSpec, Runtime

log = logging.getLogger("petri.deps")

STATE_DIR = ".deps/.petri"
# Folders no detector looks into: the one list. runtimes/python/petri_deps.py runs in the
# install container and cannot import it, so its SKIP_DIRS restates it as a set literal;
# tests/unit/test_deps_plans.py::test_the_install_container_skips_the_same_folders compares.
SCAN_SKIP = frozenset(
    {".deps", "node_modules", ".git", ".hg", ".svn", ".tox", "__pycache__", "env", "venv"}
    | {".venv", "vendor", "testdata", "lost+found"}
)
SCAN_MAX_FILES = 5000
SCAN_MAX_BYTES = 1024 * 1024
SCAN_MAX_ENTRIES = 300_000  # names looked at, of any kind (an image holds ~262k per 4 GB)
SCAN_MAX_DEPTH = 32
SCAN_SECONDS = 10.0


class InstallSink(Protocol):
    def emit(self, type_: str, data: dict[str, Any]) -> Any: ...


@dataclass(slots=True)
class InstallResult:
    status: str  # installed | cached | skipped | failed
    packages: list[dict[str, str]] = field(default_factory=list)
    log: str = ""
    timed_out: bool = False  # failed: it ran out of time (the exec's, or the install cap)

    def public(self) -> dict[str, Any]:
        return {"status": self.status, "packages": self.packages, "log": self.log}


# --- plans: which one applies, and its cache key ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    """The plan that applies to a workspace now, and its cache key. A detector's plan also
    carries what it found: its cache hit is "nothing new", a subset test."""

    plan: InstallPlan
    key: str
    found: tuple[str, ...] = ()


def choose(spec: InstallSpec, workspace: Workspace) -> Choice | None:
    """The first plan whose `when` files all exist, or whose detector finds something."""
    for plan in spec.plans:
        if plan.when:
            if all(_is_file(workspace, rel) for rel in plan.when):
                return Choice(plan, manifest_key(plan, workspace))
        else:
            found = DETECTORS[plan.detect](workspace.root)
            if found:
                return Choice(plan, detected_key(plan, found), tuple(sorted(found)))
    return None


def manifest_key(plan: InstallPlan, workspace: Workspace) -> str:
    """sha256 over the plan (name and script) and the bytes of its `hash` files."""
    digest = hashlib.sha256(f"{plan.name}\0{plan.run}\0".encode())
    for rel in plan.hash:
        digest.update(f"{rel}\0".encode())
        try:
            handle, size = workspace.read(rel)
        except PetriError:
            digest.update(b"absent\0")
            continue
        with handle:
            digest.update(f"{size}\0".encode())
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()


def detected_key(plan: InstallPlan, found: frozenset[str] | set[str]) -> str:
    text = "\0".join((plan.name, plan.run, *sorted(found)))
    return hashlib.sha256(text.encode()).hexdigest()


def _is_file(workspace: Workspace, rel: str) -> bool:
    try:
        handle, _ = workspace.read(rel)
    except PetriError:
        return False
    handle.close()
    return True


def is_hit(record: Any, choice: Choice) -> bool:
    if not isinstance(record, dict) or record.get("plan") != choice.plan.name:
        return False
    if choice.plan.detect:
        return set(choice.found) <= set(record.get("found", ()))
    return bool(record.get("key") == choice.key)


# --- detectors: a cheap, bounded look at the sources on the gateway --------------------------
# They only decide whether the install container must run; the container's own tools (e.g.
# petri_deps.py with pipreqs' table) decide what to install. No untrusted code is parsed here.


def python_import_names(text: str) -> set[str]:
    """Top-level names of `import a.b, c as d` and `from e.f import g` statements."""
    names: set[str] = set()
    for line in text.splitlines():
        for statement in line.split(";"):
            words = statement.split()
            if len(words) >= 2 and words[0] == "import":
                for part in " ".join(words[1:]).partition("#")[0].split(","):
                    head = part.split()
                    if head:
                        names.add(head[0].partition(".")[0])
            elif len(words) >= 4 and words[0] == "from" and words[2] == "import":
                names.add(words[1].partition(".")[0])  # relative: "", dropped below
    return {name for name in names if name.isidentifier()}


_GO_SINGLE = re.compile(r'^\s*import\s+(?:[\w.]+\s+)?"([^"\n]+)"', re.M)
_GO_BLOCK = re.compile(r"^\s*import\s*\(([^)]*)\)", re.M)
_GO_PATH = re.compile(r'^\s*(?:[\w.]+\s+)?"([^"\n]+)"', re.M)


def go_import_paths(text: str) -> set[str]:
    """Import paths outside the standard library (their first element holds a dot)."""
    paths = set(_GO_SINGLE.findall(text))
    for block in _GO_BLOCK.findall(text):
        paths.update(_GO_PATH.findall(block))
    return {p for p in paths if "." in p.split("/")[0]}


def python_imports(root: Path) -> frozenset[str]:
    """Imports that are neither standard library nor the project's own modules."""
    local: set[str] = set()
    found: set[str] = set()
    for data in _sources(root, ".py", local):
        found |= python_import_names(data.decode("utf-8", "replace"))
    return frozenset(found - local - set(sys.stdlib_module_names))


def go_imports(root: Path) -> frozenset[str]:
    found: set[str] = set()
    for data in _sources(root, ".go", set()):
        found |= go_import_paths(data.decode("utf-8", "replace"))
    return frozenset(found)


# The one list of `[[install.plans]] detect` names (runtimes.py checks runtime.toml with it).
DETECTORS: dict[str, Callable[[Path], frozenset[str]]] = {
    "python-imports": python_imports,
    "go-imports": go_imports,
}


# --- test-runner detectors: which `[[test.runners]]` applies (testmode.py) -------------------

PACKAGE_JSON_BYTES = 1024 * 1024
NPM_PLACEHOLDER = 'echo "Error: no test specified" && exit 1'  # what `npm init` writes
SUREFIRE = ".deps/m2/org/apache/maven/plugins/maven-surefire-plugin"


def npm_test_script(workspace: Workspace) -> bool:
    """package.json (at most 1 MiB) has a `scripts.test` that is not npm init's placeholder."""
    try:
        handle, size = workspace.read("package.json")
    except PetriError:
        return False
    with handle:
        if size > PACKAGE_JSON_BYTES:
            return False
        raw = handle.read(PACKAGE_JSON_BYTES + 1)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    scripts = data.get("scripts") if isinstance(data, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return isinstance(test, str) and bool(test.strip()) and test.strip() != NPM_PLACEHOLDER


def maven_surefire(workspace: Workspace) -> bool:
    """pom.xml, and Surefire in the workspace's Maven repository (an online install put it
    there): `mvn -o test` can run. Without it Maven cannot even resolve its test plugin."""
    try:
        workspace.read("pom.xml")[0].close()
    except PetriError:
        return False
    return workspace.is_dir(SUREFIRE)


# The one list of `[[test.runners]] detect` names.
TEST_DETECTORS: dict[str, Callable[[Workspace], bool]] = {
    "npm-test-script": npm_test_script,
    "maven-surefire": maven_surefire,
}


def _sources(root: Path, suffix: str, names: set[str]) -> Iterator[bytes]:
    """The first bytes of each `suffix` file under `root`, walked by directory fd without
    following symlinks (the sandbox controls the tree) and within bounds (`SCAN_*`: files,
    entries, depth, time); collects module and folder names. A cut walk is logged."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        top = os.open(root, tree.DIR_FLAGS)
    except OSError:
        return
    count = 0
    try:
        walk = tree.Walk(
            top,
            SCAN_MAX_DEPTH,
            SCAN_MAX_ENTRIES,
            skip=lambda entry: entry.name in SCAN_SKIP,
            deadline=time.monotonic() + SCAN_SECONDS,
        )
        for entry in walk:
            if stat.S_ISDIR(entry.stat.st_mode):
                if entry.name not in SCAN_SKIP:
                    names.add(entry.name)
                continue
            if not entry.name.endswith(suffix) or not stat.S_ISREG(entry.stat.st_mode):
                continue
            names.add(entry.name[: -len(suffix)])
            if count >= SCAN_MAX_FILES:
                walk.cut = f"more than {SCAN_MAX_FILES} {suffix} files"
                break
            count += 1
            try:
                fd = os.open(entry.name, flags, dir_fd=entry.dir_fd)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    yield f.read(SCAN_MAX_BYTES)
        if walk.cut:
            log.info("import scan of %s stopped early: %s", root.name, walk.cut)
    finally:
        os.close(top)


# --- bill of materials and the missing-module hint -------------------------------------------


def _pip_json(text: str) -> list[tuple[str, str]]:
    return [(str(p["name"]), str(p["version"])) for p in json.loads(text)]


def _npm_json(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    stack = [json.loads(text).get("dependencies") or {}]
    while stack:
        for name, info in stack.pop().items():
            if isinstance(info, dict) and "version" in info:
                pairs.append((name, str(info["version"])))
                stack.append(info.get("dependencies") or {})
    return pairs


def _go_list(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[1].startswith("=>"):
            pairs.append((parts[0], parts[1]))
    return pairs


def _maven_list(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        coords = line.strip().split(" ")[0].split(":")
        if len(coords) in (5, 6) and all(coords):
            pairs.append((f"{coords[0]}:{coords[1]}", coords[-2]))
    return pairs


# The one list of `[install] bom_format` names: each reads a `bom` command's output.
BOM_FORMATS: dict[str, Callable[[str], list[tuple[str, str]]]] = {
    "pip-json": _pip_json,
    "npm-json": _npm_json,
    "go-list": _go_list,
    "maven-list": _maven_list,
}


def parse_packages(fmt: str, text: str, language: str) -> list[dict[str, str]]:
    """The bill of materials written by a plan's `bom` command, as name/version/language."""
    pairs: list[tuple[str, str]] = []
    parse = BOM_FORMATS.get(fmt)
    try:
        pairs = parse(text) if parse is not None else []
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        log.warning("cannot read the %s package list: %s", fmt, exc)
    unique = sorted({(n[:200], v[:100]) for n, v in pairs})[:10000]
    return [{"name": n, "version": v, "language": language} for n, v in unique]


def missing_modules(runtime: Runtime, stderr: str) -> list[str]:
    """Top-level modules a failed program could not import (`ModuleNotFoundError: No module
    named 'x'`, Node's `Cannot find module 'x'`), by the runtime's `missing_module` regex."""
    pattern = runtime.install.missing_module if runtime.install else ""
    if not pattern:
        return []
    return list(dict.fromkeys(m for m in re.findall(pattern, stderr) if m))[:20]


class Installer:
    """Prepares a sandbox's dependencies before an exec. This base installs nothing."""

    async def start(self) -> None:
        """Called once when the gateway starts."""

    async def close(self) -> None:
        """Called once when the gateway stops."""

    async def prepare(
        self, sandbox: Sandbox, runtime: Runtime, sink: InstallSink, deadline: float | None = None
    ) -> InstallResult:
        """Install what the sandbox needs; end by `deadline` (event-loop time) if given.
        Cancelling it stops the install at once (nothing of it keeps running)."""
        return InstallResult("skipped")

    def exec_env(self, sandbox: Sandbox, runtime: Runtime) -> dict[str, str]:
        """Environment every exec of the sandbox needs to see installed dependencies."""
        return {}

    def packages(self, sandbox: Sandbox) -> dict[str, Any]:
        """The bill of materials of the sandbox's last install."""
        return {"packages": [], "manifest_hash": None}

    async def discard(self, sandbox: Sandbox) -> None:
        """The sandbox is being deleted: stop an install that is running for it."""
