"""Model providers: any OpenAI-compatible endpoint (through the official client), or the simulated one.

One provider per configuration and owner (`Providers`: an engine's, the dashboard's), as clients keep
connections. The types a call is made of live in `engine.llm.calls`; the endpoint's provider in
`engine.llm.openai_compat`; the simulated one in `engine.llm.simulated`. Names are re-exported here for
the callers.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, TypedDict

from engine.llm.calls import OPENAI_COMPATIBLE as OPENAI_COMPATIBLE
from engine.llm.calls import SIMULATED as SIMULATED
from engine.llm.calls import Call as Call
from engine.llm.calls import Choice as Choice
from engine.llm.calls import Provider as Provider
from engine.llm.calls import ProviderError as ProviderError
from engine.llm.calls import Request as Request
from engine.llm.calls import Sink as Sink
from engine.llm.limits import RequestLimits
from engine.llm.openai_compat import OpenAIProvider as OpenAIProvider
from engine.llm.redact import redact_url
from engine.llm.simulated import SimulatedProvider as SimulatedProvider
from engine.settings import Settings

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def provider_name(settings: Settings) -> str:
    """Which provider LLM steps use under these settings."""
    if settings.llm_provider == "simulated":
        return SIMULATED
    if settings.llm_provider == "openai" or settings.llm_base_url or settings.llm_api_key:
        return OPENAI_COMPATIBLE
    return SIMULATED


class ProviderJson(TypedDict):
    """The provider LLM steps use (`describe`)."""

    provider: str  # SIMULATED or OPENAI_COMPATIBLE
    simulated: bool
    base_url: str | None  # without credentials
    model: str | None  # the default model
    max_tokens: int  # the default limit


def describe(settings: Settings) -> ProviderJson:
    """The provider LLM steps use, as shown in pages and the API (never the key)."""
    name = provider_name(settings)
    simulated = name == SIMULATED
    return {
        "provider": name,
        "simulated": simulated,
        "base_url": None if simulated else redact_url(settings.llm_base_url or DEFAULT_BASE_URL),
        "model": SIMULATED if simulated else (settings.llm_model or None),
        "max_tokens": settings.max_tokens,
    }


class Providers:
    """The model providers of their owner (an engine, a dashboard), one per configuration: clients keep
    connections, which belong to the event loop that used them, so the owner closes them when it stops."""

    def __init__(self) -> None:
        self._built: dict[tuple[Any, ...], Provider] = {}
        self._building = threading.Lock()  # two steps starting together build one client, not two

    async def provider_for(self, settings: Settings) -> Provider:
        """The provider of these settings; a new one is built off the event loop (the model client's import
        is slow)."""
        provider = self._built.get(_key(settings))
        return provider if provider is not None else await asyncio.to_thread(self._build, settings)

    async def close(self) -> None:
        """Close the clients of every provider built so far; a later call builds anew."""
        built = list(self._built.values())
        self._built.clear()
        for provider in built:
            if isinstance(provider, OpenAIProvider):
                await provider.close()

    def _build(self, settings: Settings) -> Provider:
        key = _key(settings)
        with self._building:
            if key not in self._built:
                self._built[key] = _new_provider(settings)
            return self._built[key]


def _key(settings: Settings) -> tuple[Any, ...]:
    if provider_name(settings) == SIMULATED:
        return (SIMULATED, settings.llm_sim_tokens_per_s)
    return (
        OPENAI_COMPATIBLE,
        settings.llm_base_url,
        settings.llm_api_key,
        settings.llm_retries,
        settings.llm_retry_base_s,
        settings.llm_max_concurrent,
        settings.llm_requests_per_minute,
    )


def _new_provider(settings: Settings) -> Provider:
    if provider_name(settings) == SIMULATED:
        return SimulatedProvider(settings.llm_sim_tokens_per_s)
    return OpenAIProvider(
        settings.llm_base_url or DEFAULT_BASE_URL,
        settings.llm_api_key.reveal(),
        settings.llm_retries,
        settings.llm_retry_base_s,
        RequestLimits(settings.llm_max_concurrent, settings.llm_requests_per_minute),
    )
