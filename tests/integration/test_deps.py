"""Dependency installs against a real gateway, real Docker and the real runtime images.

Hermetic: the test serves its own package index on 127.0.0.1 (wheels it builds, a PEP 503
simple index, and an `npm pack`-ed tarball) and allowlists exactly that `127.0.0.1:port` on a
dedicated gateway. Sandboxes point pip at it with `PIP_INDEX_URL` in the sandbox's `env`,
which reaches the install container (the exec container has no network). Install
containers have no network but loopback: they reach it only through the gateway's egress
proxy (a relay on their 127.0.0.1 to the proxy's Unix socket), which connects from the host,
where 127.0.0.1 is the test's index. Go never proxies loopback addresses, so the Go module
proxy the test serves listens on a non-loopback address of the host instead (allowlisted the
same way). One smoke test installs a real package from PyPI with the default allowlist.

Container creations are counted from `docker events` (create events of containers labelled
`petri.role=install` for the sandbox), between two instants around an exec.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import DEFAULT_EGRESS_ALLOW
from tests.conftest import Gateway, cleanup_containers, make_gateway, remove_tree
from tests.index import Server, build_wheel, host_address, write_simple_index
from tests.sse import Received, check_sequence, stream_events, text

pytestmark = pytest.mark.docker

INSTALLS = ("--filter", "label=petri.role=install")


# --- a package index the test serves itself ----------------------------------------------------


def npm_pack(root: Path, package: str = "petri-demo") -> str:
    """`npm pack` a tiny package; fall back to the same tarball made by hand without npm."""
    src = Path(tempfile.mkdtemp(prefix="petri-npm-"))
    (src / "package.json").write_text(
        json.dumps({"name": package, "version": "1.0.0", "main": "index.js"})
    )
    (src / "index.js").write_text(f"module.exports = {{ value: 'node {package} 1.0.0' }};\n")
    name = f"{package}-1.0.0.tgz"
    try:
        if shutil.which("npm"):
            subprocess.run(
                ["npm", "pack", "--pack-destination", str(root)],
                cwd=src,
                check=True,
                capture_output=True,
                timeout=120,
            )
        else:
            with tarfile.open(root / name, "w:gz") as tar:
                for file in ("package.json", "index.js"):
                    tar.add(src / file, arcname=f"package/{file}")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    assert (root / name).is_file()
    return name


def write_go_module(root: Path, module: str, version: str, source: str) -> None:
    """A module on a GOPROXY-protocol file tree under `root/go` (list, info, mod, zip)."""
    base = root / "go" / module / "@v"
    base.mkdir(parents=True, exist_ok=True)
    (base / "list").write_text(f"{version}\n")
    (base / f"{version}.info").write_text(
        json.dumps({"Version": version, "Time": "2024-01-01T00:00:00Z"})
    )
    mod = f"module {module}\n\ngo 1.19\n"
    (base / f"{version}.mod").write_text(mod)
    with zipfile.ZipFile(base / f"{version}.zip", "w") as z:
        z.writestr(f"{module}@{version}/go.mod", mod)
        z.writestr(f"{module}@{version}/demo.go", source)


@dataclass
class World:
    gateway: Gateway
    client: httpx.Client
    index: Server
    forbidden: Server
    tarball: str
    goproxy: Server


@pytest.fixture(scope="module")
def world(docker_ready: None) -> Iterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="petri-deps-"))
    files = tmp / "index"
    files.mkdir()
    demo = [
        build_wheel(files, "petri-demo-pkg", v, "petri_demo_pkg", f"VALUE = 'demo {v}'\n")
        for v in ("1.0", "2.0")
    ]
    write_simple_index(files, "petri-demo-pkg", demo)
    # `import yaml` must become PyYAML (pipreqs' table): a stand-in PyYAML on this index.
    yaml = build_wheel(files, "PyYAML", "99.0", "yaml", "VALUE = 'stand-in yaml'\n")
    write_simple_index(files, "pyyaml", [yaml])
    tarball = npm_pack(files)
    npm_pack(files, "petri-extra")
    go_files = tmp / "goproxy"
    go_demo = 'package demo\n\nfunc Value() string { return "go demo v1.0.0" }\n'
    write_go_module(go_files, "petri.test/demo", "v1.0.0", go_demo)
    # Go never proxies loopback addresses: its module proxy is served on a non-loopback
    # address of the host (and allowlisted there), so it too goes through the proxy.
    goproxy = Server(go_files, host=host_address()).start()
    index = Server(files).start()
    forbidden_files = tmp / "forbidden"
    forbidden_files.mkdir()
    write_simple_index(forbidden_files, "petri-demo-pkg", [])
    forbidden = Server(forbidden_files).start()
    (tmp / "gw").mkdir()
    gw = make_gateway(
        tmp / "gw",
        egress_allow=f"{DEFAULT_EGRESS_ALLOW},127.0.0.1:{index.port},{goproxy.host}:{goproxy.port}",
        install_timeout_seconds="120",
    )
    gw.start()
    try:
        with gw.client(timeout=300) as client:
            yield World(gw, client, index, forbidden, tarball, goproxy)
    finally:
        gw.stop()
        index.stop()
        forbidden.stop()
        goproxy.stop()
        cleanup_containers(tmp / "gw")
        remove_tree(tmp)


@pytest.fixture
def sandbox_of(world: World) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(
        language: str = "python",
        *,
        index: bool = True,
        env: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
    ) -> str:
        """A sandbox holding `files`, pip pointed at the test's index unless `index=False`."""
        if env is None:
            env = {"PIP_INDEX_URL": f"{world.index.url}/simple"} if index else {}
        r = world.client.post("/v1/sandboxes", json={"language": language, "env": env})
        assert r.status_code == 201, r.text
        sid = str(r.json()["id"])
        made.append(sid)
        for path, content in (files or {}).items():
            put(world, sid, path, content)
        return sid

    yield make
    for sid in made:
        world.client.delete(f"/v1/sandboxes/{sid}")


