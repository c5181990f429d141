"""The sandbox user is made in one place (runtimes/sandbox-user.Dockerfile) from
PETRI_SANDBOX_USER: an image built for another uid:gid has that user, owning /sandbox."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from gateway.images import USER_TAIL, build_images, image_user, user_mismatches
from gateway.runtimes import load_runtimes

ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = load_runtimes(ROOT / "runtimes")

pytestmark = pytest.mark.usefixtures("docker_ready")


def test_no_runtime_dockerfile_repeats_the_user_block() -> None:
    for runtime in RUNTIMES.values():
        text = (runtime.folder / "Dockerfile").read_text()
        instructions = [line.split()[0] for line in text.splitlines() if line[:1].isalpha()]
        assert "USER" not in instructions and "useradd" not in text, runtime.name
    assert "useradd" in (ROOT / "runtimes" / USER_TAIL).read_text()


def test_default_images_carry_the_default_user() -> None:
    for runtime in RUNTIMES.values():
        assert image_user(runtime.image) == "1000:1000"
    assert user_mismatches(RUNTIMES, "1000:1000") == []
    assert len(user_mismatches(RUNTIMES, "2000:2000")) == len(RUNTIMES)


def test_an_image_built_for_another_user_has_it() -> None:
    tag = f"petri-python:user-test-{os.getpid()}"
    runtime = dataclasses.replace(RUNTIMES["python"], image=tag)
    try:
        (result,) = build_images({"python": runtime}, sandbox_user="2000:2001", log=lambda _: None)
        assert result.status == "built"
        assert image_user(tag) == "2000:2001"
        probe = (
            "id -u; id -g; stat -c %u:%g /sandbox; pwd; "
            "python -c 'import getpass, pathlib; print(getpass.getuser(), pathlib.Path.home())'"
        )
        done = subprocess.run(
            ["docker", "run", "--rm", "--read-only", "--cap-drop", "ALL", tag, "sh", "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.split("\n")[:5] == [
            "2000",
            "2001",
            "2000:2001",
            "/sandbox",
            "sandbox /tmp",
        ]
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)


def test_a_root_sandbox_user_is_refused() -> None:
    runtime = dataclasses.replace(RUNTIMES["python"], image="petri-python:never-built")
    with pytest.raises(ValueError, match="non-root"):
        build_images({"python": runtime}, sandbox_user="0:0", log=lambda _: None)
