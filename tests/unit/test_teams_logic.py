"""Pure logic of §11 on a real SQLite file: the ledger's chain across retention, and masking
of secrets in whole texts and in streams cut anywhere."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from gateway.audit import CHECKPOINT, Ledger, verify
from gateway.auth import SYSTEM
from gateway.registry import Registry
from gateway.vault import Masker


def test_the_ledger_verifies_across_retention_and_catches_what_follows(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    ledger = Ledger(registry)
    try:
        for i in range(10):
            ledger.append("test.step", f"t{i}", {"i": i}, principal=SYSTEM)
        assert verify(registry.db).ok
        assert ledger.prune("9999-01-01T00:00:00Z") == 9  # all but the newest
        rows = registry.db.execute("SELECT seq, action FROM audit ORDER BY seq").fetchall()
        assert rows == [(9, CHECKPOINT), (10, "test.step")]
        for i in range(3):
            ledger.append("test.more", f"m{i}", {}, principal=SYSTEM)
        assert ledger.prune("9999-01-01T00:00:00Z") == 3  # an old checkpoint goes too
        verdict = verify(registry.db)
        assert verdict.ok and verdict.records == 2, verdict
        registry.db.execute("DROP TRIGGER audit_append_only")
        registry.db.execute("UPDATE audit SET target = 'x' WHERE seq = 13")
        verdict = verify(registry.db)
        assert not verdict.ok and verdict.bad_seq == 13
    finally:
        registry.close()


def test_the_ledger_refuses_updates_and_deletes(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    try:
        Ledger(registry).append("a", "b", {}, principal=SYSTEM)
        for sql in ("UPDATE audit SET action = 'x'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                registry.db.execute(sql)
    finally:
        registry.close()


SECRET = "s3cr3t-Välue/+="


def _forms() -> list[str]:
    raw = SECRET.encode()
    return [SECRET, base64.b64encode(raw).decode(), quote_plus(SECRET)]


@pytest.mark.parametrize("form", _forms())
def test_a_secret_is_masked_wherever_a_stream_is_cut(form: str) -> None:
    text = f"before {form} middle {form}{form} after"
    for cut in range(len(text) + 1):
        for second in range(cut, len(text) + 1):
            masker = Masker([SECRET])
            out = "".join(
                masker.stream("o", part) for part in (text[:cut], text[cut:second], text[second:])
            ) + masker.flush("o")
            assert out == "before *** middle ****** after", (cut, second, out)


def test_a_held_start_is_released_when_no_secret_follows() -> None:
    masker = Masker([SECRET])
    assert masker.stream("o", "abc s3") == "abc "
    assert masker.stream("o", "x") == "s3x"
    assert masker.stream("o", "s3cr3t-V") == ""
    assert masker.flush("o") == "***"  # a long start of a value is masked even at the end


def test_base64_inside_a_longer_encoded_text() -> None:
    masker = Masker([SECRET])
    for prefix in (b"", b"u", b"us", b"user:"):
        for suffix in (b"", b"!", b"!!", b" tail"):
            encoded = base64.b64encode(prefix + SECRET.encode() + suffix).decode()
            assert "***" in masker.text(encoded), (prefix, suffix)


def test_a_request_path_cannot_forge_a_log_line() -> None:
    from gateway.logs import printable

    line = printable("/v1/sandboxes/x\nINFO petri.access [forged]: GET / 200\u2028\x1b[2J")
    assert "\n" not in line and "\u2028" not in line and "\x1b" not in line
    assert line.startswith("/v1/sandboxes/x\\x0aINFO")
    assert len(printable("/" + "a" * 10000)) == 512


def test_capabilities_never_reach_an_access_line() -> None:
    from gateway.logs import target

    line = target("/v1/sandboxes/sb-1/executions/ex-1/events", b"after=3&token=123.abc.x&b=1")
    assert line == "/v1/sandboxes/sb-1/executions/ex-1/events?after=3&token=…&b=1"
    assert target("/preview/SeCrEtToKeN/app", b"q=1") == "/preview/…/app?q=1"
