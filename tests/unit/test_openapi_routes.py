"""Every route the app serves is in /openapi.json, with each of its methods, and the document
describes no route the app lacks (built in-process: no Docker, no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Route

from gateway.config import Settings
from gateway.openapi import document
from gateway.routes import create_app


def test_the_document_and_the_routes_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETRI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PETRI_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    app = create_app(Settings.from_env())
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} -> {path}
        methods = route.methods or {"POST"}  # /mcp: an ASGI endpoint; POST is what it serves
        served |= {(path, m.lower()) for m in methods if m != "HEAD"}
    described = {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    assert served == described
