"""Self-hosting: the gateway's own image (Dockerfile) and docker-compose.yml.

The image is built for real from the local base (debian:trixie-slim, else the
debootstrapped petri-base:trixie), run against the host's Docker engine through its socket
with the workspace root mounted at the same path on both sides, and must serve /healthz,
/readyz and a real sandbox exec. Cold builds take a minute or two; later ones hit the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.index import Server, bridge_address, build_wheel, write_simple_index

IMAGE = os.environ.get("PETRI_SELFTEST_IMAGE", "petri-gateway:selftest")
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_DIRS = ("gateway", "petri_sdk", "runtimes")
BUILD_TIMEOUT_SECONDS = 1800
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _host_ca_bundle() -> Path | None:
    for candidate in (
        os.environ.get("PETRI_CA_BUNDLE"),
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _build_context(dest: Path) -> None:
    for name in CONTEXT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in CONTEXT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    bundle = _host_ca_bundle()
    if bundle is not None:  # pip in the build stage must trust the same CAs as the host
        shutil.copy2(bundle, dest / "ca-bundle.crt")


def _docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host.removeprefix("unix://")
    return "/var/run/docker.sock"


@pytest.fixture(scope="module")
def gateway_image(docker_ready: None) -> str:
    from gateway.images import ensure_base

    lines: list[str] = []
    base = ensure_base(log=lines.append)
    previous = _docker("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="petri-gwctx-") as tmp:
        _build_context(Path(tmp))
        started = time.monotonic()
        built = subprocess.run(
            ["docker", "build", "--build-arg", f"BASE={base}", "-t", IMAGE, tmp],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            check=False,
        )
    if built.returncode != 0:
        tail = "\n".join((built.stdout + built.stderr).splitlines()[-40:])
        pytest.fail(f"building the gateway image from {base} failed:\n{tail}")
    print(f"gateway image built from {base} in {time.monotonic() - started:.1f} s")
    current = _docker("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    if previous and previous != current:
        _docker("image", "rm", previous)  # the replaced build; fails harmlessly if still in use
    return IMAGE


@pytest.fixture(scope="module")
def bridge_index() -> Iterator[Server]:
    """A package index on the host's docker0 address, which a gateway container reaches
    from its own network namespace and from the host's alike."""
    root = Path(tempfile.mkdtemp(prefix="petri-selfhost-index-"))
    wheel = build_wheel(root, "petri-demo-pkg", "1.0", "petri_demo_pkg", "VALUE = 'demo'\n")
    write_simple_index(root, "petri-demo-pkg", [wheel])
    server = Server(root, host=bridge_address()).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["bridge", "host"])
def containerized_gateway(
    request: pytest.FixtureRequest, gateway_image: str, bridge_index: Server
) -> Iterator[tuple[str, Path, str, dict[str, str]]]:
    """The gateway image serving on 127.0.0.1:<free port>: published from its own network
    namespace (`-p`, plain `docker run`) or in the host's (docker-compose.yml's way), its
    egress allowlist holding the test's index. Yields (url, workspace root, container name,
    headers carrying the key the 0.0.0.0 variant needs)."""
    workspaces = Path(tempfile.mkdtemp(prefix="petri-selfhost-ws-"))
    name = f"petri-selfhost-{uuid.uuid4().hex[:10]}"
    port = free_port()
    # The gateway's data dir is a volume of its own; its instance id (the label its orphan
    # sweep goes by) is made there at first start, so equal paths in two containers are safe.
    data_dir = "/var/lib/petri/data"
    key_file = f"{data_dir}/selftest.key"
    if request.param == "host":
        network = ["--network", "host"]
        serve = ["--host", "127.0.0.1", "--port", str(port)]
    else:
        # The image serves 0.0.0.0 in its own namespace, which the gateway refuses with no
        # API key: one is made first, as a team does (docs/operations.md).
        network = ["-p", f"127.0.0.1:{port}:8000", "--entrypoint", "sh"]
        serve = [
            "-c",
            f"mkdir -p {data_dir} && petri keys create --tenant selftest --admin > {key_file} && "
            "exec petri serve --host 0.0.0.0 --port 8000",
        ]
    run = _docker(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "petri.selftest=1",
        *network,
        "-v",
        f"{_docker_socket()}:/var/run/docker.sock",
        "-v",
        f"{workspaces}:{workspaces}",
        "-e",
        f"PETRI_WORKSPACE_ROOT={workspaces}",
        "-e",
        f"PETRI_DATA_DIR={data_dir}",
        "-e",
        "PETRI_DISK_MB=0",
        "-e",
        "PETRI_LOG_LEVEL=info",
        "-e",
        f"PETRI_EGRESS_ALLOW={bridge_index.host}:{bridge_index.port}",
        gateway_image,
        *serve,
    )
    try:
        assert run.returncode == 0, f"docker run failed: {run.stderr.strip()}"
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(name, url)
        key = _docker("exec", name, "cat", key_file).stdout.strip()  # none on loopback
        yield url, workspaces, name, {"Authorization": f"Bearer {key}"} if key else {}
    finally:
        logs = _docker("logs", "--tail", "60", name)
        instance = _docker("exec", name, "cat", f"{data_dir}/instance-id").stdout.strip()
        _docker("rm", "-f", "-v", name, timeout=60)
        leftovers = _docker("ps", "-aq", "--filter", f"label=petri.instance={instance}")
        if instance and leftovers.stdout.split():
            _docker("rm", "-f", *leftovers.stdout.split(), timeout=60)
        shutil.rmtree(workspaces, ignore_errors=True)
        print(f"gateway container logs ({request.param}):\n{logs.stdout}{logs.stderr}")