def put(world: World, sid: str, path: str, content: str) -> None:
    r = world.client.put(f"/v1/sandboxes/{sid}/files/{path}", content=content.encode())
    assert r.status_code == 201, r.text


def run(world: World, sid: str, **body: Any) -> dict[str, Any]:
    r = world.client.post(f"/v1/sandboxes/{sid}/exec", json={"timeout_seconds": 120, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def stream(world: World, sid: str, **body: Any) -> list[Received]:
    events = stream_events(
        world.client, "POST", f"/v1/sandboxes/{sid}/exec", json={"timeout_seconds": 120, **body}
    )
    check_sequence(events)
    return events


def installs_created(sid: str, since: float, until: float) -> int:
    """Install containers Docker created for the sandbox between two instants."""
    out = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{until:.3f}",
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            f"label=petri.sandbox={sid}",
            "--filter",
            "label=petri.role=install",
            "--format",
            "{{.ID}}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return len(out.stdout.split())


def counted(world: World, sid: str, **body: Any) -> tuple[dict[str, Any], int]:
    """Run an exec; also count the install containers it started."""
    since = time.time() - 0.05
    result = run(world, sid, **body)
    time.sleep(0.1)
    return result, installs_created(sid, since, time.time())


# --- the tests ----------------------------------------------------------------------------------

MAIN = "import petri_demo_pkg\nprint(petri_demo_pkg.VALUE)\n"


def test_requirements_install_streams_first_then_caches_then_reinstalls(
    world: World, sandbox_of: Callable[..., str]
) -> None:
    sid = sandbox_of(files={"requirements.txt": "petri-demo-pkg==1.0\n", "main.py": MAIN})
    since = time.time() - 0.05
    events = stream(world, sid, filename="main.py")
    assert installs_created(sid, since, time.time() + 0.1) == 1
    installs = [e for e in events if e.type == "install"]
    outputs = [e for e in events if e.type in ("stdout", "stderr")]
    assert installs and outputs
    assert max(e.id for e in installs) < min(e.id for e in outputs), "install output comes first"
    # Program output is exactly the program's: no install text ever leaks into it.
    assert text(events, "stdout") == "demo 1.0\n" and text(events, "stderr") == ""
    install_log = text(events, "install")
    assert "petri-demo-pkg" in install_log and "Successfully installed" in install_log
    assert events[-1].type == "exit" and events[-1].data["exit_code"] == 0

    cached, created = counted(world, sid, filename="main.py")
    assert created == 0, "an unchanged manifest must start no container"
    assert cached["install"]["status"] == "cached" and cached["install"]["log"] == ""
    assert cached["install"]["packages"] == [
        {"name": "petri-demo-pkg", "version": "1.0", "language": "python"}
    ]
    assert cached["stdout"] == "demo 1.0\n"

    put(world, sid, "requirements.txt", "petri-demo-pkg==2.0\n")
    changed, created = counted(world, sid, filename="main.py")
    assert created == 1 and changed["install"]["status"] == "installed", changed
    assert changed["stdout"] == "demo 2.0\n"
    bom = world.client.get(f"/v1/sandboxes/{sid}/packages").json()
    assert bom["packages"] == [{"name": "petri-demo-pkg", "version": "2.0", "language": "python"}]
    assert len(bom["manifest_hash"]) == 64

    # The cache is checked against the workspace: deleting the installed packages reinstalls.
    assert world.client.delete(f"/v1/sandboxes/{sid}/files/.deps").status_code == 204
    again = run(world, sid, filename="main.py")
    assert again["install"]["status"] == "installed" and again["stdout"] == "demo 2.0\n"


def test_pyproject_dependencies_are_installed(world: World, sandbox_of: Callable[..., str]) -> None:
    pyproject = (
        '[project]\nname = "app"\nversion = "0.1"\ndependencies = ["petri-demo-pkg>=2"]\n\n'
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    # requirements.txt is ignored when pyproject.toml is there: pyproject wins.
    sid = sandbox_of(
        files={"pyproject.toml": pyproject, "requirements.txt": "nothing-here\n", "main.py": MAIN}
    )
    result = run(world, sid, filename="main.py")
    assert result["install"]["status"] == "installed", result
    assert result["stdout"] == "demo 2.0\n"
    assert "[project].dependencies" in result["install"]["log"]
    assert world.client.get(f"/v1/sandboxes/{sid}/packages").json()["plan"] == "pyproject"


def test_no_manifest_installs_detected_imports(
    world: World, sandbox_of: Callable[..., str]
) -> None:
    helper = "def shout(s):\n    return s.upper()\n"
    code = (
        "import os, json\nimport helper\nfrom petri_demo_pkg import VALUE\nimport yaml\n"
        "print(helper.shout(VALUE), yaml.VALUE)\n"
    )
    files = {"main.py": code, "helper.py": helper, "broken.py": "def oops(:\n"}
    sid = sandbox_of(files=files)
    first, created = counted(world, sid, filename="main.py")
    assert created == 1
    assert first["install"]["status"] == "installed", first
    assert first["stdout"] == "DEMO 2.0 stand-in yaml\n"
    log = first["install"]["log"]
    assert "yaml -> " in log or "PyYAML" in log  # pipreqs' table: import yaml is PyYAML
    assert "not scanned (does not parse): broken.py" in log
    names = {p["name"] for p in first["install"]["packages"]}
    assert names == {"petri-demo-pkg", "PyYAML"}

    # Inline code is scanned too: nothing new imported, nothing to do.
    again, created = counted(world, sid, code="import yaml\nprint(yaml.VALUE)\n")
    assert created == 0 and again["install"]["status"] == "cached"
    assert again["stdout"] == "stand-in yaml\n"
    # An inline program alone is enough to install what it imports.
    fresh = sandbox_of()
    inline = run(world, fresh, code="import petri_demo_pkg as p\nprint(p.VALUE)\n")
    assert inline["install"]["status"] == "installed" and inline["stdout"] == "demo 2.0\n"
    plain, created = counted(world, sid, code="import sys\nprint(sys.version_info[0])\n")
    assert created == 0 and plain["install"]["status"] in ("cached", "skipped")
    assert plain["stdout"] == "3\n"


def test_node_package_json_installs_into_node_modules(
    world: World, sandbox_of: Callable[..., str]
) -> None:
    package = {"name": "app", "version": "1.0.0", "dependencies": {"petri-demo": ""}}
    package["dependencies"]["petri-demo"] = f"{world.index.url}/{world.tarball}"
    main = "const demo = require('petri-demo');\nconsole.log(demo.value);\n"
    sid = sandbox_of(
        "node", index=False, files={"package.json": json.dumps(package), "main.js": main}
    )
    events = stream(world, sid, filename="main.js")
    assert text(events, "stdout") == "node petri-demo 1.0.0\n", events
    installs = [e.id for e in events if e.type == "install"]
    assert installs and max(installs) < min(e.id for e in events if e.type == "stdout")
    # npm wrote package-lock.json: next time the lock-file plan (npm ci) applies, unchanged.
    again, created = counted(world, sid, filename="main.js")
    assert created == 0 and again["install"]["status"] == "cached", again
    assert {"name": "petri-demo", "version": "1.0.0", "language": "node"} in again["install"][
        "packages"
    ]
    assert world.client.get(f"/v1/sandboxes/{sid}/packages").json()["plan"] == "npm-ci"
    # A dependency added to package.json after npm wrote the lock file: `npm ci` refuses
    # (out of sync), `npm install` brings both in line.
    extra = f"{world.index.url}/petri-extra-1.0.0.tgz"
    grown = {**package, "dependencies": {**package["dependencies"], "petri-extra": extra}}
    put(world, sid, "package.json", json.dumps(grown))
    both = "console.log(require('petri-demo').value, require('petri-extra').value);\n"
    changed = run(world, sid, code=both)
    assert changed["install"]["status"] == "installed", changed
    assert "npm ci failed" in changed["install"]["log"]
    assert changed["stdout"] == "node petri-demo 1.0.0 node petri-extra 1.0.0\n", changed


def test_failed_install_ends_with_install_failed_and_runs_nothing(
    world: World, sandbox_of: Callable[..., str]
) -> None:
    sid = sandbox_of(
        files={"requirements.txt": "petri-no-such-package==1.0\n", "main.py": "print('ran')\n"}
    )
    events = stream(world, sid, filename="main.py")
    assert events[-1].type == "error" and events[-1].data["code"] == "install_failed"
    assert "petri-no-such-package" in events[-1].data["message"]
    assert not [e for e in events if e.type in ("stdout", "stderr")]
    result = run(world, sid, filename="main.py")  # failures are not cached: it tries again
    assert result["install"]["status"] == "failed" and result["error"]["code"] == "install_failed"


def test_egress_only_reaches_the_allowlist(world: World, sandbox_of: Callable[..., str]) -> None:
    # An index on a host:port that is not allowlisted: the proxy refuses, nothing arrives.
    env = {"PIP_INDEX_URL": f"{world.forbidden.url}/simple"}
    sid = sandbox_of(env=env, files={"requirements.txt": "petri-demo-pkg\n"})
    result = run(world, sid, command="true")
    assert result["error"]["code"] == "install_failed", result
    assert world.forbidden.hits == []
    assert world.gateway.log_path is not None
    log = world.gateway.log_path.read_text()
    assert f"egress refused: 127.0.0.1:{world.forbidden.port}" in log
    # And the allowlisted index still works (through the same proxy).
    ok = sandbox_of(files={"requirements.txt": "petri-demo-pkg==1.0\n", "main.py": MAIN})
    assert run(world, ok, filename="main.py")["stdout"] == "demo 1.0\n"


def test_concurrent_execs_run_one_install(world: World, sandbox_of: Callable[..., str]) -> None:
    sid = sandbox_of(files={"requirements.txt": "petri-demo-pkg==1.0\n", "main.py": MAIN})
    since = time.time() - 0.05
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run(world, sid, filename="main.py"), range(3)))
    time.sleep(0.1)
    assert installs_created(sid, since, time.time()) == 1
    assert sorted(r["install"]["status"] for r in results) == ["cached", "cached", "installed"]
    assert all(r["stdout"] == "demo 1.0\n" for r in results)


def test_missing_modules_are_named_on_exit(world: World, sandbox_of: Callable[..., str]) -> None:
    # A manifest that lacks the package: the program fails, the exit event names what it missed.
    sid = sandbox_of(files={"requirements.txt": "petri-demo-pkg==1.0\n"})
    events = stream(world, sid, code="import petri_demo_pkg\nimport not_there.sub\n")
    assert events[-1].type == "exit" and events[-1].data["exit_code"] == 1
    assert events[-1].data["missing_modules"] == ["not_there"]
    node = sandbox_of("node", index=False)
    result = run(world, node, code="require('./local');\n")
    assert "missing_modules" not in result  # a relative path is not a package
    result = run(world, node, code="const pad = require('left-pad/lib');\n")
    assert result["exit_code"] == 1 and result["missing_modules"] == ["left-pad"]
    ok = run(world, node, code="console.log('fine')\n")
    assert ok["exit_code"] == 0 and "missing_modules" not in ok


def test_go_without_go_mod_fetches_what_the_code_imports(
    world: World, sandbox_of: Callable[..., str]
) -> None:
    env = {"GOPROXY": f"{world.goproxy.url}/go", "GOSUMDB": "off"}
    sid = sandbox_of("go", env=env)
    code = (
        'package main\n\nimport (\n\t"fmt"\n\n\t"petri.test/demo"\n)\n\n'
        "func main() { fmt.Println(demo.Value()) }\n"
    )
    first = run(world, sid, code=code)
    assert first["install"]["status"] == "installed", first
    assert first["stdout"] == "go demo v1.0.0\n", first
    assert {"name": "petri.test/demo", "version": "v1.0.0", "language": "go"} in first["install"][
        "packages"
    ]
    # `go mod init` wrote go.mod: from now on the go.mod plan applies, unchanged.
    again, created = counted(world, sid, code=code)
    assert created == 0 and again["install"]["status"] == "cached", again
    assert again["stdout"] == "go demo v1.0.0\n"


def test_go_and_java_plans(world: World, sandbox_of: Callable[..., str]) -> None:
    go = sandbox_of("go", index=False, files={"go.mod": "module demo\n\ngo 1.19\n"})
    code = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("go ok") }\n'
    result = run(world, go, code=code)
    assert result["install"]["status"] == "installed", result
    assert result["stdout"] == "go ok\n"
    assert run(world, go, code=code)["install"]["status"] == "cached"
    plain = sandbox_of("go", index=False)
    assert run(world, plain, code=code)["install"]["status"] == "skipped"
    java = sandbox_of("java", index=False, files={"build.gradle": "plugins { id 'java' }\n"})
    main = 'class Main { public static void main(String[] a) { System.out.println("j"); } }\n'
    result = run(world, java, code=main)
    assert result["install"]["status"] == "skipped" and "no Gradle" in result["install"]["log"]
    assert result["stdout"] == "j\n"


