"""Dependency plans as pure logic: plan selection from the repository's runtime.toml files,
cache keys, the gateway-side import detectors, bill-of-materials parsing, the missing-module
hint, the install log, and runtime.toml validation of `[install]`. No Docker."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import installer
from gateway.deps import (
    SCAN_SKIP,
    Choice,
    choose,
    go_import_paths,
    is_hit,
    missing_modules,
    parse_packages,
    python_import_names,
    python_imports,
)
from gateway.installer import InstallLog
from gateway.runtimes import Runtime, load_runtimes
from gateway.workspace import Workspace

RUNTIMES = load_runtimes(Path(__file__).resolve().parents[2] / "runtimes")


def ws(tmp_path: Path, files: dict[str, str]) -> Workspace:
    for rel, content in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return Workspace(tmp_path, os.getuid(), os.getgid())


def plan_of(language: str, tmp_path: Path, files: dict[str, str]) -> Choice | None:
    spec = RUNTIMES[language].install
    assert spec is not None
    return choose(spec, ws(tmp_path, files))


# --- which plan applies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "files", "plan"),
    [
        ("python", {"pyproject.toml": "", "requirements.txt": "x"}, "pyproject"),
        ("python", {"requirements.txt": "six"}, "requirements"),
        ("python", {"main.py": "import six\n"}, "imports"),
        ("python", {"main.py": "import os, json\n"}, None),
        ("python", {}, None),
        ("node", {"package.json": "{}", "package-lock.json": "{}"}, "npm-ci"),
        ("node", {"package.json": "{}"}, "npm-install"),
        ("node", {"main.js": "require('left-pad')"}, None),
        ("go", {"go.mod": "module x\n"}, "go-mod"),
        ("go", {"main.go": 'package main\nimport "github.com/a/b"\n'}, "go-imports"),
        ("go", {"main.go": 'package main\nimport "fmt"\n'}, None),
        ("java", {"pom.xml": "<project/>"}, "maven"),
        ("java", {"build.gradle": ""}, "gradle"),
        ("java", {"Main.java": "class Main {}"}, None),
    ],
)
def test_plan_selection(
    tmp_path: Path, language: str, files: dict[str, str], plan: str | None
) -> None:
    choice = plan_of(language, tmp_path, files)
    assert (choice.plan.name if choice else None) == plan


def test_gradle_plan_is_a_reasoned_skip(tmp_path: Path) -> None:
    choice = plan_of("java", tmp_path, {"build.gradle": ""})
    assert choice is not None and choice.plan.skip and not choice.plan.run
    assert "no Gradle" in choice.plan.skip


def test_a_manifest_that_is_a_directory_or_symlink_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").mkdir()
    (tmp_path / "pyproject.toml").symlink_to("/etc/hostname")
    assert plan_of("python", tmp_path, {}) is None


# --- cache keys -------------------------------------------------------------------------------


def test_manifest_key_follows_content_and_lock_file(tmp_path: Path) -> None:
    a = plan_of("node", tmp_path / "a", {"package.json": '{"a":1}', "package-lock.json": "1"})
    b = plan_of("node", tmp_path / "b", {"package.json": '{"a":1}', "package-lock.json": "1"})
    c = plan_of("node", tmp_path / "c", {"package.json": '{"a":1}', "package-lock.json": "2"})
    d = plan_of("node", tmp_path / "d", {"package.json": '{"a":2}', "package-lock.json": "1"})
    assert a and b and c and d
    assert a.key == b.key and len(a.key) == 64
    assert len({a.key, c.key, d.key}) == 3


def test_go_key_covers_go_sum_even_when_it_appears_later(tmp_path: Path) -> None:
    before = plan_of("go", tmp_path, {"go.mod": "module x\n"})
    after = plan_of("go", tmp_path, {"go.sum": "h1:abc\n"})
    assert before and after and before.plan == after.plan and before.key != after.key


def test_plans_key_differs_for_the_same_bytes(tmp_path: Path) -> None:
    pyproject = plan_of("python", tmp_path / "a", {"pyproject.toml": "x"})
    requirements = plan_of("python", tmp_path / "b", {"requirements.txt": "x"})
    assert pyproject and requirements and pyproject.key != requirements.key


def test_cache_hit_rules(tmp_path: Path) -> None:
    manifest = plan_of("python", tmp_path / "m", {"requirements.txt": "six"})
    assert manifest is not None
    record = {"plan": "requirements", "key": manifest.key, "found": [], "packages": []}
    assert is_hit(record, manifest)
    assert not is_hit({**record, "key": "0" * 64}, manifest)
    assert not is_hit({**record, "plan": "pyproject"}, manifest)
    assert not is_hit(None, manifest)
    detected = plan_of("python", tmp_path / "d", {"a.py": "import six\nimport yaml\n"})
    assert detected is not None and detected.found == ("six", "yaml")
    auto = {"plan": "imports", "key": "k", "found": ["requests", "six", "yaml"], "packages": []}
    assert is_hit(auto, detected), "a detector's hit is 'nothing new was imported'"
    assert not is_hit({**auto, "found": ["six"]}, detected)


# --- gateway-side detectors -------------------------------------------------------------------


def test_python_import_names() -> None:
    source = """
