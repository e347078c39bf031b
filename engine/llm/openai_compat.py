"""Any server that speaks OpenAI's chat completions API (OpenAI, Ollama, vLLM, llama.cpp, LM Studio).

One call streams `n` choices into a `Sink`. Retries of 429, 5xx, connection errors and streams that
end without a finish reason (llama-cpp-python cuts a running stream when another request queues)
happen here, with backoff; every other error becomes a `ProviderError` a person can act on. What the
endpoint was seen to do is learnt per endpoint (and model) rather than assumed: whether it honours `n`
(believed for an hour), whether it accepts `stream_options`, which token field it wants, its models and
their context window. The API key never leaves this module: messages are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from typing import TYPE_CHECKING, Any, cast

import orjson

from engine import logs
from engine.llm.calls import (
    OPENAI_COMPATIBLE,
    Call,
    Choice,
    Memory,
    ProviderError,
    Request,
    Sink,
    about_n,
    interrupted,
    settle_usage,
)
from engine.llm.limits import RequestLimits
from engine.llm.redact import KeyScrubber, has_userinfo, install_log_redaction, redact_url, split_query
from models.errors import StepdeckError

if TYPE_CHECKING:  # imported when a real endpoint is used: `openai` takes a second to import
    import httpx2
    import openai

log = logs.logger(__name__)

MAX_RETRY_AFTER_S = 60.0
CONNECT_TIMEOUT_S = 10.0
INFO_TIMEOUT_S = 5.0  # GET /v1/models and /props: metadata, never worth a long wait
INFO_MEMORY_S = 600.0  # how long a model list or a context window is believed


_imported = False  # `openai` has been imported (by `import_client`)


async def import_client() -> None:
    """Import the `openai` package in a thread, once. It takes about a second: on the event loop, the
    first LLM step would stop every run and page for that long (and an import in a thread already under
    way would make the loop wait for it: Python locks a module while it is being imported)."""
    global _imported
    if not _imported:
        await asyncio.to_thread(importlib.import_module, "openai")
        _imported = True


class _Retryable(StepdeckError):
    def __init__(self, message: str, delay_s: float | None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class _Refused(StepdeckError):
    """The server refused a request field we can do without or rename: ask again without it."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class OpenAIProvider:
    name = OPENAI_COMPATIBLE

    def __init__(
        self, base_url: str, api_key: str, retries: int, retry_base_s: float, limits: RequestLimits | None = None
    ) -> None:
        install_log_redaction()  # the HTTP client logs every request's URL at INFO
        if has_userinfo(base_url):
            raise ProviderError(
                f"STEPDECK_LLM_BASE_URL ({redact_url(base_url)}) has a user name or password in it: "
                "put the key in STEPDECK_LLM_API_KEY instead"
            )
        self.base_url = redact_url(base_url)
        self.scrub = KeyScrubber(api_key)
        self.retries = retries
        self.retry_base_s = retry_base_s
        self.limits = limits or RequestLimits()
        # Query parameters (an Azure api-version, a signature) go on every request as parameters; left in
        # the base URL, the client would splice the path after them.
        base_url, query = split_query(base_url)
        self._root = base_url.rstrip("/").removesuffix("/v1")
        self._api_key, self._base_url, self._query = api_key, base_url, query
        self._made: openai.AsyncOpenAI | None = None  # made at the first request (`_client`)
        self._n: Memory[bool] = Memory()
        self._contexts: Memory[int] = Memory(INFO_MEMORY_S)  # 0: the endpoint does not say
        self._models: Memory[frozenset[str]] = Memory(INFO_MEMORY_S)
        self._max_tokens_field = "max_tokens"
        self._include_usage = True  # until the endpoint refuses `stream_options`

    def supports_n(self, model: str) -> bool | None:
        """Whether the endpoint was seen to honour `n` for this model lately (None: not known)."""
        return self._n.get(model)

    def refuses_n(self, model: str) -> None:
        self._n.set(model, False)

    async def _client(self) -> openai.AsyncOpenAI:
        """The HTTP client, made at the first request, once `openai` is imported (in a thread)."""
        if self._made is None:
            await import_client()
            import openai

            # Retries are ours (so they are bounded, logged and recorded); the client must not add its own.
            self._made = openai.AsyncOpenAI(
                base_url=self._base_url,
                api_key=self._api_key or "none",
                max_retries=0,
                timeout=openai.Timeout(600.0),
                default_query=self._query or None,
            )
        return self._made

    async def close(self) -> None:
        if self._made is not None:
            await self._made.close()

    # --- metadata ---

    async def _get_json(self, url: str) -> Any:
        """GET a JSON document from the endpoint; None when it does not answer with one."""
        client = await self._client()
        import openai

        try:  # outside the request limits: rare (remembered for minutes) and not what those limits count
            return await client.get(url, cast_to=object, options={"timeout": INFO_TIMEOUT_S})
        except (openai.APIError, ValueError, OSError) as exc:
            log.debug("GET %s: %s", url, self.scrub(str(exc)))
            return None

    async def models(self) -> frozenset[str] | None:
        """The model ids `GET /v1/models` lists; None when the endpoint does not answer it."""
        known = self._models.get("")
        if known is not None:
            return known
        listing = await self._get_json("/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            return None
        ids = frozenset(str(m["id"]) for m in data if isinstance(m, dict) and m.get("id"))
        self._models.set("", ids)
        return ids

    async def context_length(self, model: str) -> int | None:
        """The model's context window where the server tells it (llama.cpp's /props, /v1/models metadata)."""
        known = self._contexts.get(model)
        if known is not None:
            return known or None
        length = _props_context(await self._get_json(f"{self._root}/props"))
        if length is None:
            length = _models_context(await self._get_json("/models"), model)
        self._contexts.set(model, length or 0)
        return length

    # --- calls ---

    async def call(self, request: Request, n: int, sink: Sink, first_index: int = 0) -> Call:
        """One call with retries; with n > 1 on a server that ignores `n`, fewer choices come back."""
        started = time.monotonic()
        retries = 0
        while True:
            call = Call(n=n, max_tokens=request.max_tokens, retries=retries, max_tokens_field=self._max_tokens_field)
            try:
                async with self.limits.slot(lambda why: sink.note(f"waiting for the endpoint's request limits: {why}")):
                    await self._stream(request, call, sink, first_index, started)
            except _Retryable as exc:
                for choice in call.choices:
                    sink.reset(first_index + choice.index)
                if retries >= self.retries:
                    tries = f"{retries + 1} tries" if retries else "1 try"
                    raise self._failed(ProviderError(f"{exc} (gave up after {tries})"), call, started) from None
                delay = exc.delay_s if exc.delay_s is not None else self.retry_base_s * 2**retries
                delay = min(delay, MAX_RETRY_AFTER_S) * (1 if exc.delay_s is not None else random.uniform(0.8, 1.2))
                retries += 1
                log.warning("LLM call failed (%s); retry %d of %d in %.2f s", exc, retries, self.retries, delay)
                sink.note(f"the call failed ({exc}); retry {retries} of {self.retries} in {delay:.2f} s")
                await asyncio.sleep(delay)
                continue
            except _Refused as exc:
                if exc.field == "stream_options":
                    self._include_usage = False
                else:
                    self._max_tokens_field = "max_completion_tokens"
                continue
            except ProviderError as exc:
                raise self._failed(exc, call, started) from None
            call.latency_s = time.monotonic() - started
            settle_usage(call, request.messages)
            if n > 1:
                self._n.set(request.model, len(call.choices) >= n)
            return call

    def _failed(self, exc: ProviderError, call: Call, started: float) -> ProviderError:
        exc.retries, exc.latency_s, exc.first_token_s = call.retries, time.monotonic() - started, call.first_token_s
        return exc

    async def _stream(self, request: Request, call: Call, sink: Sink, first_index: int, started: float) -> None:
        client = await self._client()
        import httpx2  # the HTTP client of the openai package: its transport errors surface mid-stream
        import openai

        extra: dict[str, Any] = {}
        if call.n > 1:
            extra["n"] = call.n
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        if self._include_usage:
            extra["stream_options"] = {"include_usage": True}
        extra[self._max_tokens_field] = request.max_tokens
        try:
            # The official client makes the request (auth, base URL, timeouts, errors by status); the
            # stream is read raw: building a typed object per chunk would double the client's cost.
            async with client.chat.completions.with_streaming_response.create(
                model=request.model,
                messages=cast(Any, list(request.messages)),
                stream=True,
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
        where = f"the stream from the model endpoint at {self.base_url}"
        if not call.choices:
            raise _Retryable(f"{where} ended without a completion", None)
        cut = [c for c in call.choices if interrupted(c)]
        if cut:
            reason = cut[0].finish_reason
            how = f"with an unknown finish reason {reason!r}" if reason else "without a finish reason"
            which = "" if call.n == 1 else f" (choice {', '.join(str(first_index + c.index + 1) for c in cut)})"
            raise _Retryable(f"{where} ended {how}{which}: the server cut it short", None)

    def _chunk(self, chunk: Any, call: Call, sink: Sink, first_index: int, started: float) -> None:
        """Account for one chunk of the stream (a JSON object as OpenAI sends them)."""
        if not isinstance(chunk, dict):
            raise ValueError(f"expected a JSON object, got {type(chunk).__name__}")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(f"the model endpoint at {self.base_url} failed mid-stream: {self.scrub(str(message))}")
        choices: list[Any] = chunk.get("choices") or []
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            only = choices[0].get("index") if len(choices) == 1 and isinstance(choices[0], dict) else None
            call.usage_records.append((usage, only if isinstance(only, int) else None))
        for c in choices:
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
                choice.chars += len(content)
                sink.delta(first_index + index, content)
            if c.get("finish_reason"):
                choice.finish_reason = str(c["finish_reason"])
                call.finished.append(index)

    def _status_error(self, exc: openai.APIStatusError) -> Exception:
        status = exc.status_code
        message = self.scrub(_error_message(exc))
        where = f"the model endpoint at {self.base_url}"
        if status == 429 or status >= 500:
            what = "is rate limiting requests" if status == 429 else "had a server error"
            return _Retryable(f"{where} {what} (HTTP {status}: {message})", _retry_after(exc.response))
        if status in (400, 422):
            if "max_completion_tokens" in message and self._max_tokens_field == "max_tokens":
                return _Refused("max_tokens")
            if "stream_options" in message and self._include_usage:
                return _Refused("stream_options")
        hints = {
            401: "check STEPDECK_LLM_API_KEY (or OPENAI_API_KEY)",
            403: "the API key is not allowed to use this model",
            404: "check STEPDECK_LLM_BASE_URL (it usually ends in /v1) and the model name",
        }
        hint = f"; {hints[status]}" if status in hints else ""
        return ProviderError(
            f"{where} refused the request (HTTP {status}: {message}){hint}",
            about_n=status in (400, 422) and about_n(message),
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _props_context(props: Any) -> int | None:
    """llama.cpp's `GET /props`: the context size the server runs with (per slot)."""
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    found = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
    return found or _int(props.get("n_ctx"))


def _models_context(listing: Any, model: str) -> int | None:
    """A context length in `GET /v1/models` metadata (vLLM's max_model_len, LM Studio's, llama.cpp's meta)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    for entry in data if isinstance(data, list) else ():
        if not isinstance(entry, dict) or entry.get("id") != model:
            continue
        meta: dict[str, Any] = entry["meta"] if isinstance(entry.get("meta"), dict) else {}
        for value in (
            entry.get("max_model_len"),
            entry.get("context_length"),
            entry.get("max_context_length"),
            meta.get("n_ctx"),
            meta.get("n_ctx_train"),
        ):
            if _int(value):
                return _int(value)
    return None


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