def test_install_timeout_sandbox_delete_and_a_removed_socket_dir(
    tmp_path: Path, docker_ready: None
) -> None:
    """A gateway of its own: an install that hangs is stopped at the install timeout;
    deleting a sandbox stops its install; a removed socket directory is made again."""
    slow = Server(tmp_path).start()
    wheel = build_wheel(tmp_path, "petri-demo-pkg", "1.0", "petri_demo_pkg", "VALUE = 'ok'\n")
    write_simple_index(tmp_path, "petri-demo-pkg", [wheel])
    (tmp_path / "gw").mkdir()
    sockets = Path(tempfile.mkdtemp(prefix="petri-sock-", dir="/tmp")) / "egress"
    gw = make_gateway(
        tmp_path / "gw",
        egress_allow=f"127.0.0.1:{slow.port}",
        install_timeout_seconds="15",  # a real install fits (even on a busy machine); the
        # slow index (30 s) does not
        egress_socket_dir=str(sockets),
    )
    gw.start()
    try:
        assert sockets.is_dir() and stat.S_IMODE(sockets.stat().st_mode) == 0o700
        with gw.client() as client:
            env = {"PIP_INDEX_URL": f"{slow.url}/slow/simple", "PIP_DEFAULT_TIMEOUT": "60"}
            made = client.post("/v1/sandboxes", json={"language": "python", "env": env})
            sid = made.json()["id"]
            client.put(f"/v1/sandboxes/{sid}/files/requirements.txt", content=b"x\n")
            started = time.monotonic()
            result = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true"})
            assert time.monotonic() - started < 40
            body = result.json()
            assert body["error"]["code"] == "install_failed" and body["timed_out"] is True
            assert "timed out (PETRI_INSTALL_TIMEOUT_SECONDS=15)" in body["install"]["log"]
            left = subprocess.run(
                [*("docker", "ps", "-aq", "--filter", f"label=petri.sandbox={sid}"), *INSTALLS],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert left == [], "a timed-out install container is removed"
            assert list(sockets.iterdir()) == [], "its proxy socket is gone too"
            # Deleting a sandbox ends its running install too.
            made = client.post("/v1/sandboxes", json={"language": "python", "env": env})
            sid = made.json()["id"]
            client.put(f"/v1/sandboxes/{sid}/files/requirements.txt", content=b"x\n")
            client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "true", "wait": False})
            filters = ["--filter", f"label=petri.sandbox={sid}", *INSTALLS]
            deadline = time.monotonic() + 60
            while not subprocess.run(
                ["docker", "ps", "-q", *filters], capture_output=True, text=True, check=True
            ).stdout.split():
                assert time.monotonic() < deadline, "the install container never started"
                time.sleep(0.1)
            assert [p.name for p in sockets.iterdir()] == [f"{sid}.sock"]
            assert client.delete(f"/v1/sandboxes/{sid}").status_code == 204
            left = subprocess.run(
                ["docker", "ps", "-aq", *filters], capture_output=True, text=True, check=True
            ).stdout.split()
            assert left == [], "deleting a sandbox removes its install container"
            assert list(sockets.iterdir()) == []
            # A temp cleaner removed the socket directory: the next install makes it again.
            shutil.rmtree(sockets)
            env = {"PIP_INDEX_URL": f"{slow.url}/simple"}
            made = client.post("/v1/sandboxes", json={"language": "python", "env": env})
            sid = made.json()["id"]
            client.put(f"/v1/sandboxes/{sid}/files/requirements.txt", content=b"petri-demo-pkg\n")
            code = {"code": "import petri_demo_pkg\nprint(petri_demo_pkg.VALUE)\n"}
            result = client.post(f"/v1/sandboxes/{sid}/exec", json=code).json()
            assert result["install"]["status"] == "installed", result["install"]["log"]
            assert result["stdout"] == "ok\n"
    finally:
        gw.stop()
        slow.stop()
        cleanup_containers(tmp_path / "gw")
        remove_tree(tmp_path / "gw")
        shutil.rmtree(sockets.parent, ignore_errors=True)


def test_smoke_real_package_from_pypi(world: World, sandbox_of: Callable[..., str]) -> None:
    """Through the proxy with the default allowlist (pypi.org, files.pythonhosted.org)."""
    sid = sandbox_of(index=False, files={"requirements.txt": "six==1.16.0\n"})
    result = run(world, sid, code="import six\nprint(six.__version__)\n")
    assert result["install"]["status"] == "installed", result["install"]["log"][-2000:]
    assert result["stdout"] == "1.16.0\n"
    assert {"name": "six", "version": "1.16.0", "language": "python"} in result["install"][
        "packages"
    ]
