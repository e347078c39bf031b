"""Model providers: any OpenAI-compatible endpoint (through the official client), or the simulated one.

A provider streams one chat completion call (with `n` choices) into a `Sink` and returns what the
call produced: text, finish reason and usage per choice. Retries of 429, 5xx and connection
errors, with backoff, happen here; every other error becomes a `ProviderError` with a message a
person can act on. The API key never leaves this module: messages are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from engine.llm.redact import KeyScrubber, has_userinfo, install_log_redaction, redact_url, split_query
from engine.settings import Settings

if TYPE_CHECKING:  # imported when a real endpoint is used: `openai` takes a second to import
    import httpx2
    import openai

log = logging.getLogger(__name__)

SIMULATED = "simulated"
OPENAI_COMPATIBLE = "openai-compatible"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_RETRY_AFTER_S = 60.0
CONNECT_TIMEOUT_S = 10.0


class ProviderError(Exception):
    """A call failed for good; the message says what the endpoint did and what to check."""


class Sink(Protocol):
    """Where streamed text goes as it arrives (the step's context)."""

    def delta(self, index: int, text: str) -> None: ...

    def reset(self, index: int) -> None: ...


@dataclass(slots=True)
class Choice:
    """One completion of a call."""

    index: int
    finish_reason: str | None = None
    chunks: int = 0  # content chunks received: an estimate of tokens when the server reports none


@dataclass(slots=True)
class Call:
    """One request to the model, as sent and as answered."""

    n: int
    max_tokens: int
    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # summed over the choices, as the API reports it
    retries: int = 0
    latency_s: float = 0.0
    first_token_s: float | None = None
    max_tokens_field: str = "max_tokens"

    def choice_tokens(self, choice: Choice) -> tuple[int, bool]:
        """Completion tokens of one choice and whether the count is exact (not split from a total)."""
        if self.completion_tokens is None:
            return choice.chunks, False
        if len(self.choices) == 1:
            return self.completion_tokens, True
        chunks = sum(c.chunks for c in self.choices) or 1
        return round(self.completion_tokens * choice.chunks / chunks), False


@dataclass(frozen=True, slots=True)
class Request:
    model: str
    messages: Sequence[dict[str, str]]
    max_tokens: int
    temperature: float | None
    timeout_s: float


class Provider(Protocol):
    name: str
    base_url: str  # shown to people: no credentials

    @property
    def supports_n(self) -> bool | None: ...

    def refuses_n(self) -> None: ...

    async def call(self, request: Request, n: int, sink: Sink, first_index: int = 0) -> Call: ...


def provider_name(settings: Settings) -> str:
    """Which provider LLM steps use under these settings."""
    if settings.llm_provider == "simulated":
        return SIMULATED
    if settings.llm_provider == "openai" or settings.llm_base_url or settings.llm_api_key:
        return OPENAI_COMPATIBLE
    return SIMULATED


def describe(settings: Settings) -> dict[str, Any]:
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


_providers: dict[tuple[Any, ...], Provider] = {}


async def provider_for(settings: Settings) -> Provider:
    """`for_settings`, building a new provider off the event loop (the model client's import is slow)."""
    provider = _providers.get(_key(settings))
    return provider if provider is not None else await asyncio.to_thread(for_settings, settings)


async def close_all() -> None:
    """Close the clients of every provider (their connections belong to the loop that used them)."""
    for provider in list(_providers.values()):
        if isinstance(provider, OpenAIProvider):
            await provider.close()
    _providers.clear()


def _key(settings: Settings) -> tuple[Any, ...]:
    if provider_name(settings) == SIMULATED:
        return (SIMULATED, settings.llm_sim_tokens_per_s)
    return (
        OPENAI_COMPATIBLE,
        settings.llm_base_url,
        settings.llm_api_key,
        settings.llm_retries,
        settings.llm_retry_base_s,
    )


_building = threading.Lock()  # two steps starting together build one client, not two


def for_settings(settings: Settings) -> Provider:
    """The provider of these settings, one per configuration and process (clients keep connections)."""
    key = _key(settings)
    with _building:
        return _build(key, settings)


def _build(key: tuple[Any, ...], settings: Settings) -> Provider:
    if key[0] == SIMULATED:
        if key not in _providers:
            _providers[key] = SimulatedProvider(settings.llm_sim_tokens_per_s)
    else:
        if key not in _providers:
            _providers[key] = OpenAIProvider(
                settings.llm_base_url or DEFAULT_BASE_URL,
                settings.llm_api_key.reveal(),
                settings.llm_retries,
                settings.llm_retry_base_s,
            )
    return _providers[key]


# --- OpenAI-compatible ---------------------------------------------------------------------------


class _Retryable(Exception):
    def __init__(self, message: str, delay_s: float | None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class OpenAIProvider:
    """Any server that speaks OpenAI's chat completions API (OpenAI, Ollama, vLLM, llama.cpp, LM Studio)."""

    name = OPENAI_COMPATIBLE

    def __init__(self, base_url: str, api_key: str, retries: int, retry_base_s: float) -> None:
        import openai

        install_log_redaction()  # the HTTP client logs every request's URL at INFO
        if has_userinfo(base_url):
            raise ProviderError(
                f"STEPDECK_LLM_BASE_URL ({redact_url(base_url)}) has a user name or password in it: "
                "put the key in STEPDECK_LLM_API_KEY instead"
            )
        self.base_url = redact_url(base_url)
        self._key = api_key
        self.scrub = KeyScrubber(api_key)
        # Query parameters (an Azure api-version, a signature) go on every request as parameters; left in
        # the base URL, the client would splice the path after them.
        base_url, query = split_query(base_url)
        self.retries = retries
        self.retry_base_s = retry_base_s
        # Retries are ours (so they are bounded, logged and recorded); the client must not add its own.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "none",
            max_retries=0,
            timeout=openai.Timeout(600.0),
            default_query=query or None,
        )
        self._supports_n: bool | None = None  # learnt from the first call with n > 1
        self._max_tokens_field = "max_tokens"

    @property
    def supports_n(self) -> bool | None:
        return self._supports_n

    def refuses_n(self) -> None:
        self._supports_n = False

    async def close(self) -> None:
        await self._client.close()

    async def call(self, request: Request, n: int, sink: Sink, first_index: int = 0) -> Call:
        """One call with retries; with n > 1 on a server that ignores `n`, fewer choices come back."""
        started = time.monotonic()
        retries = 0
        while True:
            call = Call(n=n, max_tokens=request.max_tokens, retries=retries, max_tokens_field=self._max_tokens_field)
            try:
                await self._stream(request, call, sink, first_index, started)
            except _Retryable as exc:
                for choice in call.choices:
                    sink.reset(first_index + choice.index)
                if retries >= self.retries:
                    tries = f"{retries + 1} tries" if retries else "1 try"
                    raise ProviderError(f"{exc} (gave up after {tries})") from None
                delay = exc.delay_s if exc.delay_s is not None else self.retry_base_s * 2**retries
                delay = min(delay, MAX_RETRY_AFTER_S) * (1 if exc.delay_s is not None else random.uniform(0.8, 1.2))
                retries += 1
                log.warning("LLM call failed (%s); retry %d of %d in %.2f s", exc, retries, self.retries, delay)
                await asyncio.sleep(delay)
                continue
            except _FieldRefused:
                self._max_tokens_field = "max_completion_tokens"
                continue
            call.latency_s = time.monotonic() - started
            if n > 1:
                self._supports_n = len(call.choices) >= n
            return call

    async def _stream(self, request: Request, call: Call, sink: Sink, first_index: int, started: float) -> None:
        import httpx2  # the HTTP client of the openai package: its transport errors surface mid-stream
        import openai

        extra: dict[str, Any] = {}
        if call.n > 1:
            extra["n"] = call.n
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        extra[self._max_tokens_field] = request.max_tokens
        try:
            # The official client makes the request (auth, base URL, timeouts, errors by status); the
            # stream is read raw: building a typed object per chunk would double the client's cost.
            async with self._client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                model=request.model,
                messages=list(request.messages),
                stream=True,
                stream_options={"include_usage": True},
                timeout=openai.Timeout(request.timeout_s, connect=CONNECT_TIMEOUT_S),
                **extra,
            ) as response:
                async for line in response.iter_lines():
                    # Read to the end of the body, [DONE] included, so the connection can be reused.
                    if line.startswith("data:") and (data := line[5:].strip()) != "[DONE]":
                        self._chunk(orjson.loads(data), call, sink, first_index, started)
        except ProviderError:
            raise
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except (openai.APITimeoutError, httpx2.TimeoutException):
            raise _Retryable(f"the model endpoint at {self.base_url} timed out", None) from None
        except (openai.APIConnectionError, httpx2.TransportError) as exc:
            cause = exc.__cause__ or exc
            detail = self.scrub(f"{type(cause).__name__}: {cause}".rstrip(": "))
            raise _Retryable(f"cannot reach the model endpoint at {self.base_url} ({detail})", None) from None
        except (ValueError, openai.APIError) as exc:  # a stream that is not the API's JSON
            detail = self.scrub(str(exc))[:300]
            raise ProviderError(f"the model endpoint at {self.base_url} sent a malformed stream: {detail}") from None
        if not call.choices:
            raise ProviderError(f"the model endpoint at {self.base_url} answered with no completion")

    def _chunk(self, chunk: Any, call: Call, sink: Sink, first_index: int, started: float) -> None:
        """Account for one chunk of the stream (a JSON object as OpenAI sends them)."""
        if not isinstance(chunk, dict):
            raise ValueError(f"expected a JSON object, got {type(chunk).__name__}")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(f"the model endpoint at {self.base_url} failed mid-stream: {self.scrub(str(message))}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            call.prompt_tokens = _count(usage.get("prompt_tokens"))
            call.completion_tokens = _count(usage.get("completion_tokens"))
        for c in chunk.get("choices") or ():
            index = c.get("index", 0) if isinstance(c, dict) else None
            if not isinstance(index, int) or not 0 <= index < call.n:
                raise ProviderError(f"the endpoint sent choice {index!r} for a request of n={call.n}")
            choice = next((ch for ch in call.choices if ch.index == index), None)
            if choice is None:
                choice = Choice(index)
                call.choices = sorted([*call.choices, choice], key=lambda ch: ch.index)
            delta = c.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if content and isinstance(content, str):
                if call.first_token_s is None:
                    call.first_token_s = time.monotonic() - started
                choice.chunks += 1
                sink.delta(first_index + index, content)
            if c.get("finish_reason"):
                choice.finish_reason = str(c["finish_reason"])

    def _status_error(self, exc: openai.APIStatusError) -> Exception:
        status = exc.status_code
        message = self.scrub(_error_message(exc))
        where = f"the model endpoint at {self.base_url}"
        if status == 429 or status >= 500:
            what = "is rate limiting requests" if status == 429 else "had a server error"
            return _Retryable(f"{where} {what} (HTTP {status}: {message})", _retry_after(exc.response))
        if status == 400 and "max_completion_tokens" in message and self._max_tokens_field == "max_tokens":
            return _FieldRefused()
        hints = {
            401: "check STEPDECK_LLM_API_KEY (or OPENAI_API_KEY)",
            403: "the API key is not allowed to use this model",
            404: "check STEPDECK_LLM_BASE_URL (it usually ends in /v1) and the model name",
        }
        hint = f"; {hints[status]}" if status in hints else ""
        return ProviderError(f"{where} refused the request (HTTP {status}: {message}){hint}")


class _FieldRefused(Exception):
    """The server wants `max_completion_tokens` instead of `max_tokens` (OpenAI's newer models)."""


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    text = exc.response.text if exc.response is not None else ""
    return (text or exc.message)[:500]


def _retry_after(response: httpx2.Response | None) -> float | None:
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


# --- simulated -------------------------------------------------------------------------------------

_WORDS = [
    "the",
    "a",
    "team",
    "pipeline",
    "draft",
    "outline",
    "result",
    "step",
    "model",
    "signal",
    "market",
    "growth",
    "plan",
    "review",
    "customer",
    "launch",
    "quarter",
    "insight",
    "risk",
    "strategy",
    "data",
    "workflow",
    "example",
    "story",
    "reader",
    "value",
    "clear",
    "simple",
    "strong",
    "early",
    "late",
    "quickly",
    "carefully",
    "often",
    "rarely",
    "because",
    "while",
    "although",
    "builds",
    "shows",
    "needs",
    "makes",
    "changes",
    "improves",
    "explains",
    "suggests",
    "compares",
    "measures",
]


class SimulatedProvider:
    """Deterministic text from the prompt, streamed at a steady token rate; honours `max_tokens`.

    The same messages give the same text; each alternative differs. A continuation (the text so far
    sent back as an assistant message) picks up where the text was cut.
    """

    name = SIMULATED
    base_url = ""

    def __init__(self, tokens_per_s: float) -> None:
        self.tokens_per_s = tokens_per_s

    @property
    def supports_n(self) -> bool:
        return True

    def refuses_n(self) -> None:
        pass

    async def call(self, request: Request, n: int, sink: Sink, first_index: int = 0) -> Call:
        started = time.monotonic()
        call = Call(n=n, max_tokens=request.max_tokens)
        prompt = [m for m in request.messages if m["role"] != "assistant"]
        done = sum(len(m["content"].split()) for m in request.messages if m["role"] == "assistant")
        if done:
            prompt = prompt[:-1]  # the request to continue is not part of what the text is about
        seed = hashlib.sha256(repr((request.model, prompt)).encode()).digest()
        plans = []
        for i in range(n):
            words = _simulated_words(seed + bytes([(first_index + i) % 256]))
            plans.append(words[done : done + request.max_tokens])
            call.choices.append(Choice(i, finish_reason="length" if len(words) - done > request.max_tokens else "stop"))
        longest = max(len(p) for p in plans)
        for t in range(longest):
            await asyncio.sleep(1 / self.tokens_per_s)
            if t == 0:
                call.first_token_s = time.monotonic() - started
            for choice, words in zip(call.choices, plans, strict=True):
                if t < len(words):
                    last = t + 1 == len(words) and choice.finish_reason == "stop"
                    token = words[t] + ("" if last or words[t].endswith("\n") else " ")
                    choice.chunks += 1
                    sink.delta(first_index + choice.index, token)
        call.prompt_tokens = sum(len(m["content"]) for m in request.messages) // 4 + 1
        call.completion_tokens = sum(c.chunks for c in call.choices)
        call.latency_s = time.monotonic() - started
        return call


def _simulated_words(seed: bytes) -> list[str]:
    rng = random.Random(seed)
    count = rng.randint(60, 400)
    words: list[str] = ["Simulated", "output."]
    sentence = 0
    while len(words) < count:
        length = rng.randint(6, 16)
        sentence_words = [rng.choice(_WORDS) for _ in range(length)]
        sentence_words[0] = sentence_words[0].capitalize()
        sentence_words[-1] += "."
        sentence += 1
        if sentence % 4 == 0:
            sentence_words[-1] += "\n\n"
        words.extend(sentence_words)
    return words[:count]