def _wait_healthy(name: str, url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = _docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state in ("exited", "dead"):
            logs = _docker("logs", "--tail", "60", name)
            pytest.fail(f"gateway container {state}:\n{logs.stdout}{logs.stderr}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    logs = _docker("logs", "--tail", "60", name)
    pytest.fail(f"gateway container did not answer /healthz in {seconds:.0f} s:\n{logs.stdout}")


@pytest.mark.docker
def test_gateway_image_serves_and_reaches_docker(
    containerized_gateway: tuple[str, Path, str, dict[str, str]], bridge_index: Server
) -> None:
    url, workspaces, _, headers = containerized_gateway
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["docker"] == "ok"

        # A real sandbox: the gateway (in its container) writes the workspace and the host's
        # daemon bind-mounts the same path, so the program sees the file the API wrote.
        created = client.post("/v1/sandboxes", json={"language": "python"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        try:
            put = client.put(f"/v1/sandboxes/{sid}/files/main.py", content=b"print(6 * 7)\n")
            assert put.status_code in (200, 201), put.text
            assert (workspaces / sid / "main.py").read_bytes() == b"print(6 * 7)\n"
            ran = client.post(f"/v1/sandboxes/{sid}/exec", json={"filename": "main.py"})
            assert ran.status_code == 200, ran.text
            assert ran.json()["exit_code"] == 0 and ran.json()["stdout"] == "42\n", ran.text
        finally:
            assert client.delete(f"/v1/sandboxes/{sid}").status_code == 204
        assert not (workspaces / sid).exists()

        # A real install: the install container has no network; the gateway serves its
        # egress proxy on a socket under the workspace root (the path the host shares), the
        # daemon bind-mounts it from the host, and the proxy reaches the test's index.
        env = {"PIP_INDEX_URL": f"{bridge_index.url}/simple", "PIP_TRUSTED_HOST": bridge_index.host}
        created = client.post("/v1/sandboxes", json={"language": "python", "env": env})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        try:
            put = client.put(
                f"/v1/sandboxes/{sid}/files/requirements.txt", content=b"petri-demo-pkg\n"
            )
            assert put.status_code in (200, 201), put.text
            code = "import petri_demo_pkg\nprint(petri_demo_pkg.VALUE)\n"
            ran = client.post(f"/v1/sandboxes/{sid}/exec", json={"code": code}).json()
            assert ran["install"]["status"] == "installed", ran["install"]["log"][-3000:]
            assert ran["stdout"] == "demo\n", ran
        finally:
            assert client.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert (workspaces / ".egress").is_dir()
    assert bridge_index.hits, "the index was never asked"


# --- docker-compose.yml ------------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    plugin = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${NAME}` / `${NAME:-default}` substitution, for the no-Compose fallback."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    return value


def _compose_config(env: dict[str, str]) -> dict[str, Any]:
    """The compose file as Compose resolves it (or, where no Compose is installed, as parsed
    and interpolated here)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PETRI_")} | env
    command = _compose_command()
    if command is not None:
        done = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "config"],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 0, f"compose config rejects the file: {done.stderr}"
        text = done.stdout
    else:
        text = COMPOSE_FILE.read_text()
    import yaml  # PyYAML: installed with the dev extras (schemathesis needs it)

    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return dict(_interpolate(loaded, full_env) if command is None else loaded)


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short (`a:b[:ro]`) or long syntax."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        else:
            source, target = str(entry.get("source", "")), str(entry["target"])
        mounts.append((source, target))
    return mounts


@pytest.mark.parametrize("root", [None, "/srv/petri test/workspaces"])
def test_compose_file_mounts_workspaces_at_the_same_path(root: str | None) -> None:
    env = {"PETRI_WORKSPACE_ROOT": root} if root else {}
    config = _compose_config(env)
    service = config["services"]["petri"]
    environment = service["environment"]
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    workspace_root = root or "/var/lib/petri/workspaces"
    assert environment["PETRI_WORKSPACE_ROOT"] == workspace_root
    mounts = _bind_mounts(service)
    assert (workspace_root, workspace_root) in mounts, mounts
    assert ("/var/run/docker.sock", "/var/run/docker.sock") in mounts, mounts
    ca_bundle = environment.get("PETRI_CA_BUNDLE")
    if ca_bundle:
        assert (ca_bundle, ca_bundle) in mounts, "the CA bundle must be at the same path too"
    targets = [target for _, target in mounts]
    assert environment["PETRI_DATA_DIR"] in targets, "the data dir must be a volume"
    if not service.get("privileged"):
        assert str(environment.get("PETRI_DISK_MB")) == "0", "loop-mount quotas need privileged"
    # Host networking (see the compose file), so the API address is the command's business.
    assert service.get("network_mode") == "host"
    command = service["command"]
    command = command.split() if isinstance(command, str) else list(command)
    assert command == ["--host", "127.0.0.1", "--port", "8000"], command
