"""Settings from environment variables (`STEPDECK_*`), overridden by command-line flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from models.db import DEFAULT_DB_URL

ON_ORPHAN_POLICIES = ("fail", "resume")


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    workflows_dir: Path = Path("workflows")
    host: str = "127.0.0.1"
    port: int = 8080
    heartbeat_interval_s: float = 5.0
    stale_after_s: float = 120.0
    sweep_interval_s: float = 60.0
    on_orphan: str = "fail"
    max_tokens: int = 16384
    max_concurrent_runs: int = 32
    max_concurrent_steps: int = 32
    poll_interval_s: float = 1.0  # how often an idle engine looks for queued runs made elsewhere
    shutdown_grace_s: float = 5.0  # how long in-flight steps may finish when the server stops
    retention_days: float = 0.0  # finished runs older than this are deleted; 0 keeps them forever

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given (non-None) values, e.g. from command-line flags."""
        return _checked(replace(self, **{k: v for k, v in overrides.items() if v is not None}))


# setting name -> environment variable
ENV_NAMES = {
    "db_url": "STEPDECK_DB",
    "workflows_dir": "STEPDECK_WORKFLOWS",
    "host": "STEPDECK_HOST",
    "port": "STEPDECK_PORT",
    "heartbeat_interval_s": "STEPDECK_HEARTBEAT_INTERVAL_S",
    "stale_after_s": "STEPDECK_STALE_AFTER_S",
    "sweep_interval_s": "STEPDECK_SWEEP_INTERVAL_S",
    "on_orphan": "STEPDECK_ON_ORPHAN",
    "max_tokens": "STEPDECK_MAX_TOKENS",
    "max_concurrent_runs": "STEPDECK_MAX_RUNS",
    "max_concurrent_steps": "STEPDECK_MAX_STEPS",
    "poll_interval_s": "STEPDECK_POLL_INTERVAL_S",
    "shutdown_grace_s": "STEPDECK_SHUTDOWN_GRACE_S",
    "retention_days": "STEPDECK_RETENTION_DAYS",
}


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings read from the environment; a bad value raises SettingsError naming the variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = ENV_NAMES[f.name]
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        default = getattr(Settings(), f.name)
        try:
            values[f.name] = type(default)(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return _checked(Settings(**values))


def _checked(s: Settings) -> Settings:
    positive = ("heartbeat_interval_s", "stale_after_s", "sweep_interval_s", "poll_interval_s")
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{ENV_NAMES[name]} must be greater than 0, got {getattr(s, name)}")
    for name in ("shutdown_grace_s", "retention_days"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{ENV_NAMES[name]} must not be negative, got {getattr(s, name)}")
    for name in ("max_tokens", "max_concurrent_runs", "max_concurrent_steps"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{ENV_NAMES[name]} must be at least 1, got {getattr(s, name)}")
    if not 0 < s.port < 65536:
        raise SettingsError(f"STEPDECK_PORT must be between 1 and 65535, got {s.port}")
    if s.on_orphan not in ON_ORPHAN_POLICIES:
        raise SettingsError(f"STEPDECK_ON_ORPHAN must be one of {', '.join(ON_ORPHAN_POLICIES)}, got {s.on_orphan!r}")
    if s.stale_after_s <= s.heartbeat_interval_s:
        raise SettingsError(
            f"STEPDECK_STALE_AFTER_S ({s.stale_after_s}) must exceed STEPDECK_HEARTBEAT_INTERVAL_S "
            f"({s.heartbeat_interval_s}), or healthy runs would look dead"
        )
    return s
