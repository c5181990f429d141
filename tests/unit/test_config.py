"""Settings: read from PETRI_* once, validated, and documented in the README's table."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings, SettingsError, describe

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_validate_and_env_overrides() -> None:
    s = Settings.from_env({"PETRI_MEMORY_MB": "256", "PETRI_CPUS": "0.5",
                           "PETRI_PERSIST_EVENTS": "false", "PETRI_DATA_DIR": "/x"})
    assert s.memory_mb == 256 and s.cpus == 0.5 and s.persist_events is False
    assert s.data_dir == Path("/x") and s.uid == 1000 and s.gid == 1000


@pytest.mark.parametrize("env,names", [
    ({"PETRI_MEMORY_MB": "lots"}, "PETRI_MEMORY_MB"),
    ({"PETRI_PERSIST_EVENTS": "maybe"}, "PETRI_PERSIST_EVENTS"),
    ({"PETRI_MEMORY_MB": "-1"}, "PETRI_MEMORY_MB"),
    ({"PETRI_EXEC_TIMEOUT_SECONDS": "0"}, "PETRI_EXEC_TIMEOUT_SECONDS"),
    ({"PETRI_MEMORY_MB": "9000", "PETRI_MAX_MEMORY_MB": "4096"}, "PETRI_MEMORY_MB"),
    ({"PETRI_SANDBOX_USER": "0:0"}, "PETRI_SANDBOX_USER"),
    ({"PETRI_CA_BUNDLE": "/nonexistent.pem"}, "PETRI_CA_BUNDLE"),
    ({"PETRI_RUNTIMES_DIR": "/nonexistent"}, "PETRI_RUNTIMES_DIR"),
])
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in describe() if f"| `{name}` |" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
