"""The runtime images build, and each smoke program runs under the sandbox's hardening.

Real Docker, real images: the fixture builds whatever changed (a no-op otherwise), then every
smoke program runs the way the gateway runs code: uid 1000, read-only root, tmpfs /tmp, no
network, no capabilities, the workspace bind-mounted at /sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.images import HASH_LABEL, build_images
from gateway.runtimes import Runtime, load_runtimes

pytestmark = pytest.mark.docker

REPO_RUNTIMES = Path(__file__).resolve().parents[2] / "runtimes"
RUNTIMES = load_runtimes(REPO_RUNTIMES)
NAMES = sorted(RUNTIMES)

HARDENING = [
    "--init",
    "--user", "1000:1000",
    "--read-only",
    "--tmpfs", "/tmp:exec",
    "--network", "none",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
]  # fmt: skip


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    """Build (or find unchanged) every runtime image; name -> status."""
    results = build_images(RUNTIMES, log=lambda line: None)
    return {result.name: result.status for result in results}


def inspect(image: str, fmt: str) -> str:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", fmt, image],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def workspace_copy(runtime: Runtime, tmp_path: Path) -> Path:
    """A copy of the smoke folder that uid 1000 can write to (Go and Java may write there)."""
    workspace = tmp_path / "sandbox"
    shutil.copytree(runtime.folder / Path(runtime.smoke).parent, workspace)
    for root, _dirs, files in os.walk(workspace):
        os.chmod(root, 0o777)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666)
    return workspace


def docker_run(
    runtime: Runtime, workspace: Path, argv: list[str]
) -> subprocess.CompletedProcess[str]:
    env_flags = [flag for key, value in runtime.env.items() for flag in ("-e", f"{key}={value}")]
    return subprocess.run(
        ["docker", "run", "--rm", *HARDENING, *env_flags, "-v", f"{workspace}:/sandbox",
         runtime.image, *argv],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_image_exists_with_hash_label(built: dict[str, str], name: str) -> None:
    runtime = RUNTIMES[name]
    assert built[name] in ("built", "unchanged")
    assert len(inspect(runtime.image, f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}')) == 64
    assert inspect(runtime.image, "{{.Config.User}}") == "1000:1000"
    assert inspect(runtime.image, "{{.Config.WorkingDir}}") == "/sandbox"


def test_second_build_is_a_no_op(built: dict[str, str]) -> None:
    again = build_images(RUNTIMES, log=lambda line: None)
    assert {result.name: result.status for result in again} == dict.fromkeys(NAMES, "unchanged")


@pytest.mark.parametrize("name", NAMES)
def test_smoke_program_runs_hardened(built: dict[str, str], name: str, tmp_path: Path) -> None:
    runtime = RUNTIMES[name]
    workspace = workspace_copy(runtime, tmp_path)
    done = docker_run(runtime, workspace, runtime.run_argv(Path(runtime.smoke).name))
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\n{done.stderr}"
    assert runtime.smoke_expect in done.stdout
    assert runtime.smoke_expect not in done.stderr
    assert "stderr works" in done.stderr, "the smoke program writes one line to stderr"
    assert "stderr works" not in done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_shell_basics_and_read_only_root(built: dict[str, str], name: str, tmp_path: Path) -> None:
    """Execs run as `sh -c`; the root is read-only; /tmp and the workspace are writable."""
    runtime = RUNTIMES[name]
    workspace = workspace_copy(runtime, tmp_path)
    script = (
        "id -u; echo $HOME; pwd; "
        "echo hi > /tmp/t && cat /tmp/t; echo ws > /sandbox/w && cat /sandbox/w; "
        "sleep 30 & kill $!; "
        "touch /usr/x 2>/dev/null && echo root-writable || echo root-read-only"
    )
    done = docker_run(runtime, workspace, ["sh", "-c", script])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1000", "/tmp", "/sandbox", "hi", "ws", "root-read-only"]


# The floors each runtime must meet (Debian 13's packages) and the command names people and
# models type. Checked in a real sandbox, through the gateway, with its real hardening.
FLOORS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "python": ((3, 13), ("python", "python3", "pip", "pip3", "pytest")),
    "node": ((20,), ("node", "npm", "npx")),
    "go": ((1, 24), ("go", "gofmt", "git", "gcc")),
    "java": ((21,), ("java", "javac", "mvn")),
}


def test_every_runtime_has_a_floor() -> None:
    assert sorted(FLOORS) == NAMES


def version_of(smoke_stdout: str) -> tuple[int, ...]:
    """`petri smoke ok: go go1.24.4` -> (1, 24, 4)."""
    found = re.search(r"(\d+(?:\.\d+)*)", smoke_stdout.partition(":")[2])
    assert found, smoke_stdout
    return tuple(int(part) for part in found.group(1).split("."))


@pytest.mark.parametrize("name", NAMES)
def test_runtime_meets_its_floor_in_a_sandbox(
    name: str, new_sandbox: Callable[..., dict[str, Any]], client: httpx.Client
) -> None:
    runtime = RUNTIMES[name]
    floor, commands = FLOORS[name]
    sid = new_sandbox(name)["id"]
    smoke = runtime.smoke_path
    put = client.put(f"/v1/sandboxes/{sid}/files/{smoke.name}", content=smoke.read_bytes())
    assert put.status_code == 201, put.text
    ran = client.post(
        f"/v1/sandboxes/{sid}/exec", json={"filename": smoke.name, "timeout_seconds": 120}
    ).json()
    assert ran["exit_code"] == 0, ran
    assert runtime.smoke_expect in ran["stdout"]
    assert version_of(ran["stdout"])[: len(floor)] >= floor, ran["stdout"]
    probe = " && ".join(f"command -v {c}" for c in commands)
    found = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": probe}).json()
    assert found["exit_code"] == 0, found
    assert len(found["stdout"].split()) == len(commands)


def test_python_command_runs_a_file(
    new_sandbox: Callable[..., dict[str, Any]], client: httpx.Client
) -> None:
    """What nearly every person and model writes: `python main.py`."""
    sid = new_sandbox("python")["id"]
    code = b"import sys; print(sys.version_info >= (3, 13))"
    client.put(f"/v1/sandboxes/{sid}/files/main.py", content=code)
    ran = client.post(f"/v1/sandboxes/{sid}/exec", json={"command": "python main.py"}).json()
    assert (ran["exit_code"], ran["stdout"]) == (0, "True\n"), ran
