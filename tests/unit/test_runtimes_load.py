"""load_runtimes validation and content_hash stability (pure logic, no Docker)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.images import content_hash
from gateway.runtimes import Runtime, load_runtimes

REPO_RUNTIMES = Path(__file__).resolve().parents[2] / "runtimes"

GOOD = """\
name = "demo"
image = "petri-demo"
source_file = "main.demo"
run = ["demo", "--flag", "{file}"]
manifests = ["demo.lock"]
smoke = "smoke/main.demo"
smoke_expect = "petri smoke ok"

[env]
DEMO_UNBUFFERED = "1"
"""


def make_runtime(root: Path, toml: str = GOOD, name: str = "demo") -> Path:
    folder = root / name
    (folder / "smoke").mkdir(parents=True)
    (folder / "smoke" / "main.demo").write_text("print petri smoke ok\n")
    (folder / "Dockerfile").write_text("FROM scratch\n")
    (folder / "runtime.toml").write_text(toml)
    return folder


def test_loads_a_valid_runtime(tmp_path: Path) -> None:
    folder = make_runtime(tmp_path)
    runtimes = load_runtimes(tmp_path)
    assert list(runtimes) == ["demo"]
    rt = runtimes["demo"]
    assert isinstance(rt, Runtime)
    assert rt.image == "petri-demo:latest"
    assert rt.run == ("demo", "--flag", "{file}")
    assert rt.test is None  # no [test]: test mode is refused for this runtime
    assert rt.manifests == ("demo.lock",)
    assert dict(rt.env) == {"DEMO_UNBUFFERED": "1"}
    assert rt.folder == folder
    assert rt.run_argv("sub/x.demo") == ["demo", "--flag", "sub/x.demo"]


def test_env_is_optional(tmp_path: Path) -> None:
    make_runtime(tmp_path, GOOD.split("[env]")[0])
    assert dict(load_runtimes(tmp_path)["demo"].env) == {}


def test_repository_runtimes_load() -> None:
    runtimes = load_runtimes(REPO_RUNTIMES)
    assert set(runtimes) == {"python", "node", "go", "java"}
    for rt in runtimes.values():
        assert rt.image == f"petri-{rt.name}:latest"
        assert (rt.folder / rt.smoke).is_file()
        assert (rt.folder / "Dockerfile").is_file()
        assert "{file}" not in " ".join(rt.run_argv(rt.source_file))
    assert runtimes["java"].source_file == "Main.java"
    assert runtimes["go"].run_argv("main.go") == ["go", "run", "main.go"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "demo"\n', "", "missing required key 'name'"),
        ('smoke_expect = "petri smoke ok"\n', "", "missing required key 'smoke_expect'"),
        ('manifests = ["demo.lock"]\n', "", "missing required key 'manifests'"),
        ('name = "demo"', 'name = "other"', "must match its folder name"),
        ('name = "demo"', "name = 3", "'name' must be a non-empty string"),
        ('image = "petri-demo"', 'image = ""', "'image' must be a non-empty string"),
        ('image = "petri-demo"', 'image = "petri-demo:1"', "without a tag"),
        ('run = ["demo", "--flag", "{file}"]', 'run = "demo {file}"', "'run' must be a non-empty"),
        ('run = ["demo", "--flag", "{file}"]', "run = []", "'run' must be a non-empty list"),
        ('run = ["demo", "--flag", "{file}"]', 'run = ["demo", 1]', "'run' must be a non-empty"),
        ('run = ["demo", "--flag", "{file}"]', 'run = ["demo"]', "placeholder '{file}'"),
        ('manifests = ["demo.lock"]', 'manifests = "demo.lock"', "'manifests' must be"),
        ('smoke = "smoke/main.demo"', 'smoke = "smoke/missing"', "does not exist"),
        ('smoke = "smoke/main.demo"', 'smoke = "../x"', "relative path inside"),
        ('DEMO_UNBUFFERED = "1"', "DEMO_UNBUFFERED = 1", "env.DEMO_UNBUFFERED must be a string"),
        ('[env]\nDEMO_UNBUFFERED = "1"\n', "env = 3\n", "[env] must be a table"),
        ('name = "demo"', 'name = "demo"\nport = 8', "unknown key(s): port"),
        ('name = "demo"', 'name = "demo', "not valid TOML"),
    ],
)
def test_bad_data_raises_a_clear_value_error(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in GOOD
    make_runtime(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ValueError) as info:
        load_runtimes(tmp_path)
    assert message in str(info.value)
    assert "runtime.toml" in str(info.value)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_runtimes(tmp_path / "nope")
    with pytest.raises(ValueError, match="no runtimes found"):
        load_runtimes(tmp_path)


def test_content_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    a = make_runtime(tmp_path / "a")
    b = tmp_path / "b" / "demo"
    shutil.copytree(a, b)
    first = content_hash(a)
    assert first == content_hash(a)
    assert first == content_hash(b), "same content in another place hashes the same"
    assert len(first) == 64

    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert content_hash(b) == first, "caches do not count"

    (b / "Dockerfile").write_text("FROM scratch\n#\n")
    assert content_hash(b) != first, "a changed byte changes the hash"
    (b / "Dockerfile").write_text("FROM scratch\n")
    assert content_hash(b) == first

    (b / "smoke" / "main.demo").rename(b / "smoke" / "other.demo")
    assert content_hash(b) != first, "a renamed file changes the hash"
    (b / "smoke" / "other.demo").rename(b / "smoke" / "main.demo")

    (b / "extra").write_text("")
    assert content_hash(b) != first, "an added (even empty) file changes the hash"


def test_content_hash_of_repository_runtimes_differ() -> None:
    hashes = {content_hash(folder) for folder in REPO_RUNTIMES.iterdir() if folder.is_dir()}
    assert len(hashes) == 4


# --- runtime.toml `[test]` (test mode's runners) ----------------------------------------------

TEST_TABLE = """
[test]
paths = true

