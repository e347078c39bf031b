"""engine/settings.py: settings from STEPDECK_* variables, checked, with flags winning."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.settings import ENV_NAMES, Settings, SettingsError, from_env
from models.db import DEFAULT_DB_URL
from tests.bad_values import bad_values


def test_defaults_without_any_variable() -> None:
    s = from_env({})
    assert s == Settings()
    assert (s.db_url, s.workflows_dir, s.host, s.port) == (DEFAULT_DB_URL, Path("workflows"), "127.0.0.1", 8080)
    assert (s.heartbeat_interval_s, s.stale_after_s, s.on_orphan, s.max_tokens) == (5.0, 120.0, "fail", 16384)


def test_every_setting_has_its_documented_variable() -> None:
    assert set(ENV_NAMES) == set(Settings.__dataclass_fields__)
    for documented in (
        "STEPDECK_DB",
        "STEPDECK_WORKFLOWS",
        "STEPDECK_HOST",
        "STEPDECK_PORT",
        "STEPDECK_HEARTBEAT_INTERVAL_S",
        "STEPDECK_STALE_AFTER_S",
        "STEPDECK_SWEEP_INTERVAL_S",
        "STEPDECK_ON_ORPHAN",
        "STEPDECK_MAX_TOKENS",
    ):
        assert documented in ENV_NAMES.values()


def test_values_are_parsed_to_their_types() -> None:
    s = from_env(
        {
            "STEPDECK_DB": "sqlite://elsewhere.db",
            "STEPDECK_WORKFLOWS": "/srv/flows",
            "STEPDECK_HOST": "0.0.0.0",
            "STEPDECK_PORT": " 9000 ",
            "STEPDECK_HEARTBEAT_INTERVAL_S": "2.5",
            "STEPDECK_STALE_AFTER_S": "30",
            "STEPDECK_SWEEP_INTERVAL_S": "10",
            "STEPDECK_ON_ORPHAN": "fail",
            "STEPDECK_MAX_TOKENS": "4096",
        }
    )
    assert s.db_url == "sqlite://elsewhere.db"
    assert s.workflows_dir == Path("/srv/flows")
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert (s.heartbeat_interval_s, s.stale_after_s, s.sweep_interval_s) == (2.5, 30.0, 10.0)
    assert isinstance(s.stale_after_s, float)
    assert s.max_tokens == 4096


def test_empty_variables_mean_the_default() -> None:
    assert from_env({"STEPDECK_PORT": "", "STEPDECK_HOST": "   "}) == Settings()


@bad_values(
    "variable, value, message",
    {
        "STEPDECK_PORT": {
            "eighty": "STEPDECK_PORT='eighty' is not a valid int",
            "80.5": "STEPDECK_PORT='80.5' is not a valid int",
            "0": "STEPDECK_PORT must be between 1 and 65535, got 0",
            "70000": "STEPDECK_PORT must be between 1 and 65535, got 70000",
        },
        "STEPDECK_MAX_TOKENS": {
            "lots": "STEPDECK_MAX_TOKENS='lots' is not a valid int",
            "0": "STEPDECK_MAX_TOKENS must be at least 1, got 0",
        },
        "STEPDECK_HEARTBEAT_INTERVAL_S": {"5s": "STEPDECK_HEARTBEAT_INTERVAL_S='5s' is not a valid float"},
        "STEPDECK_SWEEP_INTERVAL_S": {"-1": "STEPDECK_SWEEP_INTERVAL_S must be greater than 0, got -1.0"},
        "STEPDECK_ON_ORPHAN": {"retry": "STEPDECK_ON_ORPHAN must be one of"},
    },
)
def test_a_bad_value_raises_an_error_naming_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env({variable: value})
    assert str(info.value).startswith(message)
    assert variable in str(info.value)


def test_a_bad_policy_lists_the_known_ones() -> None:
    with pytest.raises(SettingsError, match=r"STEPDECK_ON_ORPHAN must be one of fail.*got 'retry'"):
        from_env({"STEPDECK_ON_ORPHAN": "retry"})


@pytest.mark.parametrize(("heartbeat", "stale"), [("5", "5"), ("10", "5"), ("1", "0.5")])
def test_stale_after_must_exceed_the_heartbeat_interval(heartbeat: str, stale: str) -> None:
    env = {"STEPDECK_HEARTBEAT_INTERVAL_S": heartbeat, "STEPDECK_STALE_AFTER_S": stale}
    with pytest.raises(SettingsError) as info:
        from_env(env)
    assert "STEPDECK_STALE_AFTER_S" in str(info.value)
    assert "STEPDECK_HEARTBEAT_INTERVAL_S" in str(info.value)


def test_flags_override_the_environment_and_none_means_not_given() -> None:
    s = from_env({"STEPDECK_PORT": "9000", "STEPDECK_HOST": "0.0.0.0", "STEPDECK_DB": "sqlite://env.db"})
    o = s.with_overrides(port=7000, host=None, db_url="sqlite://flag.db")
    assert (o.port, o.host, o.db_url) == (7000, "0.0.0.0", "sqlite://flag.db")
    assert (s.port, s.db_url) == (9000, "sqlite://env.db")  # the original is unchanged


def test_flags_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="STEPDECK_PORT"):
        Settings().with_overrides(port=0)
    with pytest.raises(SettingsError, match="STEPDECK_STALE_AFTER_S"):
        Settings().with_overrides(stale_after_s=1.0, heartbeat_interval_s=2.0)
    with pytest.raises(SettingsError, match="STEPDECK_ON_ORPHAN"):
        Settings().with_overrides(on_orphan="ignore")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPDECK_PORT", "8181")
    assert from_env().port == 8181
    monkeypatch.setenv("STEPDECK_PORT", "bad")
    with pytest.raises(SettingsError, match="STEPDECK_PORT"):
        from_env()
