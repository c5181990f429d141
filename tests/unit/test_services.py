"""Serve mode's pure logic on a real SQLite registry: tokens, resolving a preview URL, and the
memory the domain keeps bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import services as svc
from gateway.errors import BadGateway, Gone, NotFound
from gateway.models import Service, now
from gateway.registry import Registry


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[svc.Services]:
    registry = Registry(tmp_path)
    settings = SimpleNamespace(public_url="http://gw:8000", preview_domain="p.example")
    sandboxes: Any = SimpleNamespace(settings=settings, registry=registry)
    yield svc.Services(sandboxes)
    registry.close()


def _service(domain: svc.Services, token: str, **fields: Any) -> Service:
    service = Service(
        fields.pop("id", "sv-1"), "sb-1", "ex-1", "python3 app.py", 8000, "/",
        fields.pop("expires_at", now() + 60), svc.token_hash(token), **fields,
    )
    domain.registry.put_service(service)
    return service


def test_tokens_are_256_bit_dns_labels() -> None:
    tokens = {svc.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert svc.TOKEN.match(token) and len(token) == 52  # 52 x 5 bits >= 256 bits


def test_resolve_unknown_revoked_expired_and_not_running(domain: svc.Services) -> None:
    token = svc.new_token()
    with pytest.raises(NotFound):
        domain.resolve(token)  # nothing stored yet
    _service(domain, token, status="exited")
    for bad in ("", "x", token[:-1], token + "a", "../" + token, token.replace(token[0], "1")):
        with pytest.raises(NotFound):
            domain.resolve(bad)
    with pytest.raises(BadGateway):  # known, not expired, not running (in this process)
        domain.resolve(token)
    with pytest.raises(BadGateway):
        domain.resolve(token.upper())  # host names ignore case; so do tokens
    domain.registry.revoke_service("sv-1")
    with pytest.raises(NotFound):
        domain.resolve(token)
    old = svc.new_token()
    _service(domain, old, id="sv-2", expires_at=now() - 1)
    with pytest.raises(Gone):
        domain.resolve(old)


def test_preview_urls_need_the_token_of_this_process(domain: svc.Services) -> None:
    token = svc.new_token()
    service = _service(domain, token)
    assert domain.preview_urls(service, "http://ignored") == (None, None)  # after a restart
    domain._tokens[service.id] = token
    assert domain.preview_urls(service, "http://ignored") == (
        f"http://gw:8000/preview/{token}/",
        f"http://{token}.p.example:8000/",
    )


def test_tokens_of_deleted_sandboxes_are_forgotten(domain: svc.Services) -> None:
    kept = _service(domain, svc.new_token(), id="sv-kept")
    domain._tokens = {f"sv-gone-{i}": "t" for i in range(svc.PRUNE_AT)}
    domain._tokens[kept.id] = "t"
    domain._touched = {"sb-gone": 1.0}
    domain._prune()
    assert domain._tokens == {kept.id: "t"} and domain._touched == {}
