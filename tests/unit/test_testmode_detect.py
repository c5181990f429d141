"""Test mode's runner choice (gateway/testmode.py): detectors read the workspace without
following symlinks and never trust what they read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.runtimes import load_runtimes
from gateway.testmode import choose_runner, maven_surefire, npm_test_script
from gateway.workspace import Workspace

RUNTIMES = load_runtimes(Path(__file__).resolve().parents[2] / "runtimes")


def workspace(tmp_path: Path, files: dict[str, str]) -> Workspace:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Workspace(tmp_path, os.getuid(), os.getgid())


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ('{"scripts": {"test": "node --test"}}', "npm test"),
        ('{"scripts": {"test": "jest"}}', "npm test"),
        ('{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}', "node --test"),
        ('{"scripts": {"test": "   "}}', "node --test"),
        ('{"scripts": {"start": "node app.js"}}', "node --test"),
        ('{"scripts": ["test"]}', "node --test"),
        ('{"scripts": {"test": 1}}', "node --test"),
        ("[1, 2]", "node --test"),
        ("{not json", "node --test"),
        ("[" * 100000 + "]" * 100000, "node --test"),  # deep nesting: no RecursionError
        (None, "node --test"),
    ],
)
def test_node_runner(tmp_path: Path, package: str | None, expected: str) -> None:
    files = {"package.json": package} if package is not None else {}
    assert choose_runner(RUNTIMES["node"], workspace(tmp_path, files)).name == expected


def test_package_json_through_a_symlink_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"scripts": {"test": "x"}}')
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "package.json").symlink_to(outside)
    assert not npm_test_script(Workspace(tmp_path / "ws", os.getuid(), os.getgid()))


def test_huge_package_json_is_not_parsed(tmp_path: Path) -> None:
    big = '{"scripts": {"test": "x"}, "pad": "' + "a" * (2 * 1024 * 1024) + '"}'
    assert not npm_test_script(workspace(tmp_path, {"package.json": big}))


def test_java_runner(tmp_path: Path) -> None:
    ws = workspace(tmp_path, {"pom.xml": "<project/>"})
    assert choose_runner(RUNTIMES["java"], ws).name == "junit"  # Maven cannot run offline
    plugin = tmp_path / ".deps/m2/org/apache/maven/plugins/maven-surefire-plugin/3.2.5"
    plugin.mkdir(parents=True)
    assert maven_surefire(ws) and choose_runner(RUNTIMES["java"], ws).name == "maven"
    (tmp_path / "pom.xml").unlink()
    assert choose_runner(RUNTIMES["java"], ws).name == "junit"


def test_surefire_through_a_symlink_does_not_count(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere/maven-surefire-plugin"
    real.mkdir(parents=True)
    (tmp_path / "ws/.deps/m2/org/apache/maven/plugins").mkdir(parents=True)
    (tmp_path / "ws/.deps/m2/org/apache/maven/plugins/maven-surefire-plugin").symlink_to(real)
    (tmp_path / "ws/pom.xml").write_text("<project/>")
    assert not maven_surefire(Workspace(tmp_path / "ws", os.getuid(), os.getgid()))
