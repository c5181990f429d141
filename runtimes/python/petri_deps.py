"""Petri install helper, run inside the install container (never on the gateway host).

    python3 petri_deps.py pyproject [FILE]   requirements declared in pyproject.toml
    python3 petri_deps.py detect [ROOT]      PyPI packages a project imports but cannot import
    python3 petri_deps.py packages           installed user-site packages, JSON (as pip list)

Prints one requirement a line on stdout; notes go to stderr (the install log).

`detect` parses every .py file with `ast` (a file that does not parse is skipped and named),
keeps top-level imports that are neither standard library, nor the project's own modules,
nor importable already, and maps import names to PyPI names with pipreqs' table
(`cv2` -> `opencv-python`, `yaml` -> `PyYAML`). The gateway copies pipreqs next to this
file; its PyPI lookup and CLI (requests, yarg, docopt) are never called, so they are stubbed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import site
import sys
import tomllib
import types

SKIP_DIRS = {
    ".deps", "node_modules", ".git", ".hg", ".svn", ".tox", "__pycache__", "env", "venv",
    ".venv", "vendor", "testdata", "lost+found",
}
MAX_FILES = 5000
MAX_BYTES = 1024 * 1024


def note(text: str) -> None:
    print(f"petri: {text}", file=sys.stderr)


def pyproject(file: str = "pyproject.toml") -> list[str]:
    with open(file, "rb") as f:
        data = tomllib.load(f)
    project = data.get("project", {})
    if "dependencies" in project:
        note(f"installing [project].dependencies of {file} (not the project itself)")
        return [str(r) for r in project["dependencies"]]
    poetry = data.get("tool", {}).get("poetry", {}).get("dependencies", {})
    if poetry:
        note(f"installing [tool.poetry.dependencies] of {file} (not the project itself)")
        return [r for name, spec in poetry.items() if (r := _poetry(name, spec))]
    note(f"{file} declares no dependencies")
    return []


def _poetry(name: str, spec: object) -> str:
    if name.lower() == "python":
        return ""
    if isinstance(spec, dict):
        if "version" not in spec:
            note(f"skipped {name}: only version requirements are supported ({spec})")
            return ""
        spec = spec["version"]
    version = str(spec).strip()
    if version in ("", "*"):
        return name
    if version[0] == "^":  # ^1.2.3 -> >=1.2.3,<2 ; ^0.2 -> >=0.2,<0.3
        parts = [int(p) if p.isdigit() else 0 for p in version[1:].split(".")]
        first = next((i for i, p in enumerate(parts) if p), len(parts) - 1)
        upper = [*parts[:first], parts[first] + 1]
        return f"{name}>={version[1:]},<{'.'.join(map(str, upper))}"
    if version[0] == "~":
        return f"{name}>={version.lstrip('~=')}"
    return f"{name}=={version}" if version[0].isdigit() else f"{name}{version}"


def imports_of(root: str) -> tuple[set[str], set[str]]:
    """(top-level names imported, names of the project's own modules and folders)."""
    found: set[str] = set()
    local: set[str] = set()
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        local.update(dirs)
        for name in sorted(files):
            if not name.endswith(".py") or count >= MAX_FILES:
                continue
            count += 1
            local.add(name[:-3])
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    tree = ast.parse(f.read(MAX_BYTES))
            except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
                note(f"not scanned (does not parse): {os.path.relpath(path, root)}")
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(a.name.partition(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.partition(".")[0])
    if count >= MAX_FILES:
        note(f"scanned the first {MAX_FILES} .py files only")
    return found, local


def detect(root: str = "/sandbox") -> list[str]:
    found, local = imports_of(root)
    wanted = sorted(
        name
        for name in found - local - set(sys.stdlib_module_names)
        if name.isidentifier() and importlib.util.find_spec(name) is None
    )
    if not wanted:
        note("no imports to install")
        return []
    try:
        packages = _pipreqs().get_pkg_names(wanted)
    except ImportError:  # the gateway had no pipreqs to copy: install the names as they are
        note("pipreqs is not available: import names are used as package names")
        packages = wanted
    note(f"imports {', '.join(wanted)} -> packages {', '.join(packages)}")
    return list(packages)


def packages() -> list[str]:
    """`pip list --user --format=json` without pip's start-up (~0.7 s)."""
    found = importlib.metadata.distributions(path=[site.getusersitepackages()])
    listed = [{"name": d.metadata["Name"], "version": d.version} for d in found]
    return [json.dumps(sorted(listed, key=lambda p: str(p["name"]).lower()))]


def _pipreqs() -> types.ModuleType:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    stubs = {"requests": {}, "docopt": {"docopt": None}, "yarg": {"json2package": None}}
    stubs["yarg.exceptions"] = {"HTTPError": Exception}
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules.setdefault(name, module)
    from pipreqs import pipreqs

    return pipreqs


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["detect"]
    commands = {"pyproject": pyproject, "detect": detect, "packages": packages}
    lines = commands[command](*args)
    print("\n".join(lines))
