"""The runtime images build, and each smoke program runs under the sandbox's hardening.

Real Docker, real images: the fixture builds whatever changed (a no-op otherwise), then every
smoke program runs the way the gateway runs code: uid 1000, read-only root, tmpfs /tmp, no
network, no capabilities, the workspace bind-mounted at /sandbox.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.backend import ContainerSpec, Mount
from gateway.config import Settings
from gateway.images import HASH_LABEL, build_images
from gateway.models import Limits, Sandbox
from gateway.runner import container_config
from gateway.runtimes import Runtime, load_runtimes

pytestmark = pytest.mark.docker

REPO_RUNTIMES = Path(__file__).resolve().parents[2] / "runtimes"
RUNTIMES = load_runtimes(REPO_RUNTIMES)
NAMES = sorted(RUNTIMES)

def sandbox_container(runtime: Runtime, workspace: Path) -> dict[str, Any]:
    """The Docker Engine config the gateway creates a sandbox of `runtime` with (default
    settings and limits, `workspace` bind-mounted): the one place these tests read the
    gateway's container spec from, so they can never restate it and drift."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "PETRI_RUNTIMES_DIR": str(REPO_RUNTIMES),
                "PETRI_DATA_DIR": f"{tmp}/data",
                "PETRI_WORKSPACE_ROOT": f"{tmp}/workspaces",
            }
        )
    limits = Limits(settings.memory_mb, settings.cpus, settings.pids_limit, settings.disk_mb)
    sandbox = Sandbox("sb-test", runtime.name, "running", 0.0, 0.0, 60, limits)
    spec = ContainerSpec.for_sandbox(
        settings,
        sandbox,
        name="petri-test",
        image=runtime.image,
        labels={},
        mounts=[Mount(workspace, "/sandbox")],
        env=dict(runtime.env),
    )
    return container_config(spec)


def run_flags(config: dict[str, Any]) -> list[str]:
    """`docker run` flags for an Engine API container config. A key it cannot translate
    fails the test: a new hardening setting of the gateway must show up here too."""
    flags = ["--user", config.pop("User"), "--workdir", config.pop("WorkingDir")]
    flags += ["--hostname", config.pop("Hostname")]
    flags += [flag for env in config.pop("Env") for flag in ("-e", env)]
    for key in ("Image", "Cmd", "Labels", "AttachStdout", "AttachStderr"):
        config.pop(key)  # the image and argv are the test's; labels and attaching change nothing
    disabled = config.pop("NetworkDisabled")  # the same as NetworkMode none, to the CLI
    host = config.pop("HostConfig")
    assert disabled == (host.get("NetworkMode") == "none")
    assert not config, f"container settings run_flags does not know: {sorted(config)}"
    translate: dict[str, Callable[[Any], list[str]]] = {
        "Binds": lambda v: [f for b in v for f in ("-v", b)],
        "NetworkMode": lambda v: ["--network", v],
        "ReadonlyRootfs": lambda v: ["--read-only"] if v else [],
        "Tmpfs": lambda v: [f for path, o in v.items() for f in ("--tmpfs", f"{path}:{o}")],
        "ShmSize": lambda v: ["--shm-size", f"{v}b"],
        "OomScoreAdj": lambda v: ["--oom-score-adj", str(v)],
        "CapDrop": lambda v: [f for c in v for f in ("--cap-drop", c)],
        "CapAdd": lambda v: [f for c in v for f in ("--cap-add", c)],
        "SecurityOpt": lambda v: [f for o in v for f in ("--security-opt", o)],
        "Memory": lambda v: ["--memory", f"{v}b"],
        "MemorySwap": lambda v: ["--memory-swap", f"{v}b"],
        "NanoCpus": lambda v: ["--cpus", str(v / 1e9)],
        "PidsLimit": lambda v: ["--pids-limit", str(v)],
        "Ulimits": lambda v: [
            f for u in v for f in ("--ulimit", f"{u['Name']}={u['Soft']}:{u['Hard']}")
        ],
        "LogConfig": lambda v: ["--log-driver", v["Type"]],
        "Init": lambda v: ["--init"] if v else [],
        "Runtime": lambda v: ["--runtime", v],
        "Dns": lambda v: [f for d in v for f in ("--dns", d)],
    }
    unknown = sorted(set(host) - set(translate))
    assert not unknown, f"HostConfig settings run_flags does not know: {unknown}"
    for key, value in host.items():
        flags += translate[key](value)
    return flags


def test_the_flags_are_the_gateways_hardening(tmp_path: Path) -> None:
    """The translation keeps what the sandbox's safety rests on (DESIGN §4), with no `--init`
    the gateway does not use (its PID 1 is its own keeper)."""
    flags = run_flags(sandbox_container(RUNTIMES["python"], tmp_path))
    pairs = set(itertools.pairwise(flags))
    for pair in [
        ("--user", "1000:1000"), ("--network", "none"), ("--cap-drop", "ALL"),
        ("--security-opt", "no-new-privileges"), ("--memory-swap", f"{512 * 1024 * 1024}b"),
        ("--pids-limit", "256"), ("-v", f"{tmp_path}:/sandbox:rw"),
    ]:  # fmt: skip
        assert pair in pairs, (pair, flags)
    assert "--read-only" in flags and "--init" not in flags
    assert any(f.startswith("/tmp:") and "nosuid" in f for f in flags)


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
    flags = run_flags(sandbox_container(runtime, workspace))
    return subprocess.run(
        ["docker", "run", "--rm", *flags, runtime.image, *argv],
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
