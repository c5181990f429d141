"""Shared fixtures: a real gateway (uvicorn subprocess) on a free port, real Docker, real images.

No test skips for lack of Docker: a missing engine is a failure (CI provisions one).

The `docker` marker is set here, never by hand: on every test under tests/integration and
tests/hostile (they drive a real gateway) and on every test that uses `docker_ready` (so
`gateway`, `client`, `sandbox`, ...). `pytest -m "not docker"` (make test-fast) is what is
left: the unit tests and the domain and HTTP layer over tests/fake_backend.py. Those run with
Docker unreachable (DOCKER_HOST points nowhere) and fail if anything opens the engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.backend import INSTANCE
from gateway.registry import instance_id

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ROOT / "runtimes"


DOCKER_DIRS = ("integration", "hostile")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        under = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests").parts[0]
        if under in DOCKER_DIRS or "docker_ready" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def _no_docker_unless_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test without the `docker` marker cannot reach the engine: the CLI and aiodocker
    find no daemon, and the Docker backend refuses to open a client."""
    if request.node.get_closest_marker("docker") is not None:
        return
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")

    def refuse(self: object) -> None:
        raise AssertionError("a test without the `docker` marker opened the Docker engine")

    from gateway import runner

    monkeypatch.setattr(runner.Runner, "docker", property(refuse))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    """A gateway process with its own data dir and workspace root."""

    url: str
    data_dir: Path
    workspace_root: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    module: str = "gateway"  # what `python -m` runs (tests.faulty_gateway: one more route)

    def start(self) -> None:
        self.log_path = self.data_dir.parent / f"gateway-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120), **kw)


def make_gateway(tmp: Path, **settings: str) -> Gateway:
    port = free_port()
    data, workspaces = tmp / "data", tmp / "workspaces"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETRI_")}
    env.update(
        {
            "PETRI_DATA_DIR": str(data),
            "PETRI_WORKSPACE_ROOT": str(workspaces),
            "PETRI_RUNTIMES_DIR": str(RUNTIMES),
            "PETRI_DISK_MB": "256",
            "PETRI_LOG_LEVEL": "warning",
            # No warm pool unless a test asks (tests/integration/test_pool.py): dozens of
            # gateways with a few idle containers each would only cost the machine.
            "PETRI_POOL_SIZE": "0",
        }
    )
    env.update({f"PETRI_{k.upper()}": v for k, v in settings.items()})
    return Gateway(f"http://127.0.0.1:{port}", data, workspaces, env, port)


def container_ids(label: str) -> list[str]:
    """Ids of every container (running or not) carrying `label` (`key=value`)."""
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()


def cleanup_containers(gateway_dir: Path) -> None:
    ids = container_ids(f"{INSTANCE}={instance_id(gateway_dir / 'data')}")
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """The engine must answer and the runtime images must exist (built when missing)."""
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.fail("Docker engine is not reachable: run scripts/ensure-docker.sh first")
    from gateway.images import build_images
    from gateway.runtimes import load_runtimes

    build_images(load_runtimes(RUNTIMES), log=lambda line: None)


@contextlib.contextmanager
def running_gateway(
    name: str, *, env: dict[str, str] | None = None, module: str = "gateway", **settings: str
) -> Iterator[Gateway]:
    """A gateway of its own (fresh directories, `settings` as PETRI_* variables, extra `env`),
    started, and afterwards stopped with every container and directory it made removed."""
    tmp = Path(tempfile.mkdtemp(prefix=f"petri-{name}-"))
    gw = make_gateway(tmp, **settings)
    gw.env.update(env or {})
    gw.module = module
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        cleanup_containers(tmp)
        remove_tree(tmp)


@pytest.fixture(scope="session")
def gateway(docker_ready: None) -> Iterator[Gateway]:
    with running_gateway("test") as gw:
        yield gw


def remove_tree(tmp: Path) -> None:
    for mount in sorted(Path("/proc/mounts").read_text().splitlines(), reverse=True):
        target = mount.split()[1]
        if target.startswith(str(tmp)):
            subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


@pytest.fixture
def new_sandbox(client: httpx.Client) -> Iterator[Callable[..., dict[str, Any]]]:
    made: list[str] = []

    def make(language: str = "python", **body: Any) -> dict[str, Any]:
        r = client.post("/v1/sandboxes", json={"language": language, **body})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        return dict(r.json())

    yield make
    for sid in made:
        client.delete(f"/v1/sandboxes/{sid}")


@pytest.fixture
def sandbox(new_sandbox: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return new_sandbox("python")