[[test.runners]]
name = "special"
detect = "npm-test-script"
run = "npm test"
report = "junit"

[[test.runners]]
name = "plain"
run = "demo test"
report = "go-json"
"""


def test_test_runners_load(tmp_path: Path) -> None:
    make_runtime(tmp_path, GOOD + TEST_TABLE)
    spec = load_runtimes(tmp_path)["demo"].test
    assert spec is not None and spec.paths is True
    assert [(r.name, r.detect, r.report) for r in spec.runners] == [
        ("special", "npm-test-script", "junit"),
        ("plain", "", "go-json"),
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("paths = true", 'paths = "yes"', "test.paths must be true or false"),
        ("paths = true", "paths = true\nmode = 1", "unknown [test] key(s): mode"),
        ('report = "go-json"', 'report = "tap"', "report must be one of: go-json, junit"),
        ('detect = "npm-test-script"', 'detect = "guess"', "detect must be one of"),
        ('run = "demo test"', 'run = ""', "name, run and report are required"),
        ('run = "demo test"', "run = 3", "name, run, report and detect are strings"),
        ('name = "plain"', 'name = "plain"\nwhen = ["x"]', "unknown key(s): when"),
        ('name = "plain"\nrun', 'name = "plain"\ndetect = "maven-surefire"\nrun', "the fallback"),
    ],
)
def test_bad_test_runners_raise(tmp_path: Path, old: str, new: str, message: str) -> None:
    toml = GOOD + TEST_TABLE
    assert old in toml
    make_runtime(tmp_path, toml.replace(old, new, 1))
    with pytest.raises(ValueError) as info:
        load_runtimes(tmp_path)
    assert message in str(info.value)


def test_the_old_test_argv_is_refused_clearly(tmp_path: Path) -> None:
    make_runtime(tmp_path, GOOD.replace("manifests =", 'test = ["demo", "test"]\nmanifests ='))
    with pytest.raises(ValueError, match=r"test must be a table \(\[test\] with"):
        load_runtimes(tmp_path)


def test_repository_runtimes_all_have_test_runners() -> None:
    runtimes = load_runtimes(REPO_RUNTIMES)
    names = {n: [r.name for r in rt.test.runners] for n, rt in runtimes.items() if rt.test}
    assert names == {
        "python": ["pytest"],
        "node": ["npm test", "node --test"],
        "go": ["go test"],
        "java": ["maven", "junit"],
    }
    for rt in runtimes.values():
        assert rt.test is not None
        for runner in rt.test.runners:
            assert "$PETRI_REPORT_DIR" in runner.run or runner.report == "go-json"
