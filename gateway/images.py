"""Build the runtime images from `runtimes/<lang>/` through the `docker` CLI.

An image is rebuilt only when its folder's content or its base image changed: the image
carries the label `petri.hash`, a digest of both, and a build whose digest matches is skipped.
Where no registry can be reached, the base is bootstrapped from Debian packages with
`debootstrap` and imported as `petri-base:trixie`. Every runtime's Dockerfile gets
`runtimes/sandbox-user.Dockerfile` appended (the sandbox user, made with PETRI_SANDBOX_USER's
uid and gid, WORKDIR, USER, CMD): one place for what all four images share.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.errors import ImageBuildError as ImageBuildError  # re-exported for server.py
from gateway.runtimes import Runtime

Log = Callable[[str], None]

REGISTRY_BASE = "debian:trixie-slim"
LOCAL_BASE = "petri-base:trixie"
DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_ENV = "PETRI_BASE_IMAGE"
HASH_LABEL = "petri.hash"
RUNTIME_LABEL = "petri.runtime"
USER_LABEL = "petri.sandbox_user"
USER_TAIL = "sandbox-user.Dockerfile"
DEFAULT_SANDBOX_USER = "1000:1000"
PULL_TIMEOUT_SECONDS = 60.0
_IGNORED_PARTS = frozenset({"__pycache__", ".pytest_cache", ".git"})
_ERROR_TAIL_LINES = 20


@dataclass(frozen=True)
class BuildResult:
    name: str
    image: str
    status: Literal["built", "unchanged"]
    seconds: float


def content_hash(folder: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file under `folder`."""
    digest = hashlib.sha256()
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not _IGNORED_PARTS.intersection(path.relative_to(folder).parts)
    )
    for rel in files:
        data = (folder / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def ensure_base(log: Log = print, override: str = "") -> str:
    """Return the base image ref to build from, making `petri-base:trixie` when needed.

    Order: `override` (Settings.base_image, PETRI_BASE_IMAGE); `debian:trixie-slim` if
    present or pullable (60 s); else `petri-base:trixie`, debootstrapped if missing.
    """
    override = override.strip()
    if override:
        log(f"base image: {override} (from {BASE_ENV})")
        return override
    if _image_exists(REGISTRY_BASE):
        return REGISTRY_BASE
    log(f"base image: trying docker pull {REGISTRY_BASE}")
    try:
        pulled = subprocess.run(
            ["docker", "pull", REGISTRY_BASE],
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log(f"base image: pull timed out after {PULL_TIMEOUT_SECONDS:.0f} s")
    else:
        if pulled.returncode == 0:
            return REGISTRY_BASE
        log(f"base image: pull failed: {(pulled.stderr or pulled.stdout).strip()}")
    if not _image_exists(LOCAL_BASE):
        _bootstrap_base(log)
    log(f"base image: {LOCAL_BASE}")
    return LOCAL_BASE


def build_images(
    runtimes: Mapping[str, Runtime],
    names: Sequence[str] | None = None,
    *,
    force: bool = False,
    log: Log = print,
    base_image: str = "",
    sandbox_user: str = DEFAULT_SANDBOX_USER,
) -> list[BuildResult]:
    """Build the named runtimes' images (all by default), skipping unchanged ones.

    `force` rebuilds every named image without Docker's layer cache (fresh packages);
    `sandbox_user` ("uid:gid", PETRI_SANDBOX_USER) is the user the images make and run as.
    """
    selected = list(runtimes) if not names else list(dict.fromkeys(names))
    unknown = [name for name in selected if name not in runtimes]
    if unknown:
        known = ", ".join(sorted(runtimes))
        raise ValueError(f"unknown runtime(s): {', '.join(unknown)} (known: {known})")
    base = ensure_base(log, base_image)
    base_id = _image_id(base) or "absent"
    results: list[BuildResult] = []
    for name in selected:
        results.append(
            _build_one(runtimes[name], base, base_id, sandbox_user, force=force, log=log)
        )
    return results


def image_hash(
    runtime: Runtime, base: str, base_id: str, sandbox_user: str = DEFAULT_SANDBOX_USER
) -> str:
    """The `petri.hash` label value: the folder's content, the shared tail, the sandbox user
    and the base image it builds on."""
    tail = hashlib.sha256(_user_tail(runtime).read_bytes()).hexdigest()
    folded = f"{content_hash(runtime.folder)}\0{tail}\0{sandbox_user}\0{base}\0{base_id}"
    return hashlib.sha256(folded.encode()).hexdigest()


def image_user(image: str) -> str | None:
    """The sandbox user ("uid:gid") an image was built for, None if absent or unlabelled."""
    return _image_label(image, USER_LABEL) or None


def user_mismatches(runtimes: Mapping[str, Runtime], sandbox_user: str) -> list[str]:
    """One line per built image whose sandbox user is not `sandbox_user` (PETRI_SANDBOX_USER
    changed since `petri images build`: programs would run as a user without a passwd entry)."""
    lines = []
    for runtime in runtimes.values():
        built_for = image_user(runtime.image)
        if built_for is not None and built_for != sandbox_user:
            lines.append(
                f"{runtime.image} was built for sandbox user {built_for}, but "
                f"PETRI_SANDBOX_USER is {sandbox_user}: run `petri images build`"
            )
    return lines


def _user_tail(runtime: Runtime) -> Path:
    return runtime.folder.parent / USER_TAIL


def _sandbox_ids(sandbox_user: str) -> tuple[str, str]:
    uid, sep, gid = sandbox_user.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()) or int(uid) == 0:
        raise ValueError(f"sandbox user must be a non-root 'uid:gid', got {sandbox_user!r}")
    return uid, gid


def _build_one(
    runtime: Runtime, base: str, base_id: str, sandbox_user: str, *, force: bool, log: Log
) -> BuildResult:
    started = time.monotonic()
    uid, gid = _sandbox_ids(sandbox_user)
    wanted = image_hash(runtime, base, base_id, sandbox_user)
    if not force and _image_label(runtime.image, HASH_LABEL) == wanted:
        log(f"{runtime.name}: {runtime.image} is up to date")
        return BuildResult(runtime.name, runtime.image, "unchanged", time.monotonic() - started)
    log(f"{runtime.name}: building {runtime.image} from {base}")
    previous = _image_id(runtime.image)
    argv = [
        "docker",
        "build",
        "--force-rm",
        "--label",
        f"{HASH_LABEL}={wanted}",
        "--label",
        f"{RUNTIME_LABEL}={runtime.name}",
        "--label",
        f"{USER_LABEL}={uid}:{gid}",
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        f"SANDBOX_UID={uid}",
        "--build-arg",
        f"SANDBOX_GID={gid}",
        "-t",
        runtime.image,
    ]
    if force:
        argv.append("--no-cache")
    with tempfile.TemporaryDirectory(prefix="petri-dockerfile-") as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        own = (runtime.folder / "Dockerfile").read_text()
        dockerfile.write_text(own.rstrip("\n") + "\n\n" + _user_tail(runtime).read_text())
        argv += ["-f", str(dockerfile), str(runtime.folder)]
        code, tail = _stream(argv, prefix=f"{runtime.name}: ", log=log)
    if code != 0:
        raise ImageBuildError(
            f"building the {runtime.name!r} runtime image {runtime.image} failed "
            f"(docker build exit {code}):\n" + "\n".join(tail)
        )
    if previous is not None and previous != _image_id(runtime.image):
        # The replaced image is now untagged; drop it unless a container still uses it.
        subprocess.run(["docker", "image", "rm", previous], capture_output=True, check=False)
    seconds = time.monotonic() - started
    log(f"{runtime.name}: built {runtime.image} in {seconds:.1f} s")
    return BuildResult(runtime.name, runtime.image, "built", seconds)


def _stream(argv: list[str], *, prefix: str, log: Log) -> tuple[int, list[str]]:
    """Run `argv`, sending each output line to `log`; return the exit code and the last lines."""
    env = dict(os.environ)
    # The classic builder needs no buildx plugin, resolves FROM from the local image store
    # (petri-base is never on a registry) and prints plain lines; callers may override.
    env.setdefault("DOCKER_BUILDKIT", "0")
    tail: deque[str] = deque(maxlen=_ERROR_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"cannot run {argv[0]!r}: is it installed?") from exc
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            text = line.rstrip("\n")
            tail.append(text)
            log(prefix + text)
    return proc.returncode, list(tail)


def _bootstrap_base(log: Log) -> None:
    """Make `petri-base:trixie` from Debian packages: debootstrap, then docker import."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            f"no base image: {REGISTRY_BASE} cannot be pulled and {LOCAL_BASE} does not exist; "
            "to bootstrap it from Debian packages, run: apt-get install debootstrap"
        )
    log(f"base image: bootstrapping {LOCAL_BASE} with debootstrap (takes a few minutes)")
    with tempfile.TemporaryDirectory(prefix="petri-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        code, tail = _stream(
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
            prefix="debootstrap: ",
            log=log,
        )
        if code != 0:
            raise ImageBuildError(
                f"debootstrap of {DEBIAN_SUITE} failed (exit {code}):\n" + "\n".join(tail)
            )
        # apt's package lists and caches are refreshed by every runtime build anyway.
        for leftover in ("var/lib/apt/lists", "var/cache/apt"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(
            ["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            imported = subprocess.run(
                ["docker", "import", "-", LOCAL_BASE],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar_code = tar.wait()
        if tar_code != 0 or imported.returncode != 0:
            raise ImageBuildError(
                f"importing {LOCAL_BASE} failed (tar exit {tar_code}, docker import exit "
                f"{imported.returncode}): {imported.stderr.strip()}"
            )
    log(f"base image: created {LOCAL_BASE}")


def _inspect(ref: str, fmt: str) -> str | None:
    try:
        done = subprocess.run(
            ["docker", "image", "inspect", "--format", fmt, ref],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ImageBuildError("cannot run 'docker': is the Docker CLI installed?") from exc
    return done.stdout.strip() if done.returncode == 0 else None


def _image_exists(ref: str) -> bool:
    return _inspect(ref, "{{.Id}}") is not None


def _image_id(ref: str) -> str | None:
    return _inspect(ref, "{{.Id}}")


def _image_label(ref: str, label: str) -> str | None:
    return _inspect(ref, f'{{{{ index .Config.Labels "{label}" }}}}')