import os, sys as system, numpy.linalg
from pandas.io import json
from . import sibling
from .pkg import thing
import a; import b  # two statements
    import indented  # inside a function
from x import (y,
    z)
print("import not_this")  # a string is not an import
'''from docstring is prose'''
"""
    assert python_import_names(source) == {
        "os",
        "sys",
        "numpy",
        "pandas",
        "a",
        "b",
        "indented",
        "x",
    }


def test_python_imports_drop_stdlib_local_modules_and_skipped_folders(tmp_path: Path) -> None:
    files = {
        "main.py": "import os\nimport helper\nimport pkg.mod\nimport six\nfrom yaml import load\n",
        "helper.py": "import requests\n",
        "pkg/mod.py": "",
        ".deps/python/lib/x.py": "import never_seen\n",
        "node_modules/y.py": "import never_seen_either\n",
        ".petri/code/ex-1/main.py": "import inline_code\n",
        "notes.txt": "import not_python\n",
    }
    ws(tmp_path, files)
    assert python_imports(tmp_path) == {"six", "yaml", "requests", "inline_code"}


def test_python_imports_never_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("import leaked\n")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "link.py").symlink_to(outside / "secret.py")
    (root / "dirlink").symlink_to(outside)
    os.mkfifo(root / "fifo.py")  # must not block the gateway
    (root / "main.py").write_text("import fine\n")
    assert python_imports(root) == {"fine"}


def test_go_import_paths() -> None:
    source = """package main

import "fmt"
import alias "github.com/a/b"
import (
    "net/http"
    _ "example.com/driver"
    . "gopkg.in/yaml.v3"
    // "commented.out/x" stays out: not at the start of a line
)
"""
    assert go_import_paths(source) == {"github.com/a/b", "example.com/driver", "gopkg.in/yaml.v3"}


# --- bill of materials ------------------------------------------------------------------------


def test_parse_pip_json() -> None:
    text = json.dumps([{"name": "six", "version": "1.16.0"}, {"name": "PyYAML", "version": "6"}])
    assert parse_packages("pip-json", text, "python") == [
        {"name": "PyYAML", "version": "6", "language": "python"},
        {"name": "six", "version": "1.16.0", "language": "python"},
    ]


def test_parse_npm_json_walks_the_tree_and_dedupes() -> None:
    tree = {
        "name": "app",
        "dependencies": {
            "a": {"version": "1.0.0", "dependencies": {"b": {"version": "2.0.0"}}},
            "b": {"version": "2.0.0"},
            "missing": {"required": "^1", "missing": True},
        },
    }
    assert parse_packages("npm-json", json.dumps(tree), "node") == [
        {"name": "a", "version": "1.0.0", "language": "node"},
        {"name": "b", "version": "2.0.0", "language": "node"},
    ]


def test_parse_go_list_skips_the_main_module() -> None:
    text = "sandbox\ngithub.com/a/b v1.2.3\ngolang.org/x/text v0.3.0 => ./text\n"
    assert parse_packages("go-list", text, "go") == [
        {"name": "github.com/a/b", "version": "v1.2.3", "language": "go"},
        {"name": "golang.org/x/text", "version": "v0.3.0", "language": "go"},
    ]


def test_parse_maven_list() -> None:
    text = """
The following files have been resolved:
   com.google.guava:guava:jar:32.1.2-jre:compile -- module com.google.common
   org.junit:junit-bom:pom:tests:5.9.0:test
   none
"""
    assert parse_packages("maven-list", text, "java") == [
        {"name": "com.google.guava:guava", "version": "32.1.2-jre", "language": "java"},
        {"name": "org.junit:junit-bom", "version": "5.9.0", "language": "java"},
    ]


@pytest.mark.parametrize("fmt", ["pip-json", "npm-json"])
def test_a_broken_package_list_is_empty_not_an_error(fmt: str) -> None:
    assert parse_packages(fmt, "{not json", "x") == []
    assert parse_packages(fmt, "[" * 100000, "x") == []


# --- the missing-module hint ------------------------------------------------------------------

PY_TRACE = """Traceback (most recent call last):
  File "/sandbox/main.py", line 1, in <module>
    import numpy.linalg
