"""`petri keys …` and `petri audit …`: administration against a gateway's data dir
(`PETRI_DATA_DIR`), whether or not the gateway runs (it sees a new or revoked key at once).

Self-contained functions over `argparse` namespaces, so the CLI can move them as it grows."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from . import audit
from .audit import Ledger
from .auth import Keys, Principal
from .config import Settings, SettingsError
from .errors import PetriError
from .registry import Registry

CLI = Principal("system", None, True)  # records made by the command line


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_keys = sub.add_parser("keys", help="API keys and tenants")
    keys = p_keys.add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key (printed once; only its hash is kept)")
    create.add_argument("--tenant", required=True, help="whose sandboxes, secrets, records")
    create.add_argument("--admin", action="store_true", help="sees every tenant; /metrics")
    create.set_defaults(run=keys_create)
    keys.add_parser("ls", help="list keys (never the keys themselves)").set_defaults(run=keys_ls)
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")
    revoke.set_defaults(run=keys_revoke)

    p_audit = sub.add_parser("audit", help="the hash-chained audit ledger")
    ledger = p_audit.add_subparsers(dest="action", required=True)
    ledger.add_parser("verify", help="check the chain; exit 1 naming the first bad record")\
        .set_defaults(run=audit_verify)
    export = ledger.add_parser("export", help="the ledger as JSON lines (for a SIEM)")
    export.add_argument("--after", type=int, default=0, help="only records after this seq")
    export.set_defaults(run=audit_export)


def run(args: argparse.Namespace) -> int:
    command: Callable[[Registry, argparse.Namespace], int] = args.run
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"petri: bad configuration: {exc}", file=sys.stderr)
        return 2
    registry = Registry(settings.data_dir)
    try:
        return command(registry, args)
    except PetriError as exc:
        print(f"petri: {exc.message}", file=sys.stderr)
        return 1
    finally:
        registry.close()


def keys_create(registry: Registry, args: argparse.Namespace) -> int:
    keys, ledger = Keys(registry), Ledger(registry)
    with registry.transaction():
        key, info = keys.create(args.tenant, admin=args.admin)
        ledger.append(
            "key.create", info.id, {"admin": info.admin}, tenant=info.tenant, principal=CLI
        )
    print(key)
    role = "admin" if info.admin else "member"
    print(f"key {info.id} for tenant {info.tenant} ({role}): shown once, store it now",
          file=sys.stderr)
    return 0


def keys_ls(registry: Registry, args: argparse.Namespace) -> int:
    print(f"{'ID':<14}{'TENANT':<24}{'ROLE':<8}{'CREATED':<22}REVOKED")
    for info in Keys(registry).list():
        print(
            f"{info.id:<14}{info.tenant:<24}{'admin' if info.admin else 'member':<8}"
            f"{_when(info.created_at):<22}{_when(info.revoked_at) if info.revoked_at else '-'}"
        )
    return 0


def keys_revoke(registry: Registry, args: argparse.Namespace) -> int:
    keys, ledger = Keys(registry), Ledger(registry)
    with registry.transaction():
        info = keys.revoke(args.id)
        ledger.append("key.revoke", info.id, {}, tenant=info.tenant, principal=CLI)
    print(f"key {info.id} ({info.tenant}) revoked")
    return 0


def audit_verify(registry: Registry, args: argparse.Namespace) -> int:
    Ledger(registry)  # the table, on a data dir that never had one
    verdict = audit.verify(registry.db)
    if verdict.ok:
        print(f"ok: {verdict.records} record(s) chain; head {verdict.head}")
        return 0
    print(f"audit ledger broken at record {verdict.bad_seq}: {verdict.reason}", file=sys.stderr)
    return 1


def audit_export(registry: Registry, args: argparse.Namespace) -> int:
    Ledger(registry)
    out = sys.stdout
    for line in audit.export(registry.db, max(0, args.after)):
        out.write(line + "\n")
    out.flush()
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


