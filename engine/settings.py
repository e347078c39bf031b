"""Settings from environment variables (`STEPDECK_*`), overridden by command-line flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models.db import DEFAULT_DB_URL
from models.errors import StepdeckError

ON_ORPHAN_POLICIES = ("fail", "resume")
LLM_PROVIDERS = ("auto", "simulated", "openai")


class Secret:
    """A value that must never be shown: its repr and str hide it (settings get logged and printed)."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


class SettingsError(StepdeckError, ValueError):
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
    cancel_grace_s: float = 5.0  # how long a cancelled or timed-out step may take to stop before it is abandoned
    retention_days: float = 0.0  # finished runs older than this are deleted; 0 keeps them forever
    allowed_hosts: str = ""  # extra names (comma-separated) a server on 127.0.0.1 answers to; "*" for any
    trusted_proxies: str = ""  # addresses whose X-Forwarded-For is believed (comma-separated); none by default
    secret_file: Path = Path("data/secret.key")  # signs session cookies; made on first start (mode 0600)
    session_secret: Secret = Secret()  # noqa: RUF009 (signs session cookies, over the file and the database's)
    # LLM steps: an OpenAI-compatible endpoint, or the simulated provider when none is configured.
    llm_provider: str = "auto"  # auto: simulated unless a base URL or an API key is set
    llm_base_url: str = ""
    llm_api_key: Secret = Secret()  # noqa: RUF009 (immutable)
    llm_model: str = ""
    llm_retries: int = 3  # per call, on 429, 5xx and connection errors
    llm_retry_base_s: float = 1.0  # first backoff; doubles per retry (a Retry-After header wins)
    llm_sim_tokens_per_s: float = 60.0  # the simulated provider's token rate
    llm_checkpoint_s: float = 2.0  # how often streamed text is saved on the running attempt
    llm_max_concurrent: int = 0  # requests in flight to the endpoint at once; 0: no limit
    llm_requests_per_minute: int = 0  # requests started per minute at the endpoint; 0: no limit
    llm_prices: str = ""  # a TOML or YAML file: USD per 1M prompt and completion tokens, per model
    llm_daily_budget: float = 0.0  # USD of LLM cost per UTC day; a step that would start past it waits; 0: none
    # Notifications: webhook and Apprise URLs carry tokens, so they are secrets (never shown or logged).
    webhook_urls: Secret = Secret()  # noqa: RUF009 (immutable; comma-separated)
    webhook_secret: Secret = Secret()  # noqa: RUF009 (signs webhook bodies, HMAC-SHA256)
    notify_urls: Secret = Secret()  # noqa: RUF009 (Apprise URLs, comma- or space-separated)
    notify_events: str = ""  # events the targets above get; default: all but run.completed
    public_url: str = ""  # where people open the dashboard, for links in notifications
    notify_retry_s: float = 10.0  # first delay before a failed delivery is tried again; doubles, at most an hour
    notify_give_up_s: float = 86400.0  # a delivery still failing this long after its event is given up
    notify_timeout_s: float = 10.0  # per request to a target

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
    "cancel_grace_s": "STEPDECK_CANCEL_GRACE_S",
    "retention_days": "STEPDECK_RETENTION_DAYS",
    "allowed_hosts": "STEPDECK_ALLOWED_HOSTS",
    "trusted_proxies": "STEPDECK_TRUSTED_PROXIES",
    "secret_file": "STEPDECK_SECRET_FILE",
    "session_secret": "STEPDECK_SESSION_SECRET",
    "llm_provider": "STEPDECK_LLM_PROVIDER",
    "llm_base_url": "STEPDECK_LLM_BASE_URL",
    "llm_api_key": "STEPDECK_LLM_API_KEY",
    "llm_model": "STEPDECK_LLM_MODEL",
    "llm_retries": "STEPDECK_LLM_RETRIES",
    "llm_retry_base_s": "STEPDECK_LLM_RETRY_BASE_S",
    "llm_sim_tokens_per_s": "STEPDECK_LLM_SIM_TOKENS_PER_S",
    "llm_checkpoint_s": "STEPDECK_LLM_CHECKPOINT_S",
    "llm_max_concurrent": "STEPDECK_LLM_MAX_CONCURRENT",
    "llm_requests_per_minute": "STEPDECK_LLM_REQUESTS_PER_MINUTE",
    "llm_prices": "STEPDECK_LLM_PRICES",
    "llm_daily_budget": "STEPDECK_LLM_DAILY_BUDGET",
    "webhook_urls": "STEPDECK_WEBHOOK_URL",
    "webhook_secret": "STEPDECK_WEBHOOK_SECRET",
    "notify_urls": "STEPDECK_NOTIFY",
    "notify_events": "STEPDECK_NOTIFY_EVENTS",
    "public_url": "STEPDECK_PUBLIC_URL",
    "notify_retry_s": "STEPDECK_NOTIFY_RETRY_S",
    "notify_give_up_s": "STEPDECK_NOTIFY_GIVE_UP_S",
    "notify_timeout_s": "STEPDECK_NOTIFY_TIMEOUT_S",
}
# Read when the STEPDECK_ variable is not set: the names OpenAI's own tools use.
FALLBACK_ENV_NAMES = {"llm_base_url": "OPENAI_BASE_URL", "llm_api_key": "OPENAI_API_KEY", "llm_model": "OPENAI_MODEL"}


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings read from the environment; a bad value raises SettingsError naming the variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = ENV_NAMES[f.name]
        raw = environ.get(name, "").strip()
        if not raw and f.name in FALLBACK_ENV_NAMES:
            name = FALLBACK_ENV_NAMES[f.name]
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
    positive = (
        "heartbeat_interval_s",
        "stale_after_s",
        "sweep_interval_s",
        "poll_interval_s",
        "llm_sim_tokens_per_s",
        "llm_checkpoint_s",
        "notify_retry_s",
        "notify_give_up_s",
        "notify_timeout_s",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{ENV_NAMES[name]} must be greater than 0, got {getattr(s, name)}")
    for name in (
        "shutdown_grace_s",
        "cancel_grace_s",
        "retention_days",
        "llm_retries",
        "llm_retry_base_s",
        "llm_max_concurrent",
        "llm_requests_per_minute",
        "llm_daily_budget",
    ):
        if getattr(s, name) < 0:
            raise SettingsError(f"{ENV_NAMES[name]} must not be negative, got {getattr(s, name)}")
    for name in ("max_tokens", "max_concurrent_runs", "max_concurrent_steps"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{ENV_NAMES[name]} must be at least 1, got {getattr(s, name)}")
    if not 0 < s.port < 65536:
        raise SettingsError(f"STEPDECK_PORT must be between 1 and 65535, got {s.port}")
    if s.on_orphan not in ON_ORPHAN_POLICIES:
        raise SettingsError(f"STEPDECK_ON_ORPHAN must be one of {', '.join(ON_ORPHAN_POLICIES)}, got {s.on_orphan!r}")
    if s.llm_provider not in LLM_PROVIDERS:
        raise SettingsError(f"STEPDECK_LLM_PROVIDER must be one of {', '.join(LLM_PROVIDERS)}, got {s.llm_provider!r}")
    if s.llm_base_url and not s.llm_base_url.startswith(("http://", "https://")):
        # Never echoed: it may hold a key.
        raise SettingsError("STEPDECK_LLM_BASE_URL must start with http:// or https://")
    if "@" in urlsplit(s.llm_base_url).netloc:
        # The client would send these as Basic auth instead of the key, and log them with every request.
        raise SettingsError(
            "STEPDECK_LLM_BASE_URL must not contain a user name or password: put the key in STEPDECK_LLM_API_KEY"
        )
    if s.public_url and not s.public_url.startswith(("http://", "https://")):
        raise SettingsError(f"STEPDECK_PUBLIC_URL must start with http:// or https://, got {s.public_url!r}")
    from engine.notify.targets import TargetError, env_targets

    try:
        env_targets(s)
    except TargetError as exc:
        raise SettingsError(str(exc)) from None
    if s.stale_after_s <= s.heartbeat_interval_s:
        raise SettingsError(
            f"STEPDECK_STALE_AFTER_S ({s.stale_after_s}) must exceed STEPDECK_HEARTBEAT_INTERVAL_S "
            f"({s.heartbeat_interval_s}), or healthy runs would look dead"
        )
    return s