ModuleNotFoundError: No module named 'numpy'
"""
NODE_TRACE = """node:internal/modules/cjs/loader:1080
  throw err;
Error: Cannot find module 'lodash/fp'
Require stack:
- /sandbox/main.js
Error: Cannot find module './local'
Error: Cannot find module '@scope/pkg'
Error [ERR_MODULE_NOT_FOUND]: Cannot find package 'chalk' imported from /sandbox/a.mjs
Error: Cannot find module '/abs/path'
"""


def test_missing_modules_python_and_node() -> None:
    assert missing_modules(RUNTIMES["python"], PY_TRACE) == ["numpy"]
    nested = "ModuleNotFoundError: No module named 'google.protobuf'"
    assert missing_modules(RUNTIMES["python"], nested) == ["google"]
    assert missing_modules(RUNTIMES["python"], "ValueError: nope\n") == []
    assert missing_modules(RUNTIMES["node"], NODE_TRACE) == ["lodash", "@scope/pkg", "chalk"]
    twice = PY_TRACE + PY_TRACE
    assert missing_modules(RUNTIMES["python"], twice) == ["numpy"]


def test_missing_modules_go_and_runtimes_without_a_pattern() -> None:
    go = "main.go:3:8: no required module provides package github.com/a/b; to add it:"
    assert missing_modules(RUNTIMES["go"], go) == ["github.com/a/b"]
    assert missing_modules(RUNTIMES["java"], PY_TRACE) == []
    bare = Runtime("x", "x", "x", ("x",), ("x",), ("x",), "x", "x")
    assert missing_modules(bare, PY_TRACE) == []


# --- install log ------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        self.events.append((type_, data))


def test_install_log_decodes_each_stream_incrementally() -> None:
    sink = Sink()
    out = InstallLog(sink)
    snowman = "☃".encode()
    out.feed(1, b"a" + snowman[:1])
    out.feed(2, b"err ")
    out.feed(1, snowman[1:] + b"\n")
    out.finish()
    assert all(t == "install" for t, _ in sink.events)
    assert "".join(d["text"] for _, d in sink.events) == "aerr ☃\n"
    assert out.tail() == "aerr ☃\n"


def test_install_log_is_bounded_and_keeps_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installer, "EMIT_BYTES", 100)
    monkeypatch.setattr(installer, "TAIL_BYTES", 50)
    sink = Sink()
    out = InstallLog(sink)
    for i in range(1000):
        out.feed(1, f"line {i}\n".encode())
    out.finish("done\n")
    sent = "".join(d["text"] for _, d in sink.events)
    assert sent.startswith("line 0\n") and sent.endswith("line 999\ndone\n")
    assert "line 500\n" not in sent and "install output cut" in sent
    assert len(out.tail()) <= 50 and out.tail().endswith("line 999\ndone\n")


# --- the install helper that runs inside the python image ---------------------------------


def helper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run petri_deps.py as an install container would: staged with pipreqs beside it (as
    the gateway stages them) and without site-packages (`-S`), so neither the host's
    installed packages nor its requests/yarg/docopt are visible."""
    spec = RUNTIMES["python"].install
    assert spec is not None
    tools = tmp_path / "tools"
    for name, data in installer._tools(RUNTIMES["python"].folder, spec.tools, spec.tool_packages):
        (tools / name).parent.mkdir(parents=True, exist_ok=True)
        (tools / name).write_bytes(data)
    return subprocess.run(
        [sys.executable, "-S", str(tools / "petri_deps.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    )


def test_helper_reads_pyproject_and_poetry(tmp_path: Path) -> None:
    pep621 = tmp_path / "a.toml"
    pep621.write_text('[project]\nname = "x"\ndependencies = ["six>=1", "PyYAML"]\n')
    assert helper(tmp_path, "pyproject", str(pep621)).stdout.split() == ["six>=1", "PyYAML"]
    poetry = tmp_path / "b.toml"
    poetry.write_text(
        '[tool.poetry.dependencies]\npython = "^3.11"\nrequests = "^2.31"\nsix = "*"\n'
        'attrs = "1.2"\nlocal = { path = "../x" }\n'
    )
    out = helper(tmp_path, "pyproject", str(poetry))
    assert out.stdout.split() == ["requests>=2.31,<3", "six", "attrs==1.2"]
    assert "skipped local" in out.stderr


def test_helper_detects_and_maps_imports(tmp_path: Path) -> None:
    project = tmp_path / "p"
    ws(project, {"main.py": "import cv2x\nimport yaml\nimport sklearn\nimport os\nimport mine\n"})
    ws(project, {"mine.py": "", "bad.py": "def (:\n"})
    out = helper(tmp_path, "detect", str(project))
    # pipreqs' table: yaml is PyYAML and sklearn is scikit_learn; unknown names stay as is.
    assert out.stdout.split() == ["cv2x", "PyYAML", "scikit_learn"]
    assert "not scanned (does not parse): bad.py" in out.stderr


# --- runtime.toml `[install]` validation ------------------------------------------------------

BASE = """\
name = "demo"
image = "petri-demo"
source_file = "main.demo"
run = ["demo", "{file}"]
manifests = ["demo.lock"]
smoke = "smoke.demo"
smoke_expect = "ok"
"""
GOOD_INSTALL = """
[install]
bom = "demo list > $PETRI_PACKAGES"
bom_format = "pip-json"
missing_module = "missing '([^']+)'"
tools = ["helper.sh"]

[install.env]
DEMO_PATH = "/sandbox/.deps/demo"

[[install.plans]]
name = "lock"
when = ["demo.lock"]
run = "demo install --locked"

[[install.plans]]
name = "auto"
detect = "python-imports"
run = "demo install"
"""


def load_demo(tmp_path: Path, install: str) -> Runtime:
    folder = tmp_path / "demo"
    folder.mkdir(exist_ok=True)
    (folder / "smoke.demo").write_text("ok")
    (folder / "helper.sh").write_text("true")
    (folder / "runtime.toml").write_text(BASE + install)
    return load_runtimes(tmp_path)["demo"]


def test_install_table_loads(tmp_path: Path) -> None:
    spec = load_demo(tmp_path, GOOD_INSTALL).install
    assert spec is not None
    assert [p.name for p in spec.plans] == ["lock", "auto"]
    assert spec.plans[0].hash == ("demo.lock",), "hash defaults to the `when` files"
    assert dict(spec.env) == {"DEMO_PATH": "/sandbox/.deps/demo"}
    assert load_demo(tmp_path, "").install is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name = "auto"', 'name = "lock"'), "unique"),
        (('detect = "python-imports"', 'detect = "crystal-ball"'), "detect must be one of"),
        (('detect = "python-imports"', 'when = ["x"]\ndetect = "python-imports"'), "exactly one"),
        (('run = "demo install"', 'skip = "no"\nrun = "demo install"'), "exactly one of `run`"),
        (('when = ["demo.lock"]', 'when = ["../etc/passwd"]'), "inside the workspace"),
        (('bom_format = "pip-json"', 'bom_format = "csv"'), "bom_format must be one of"),
        (('bom_format = "pip-json"\n', ""), "go together"),
        (("missing '([^']+)'", "missing (a)(b)"), "exactly one group"),
        (("missing '([^']+)'", "missing ("), "not a regex"),
        (('tools = ["helper.sh"]', 'tools = ["nope.sh"]'), "not a file"),
        (("[install]\n", "[install]\nsurprise = 1\n"), "unknown [install] key"),
        (('run = "demo install"', 'run = "demo install"\nretries = 3'), "unknown key"),
    ],
)
def test_bad_install_tables_are_refused(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD_INSTALL
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_demo(tmp_path, GOOD_INSTALL.replace(old, new, 1))


def test_the_install_container_skips_the_same_folders() -> None:
    """The gateway's import scan (deps.SCAN_SKIP) and the install container's
    (runtimes/python/petri_deps.py SKIP_DIRS, which cannot import the gateway) skip the same
    folders: else the gateway keys a cache on imports the container never installs, or the
    container installs imports of a vendored tree the gateway ignored."""
    source = (Path(__file__).resolve().parents[2] / "runtimes/python/petri_deps.py").read_text()
    found = [
        node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "SKIP_DIRS" for t in node.targets)
    ]
    assert len(found) == 1, "petri_deps.py must assign SKIP_DIRS once, as a set literal"
    skip = ast.literal_eval(found[0])
    assert set(skip) == set(SCAN_SKIP), (
        f"missing in petri_deps.py: {sorted(set(SCAN_SKIP) - set(skip))}, "
        f"extra there: {sorted(set(skip) - set(SCAN_SKIP))}"
    )
