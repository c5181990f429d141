"""The parts of DESIGN §11 one gateway holds, made together over its registry: keys and
events tokens (auth), the ledger (audit), secrets (vault), quotas, retention and metrics.
`Sandboxes` reaches them as `sandboxes.teams`; the HTTP layer as `app.state.teams`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .audit import Ledger
from .auth import Keys, Tokens, is_loopback
from .config import Settings
from .errors import SettingsError
from .metrics import Metrics
from .quotas import Quotas
from .registry import Registry
from .retention import Retention
from .vault import Vault


@dataclass
class Teams:
    settings: Settings
    registry: Registry
    keys: Keys
    tokens: Tokens
    ledger: Ledger
    vault: Vault
    quotas: Quotas
    retention: Retention
    metrics: Metrics

    @classmethod
    def open(cls, settings: Settings, registry: Registry) -> Teams:
        keys = Keys(registry)
        ledger = Ledger(registry)
        return cls(
            settings,
            registry,
            keys,
            Tokens(registry, keys),
            ledger,
            Vault(registry, secrets_key_path(settings)),
            Quotas(settings, registry),
            Retention(settings, registry, ledger),
            Metrics(registry.count_sandboxes),
        )

    @property
    def loopback(self) -> bool:
        return is_loopback(self.settings.host)

    def check_exposure(self) -> None:
        """Refuse to serve a non-loopback address with no key: anyone who reached it could
        run code."""
        if not self.loopback and not self.keys.exist():
            raise SettingsError(
                f"refusing to serve {self.settings.host} with no API key: anyone who reaches "
                "it could run code. Create one first (`petri keys create --tenant NAME "
                "--admin`, with the same PETRI_DATA_DIR), or bind 127.0.0.1"
            )


def secrets_key_path(settings: Settings) -> Path:
    return Path(settings.secrets_key_file or settings.data_dir / "secrets.key")
