"""The JavaScript client (clients/js) under `node --test`, against a real gateway. Node.js 20
or later must be installed (`make test` runs scripts/ensure-node.sh): its absence fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, Gateway

pytestmark = pytest.mark.docker


def test_the_js_client_passes_its_tests_against_a_real_gateway(gateway: Gateway) -> None:
    node = shutil.which("node")
    assert node, "Node.js is missing: run scripts/ensure-node.sh"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    assert int(version.stdout.strip().lstrip("v").split(".")[0]) >= 20, version.stdout
    done = subprocess.run(
        [node, "--test", "test/"],
        cwd=ROOT / "clients" / "js",
        env={**os.environ, "PETRI_URL": gateway.url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    passed = re.search(r"^# pass (\d+)$", report, re.M)
    assert passed and int(passed.group(1)) >= 8, report[-2000:]
    assert re.search(r"^# fail 0$", report, re.M), report[-2000:]
