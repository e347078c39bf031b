"""What one model call is: the request, the choices it streamed, its usage; and the pure rules about them.

Rules kept here, without I/O, so they are tested alone:
- a choice whose stream ended without a known finish reason was interrupted (`interrupted`);
- usage the server did not report is estimated from the text, never 0, and marked so (`estimate_tokens`);
- one usage record per choice (llama.cpp's `llama-server` with `n`) is attributed to the choices, not
  overwritten (`settle_usage`);
- what an endpoint was seen to do about `n`, per model, is remembered for a while (`Memory`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from models.errors import StepdeckError

SIMULATED = "simulated"
OPENAI_COMPATIBLE = "openai-compatible"
# OpenAI's finish reasons. Anything else (none at all, "abort", …) means the stream was cut short.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
CHARS_PER_TOKEN = 4  # English text in the common BPE vocabularies; an estimate, marked as such
MESSAGE_OVERHEAD_TOKENS = 3  # role and separators per chat message
N_MEMORY_S = 3600.0  # how long what an endpoint did about `n` is believed
_ABOUT_N = re.compile(r"""(?<![\w-])[`'"]?n[`'"]?(?![\w-])|\bn\s*[=><!]""")
V = TypeVar("V")


class ProviderError(StepdeckError):
    """A call failed for good; the message says what the endpoint did and what to check."""

    def __init__(self, message: str, *, about_n: bool = False) -> None:
        super().__init__(message)
        self.about_n = about_n  # the endpoint refused the request because of `n`
        self.retries = 0
        self.latency_s: float | None = None
        self.first_token_s: float | None = None


class Sink(Protocol):
    """Where streamed text goes as it arrives (the step's context)."""

    def delta(self, index: int, text: str) -> None: ...

    def reset(self, index: int) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass(slots=True)
class Choice:
    """One completion of a call."""

    index: int
    finish_reason: str | None = None
    chunks: int = 0  # content chunks received
    chars: int = 0  # content characters received
    prompt_tokens: int | None = None  # set when the server reported usage for this choice alone
    completion_tokens: int | None = None


@dataclass(slots=True)
class Call:
    """One request to the model, as sent and as answered."""

    n: int
    max_tokens: int
    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # summed over the choices, as the API reports it
    estimated: bool = False  # counts made here from the text: the server reported none
    retries: int = 0
    latency_s: float = 0.0
    first_token_s: float | None = None
    max_tokens_field: str = "max_tokens"
    error: str | None = None  # why the call failed, or "cancelled"
    usage_records: list[tuple[dict[str, Any], int | None]] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)  # choice indexes in the order their streams finished

    def choice_tokens(self, choice: Choice) -> tuple[int, bool]:
        """Completion tokens of one choice and whether the count is exact (the server's, for that choice)."""
        if choice.completion_tokens is not None:
            return choice.completion_tokens, not self.estimated
        if self.completion_tokens is None:
            return estimate_completion(choice), False
        if len(self.choices) == 1:
            return self.completion_tokens, not self.estimated
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

    def supports_n(self, model: str) -> bool | None: ...

    def refuses_n(self, model: str) -> None: ...

    async def context_length(self, model: str) -> int | None: ...

    async def call(self, request: Request, n: int, sink: Sink, first_index: int = 0) -> Call: ...


def interrupted(choice: Choice) -> bool:
    """A choice whose stream ended without a finish reason OpenAI defines: the server cut it short."""
    return choice.finish_reason not in FINISH_REASONS


def about_n(message: str) -> bool:
    """Whether an error message is about the `n` parameter (not, say, about the model name)."""
    return bool(_ABOUT_N.search(message))


def estimate_tokens(chars: int) -> int:
    """Tokens of a text of this many characters; at least 1 for any text."""
    return max(1, math.ceil(chars / CHARS_PER_TOKEN)) if chars > 0 else 0


def estimate_prompt(messages: Sequence[dict[str, str]]) -> int:
    """Prompt tokens of chat messages, estimated; never 0."""
    return max(1, sum(estimate_tokens(len(m.get("content") or "")) + MESSAGE_OVERHEAD_TOKENS for m in messages))


def estimate_completion(choice: Choice) -> int:
    """Completion tokens of a choice, estimated: streaming servers send about a token per chunk."""
    return max(choice.chunks, estimate_tokens(choice.chars))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def settle_usage(call: Call, messages: Sequence[dict[str, str]]) -> None:
    """Set the call's token counts from the usage records it received, estimating what is missing.

    One record: the call's totals. Several (one per choice): each goes to the choice it names, or else to
    the choices in the order their streams finished; the totals are their sums. None: estimates."""
    records = [(_count(u.get("prompt_tokens")), _count(u.get("completion_tokens")), i) for u, i in call.usage_records]
    if len(records) == 1:
        call.prompt_tokens, call.completion_tokens = records[0][0], records[0][1]
    elif len(records) > 1:
        by_index = {c.index: c for c in call.choices}
        order = iter([i for i in call.finished if i in by_index])
        for prompt, completion, index in records:
            target = by_index.get(index) if index is not None else by_index.get(next(order, -1))
            if target is not None:
                target.prompt_tokens, target.completion_tokens = prompt, completion
        prompts = [p for p, _, _ in records if p is not None]
        completions = [c for _, c, _ in records if c is not None]
        call.prompt_tokens = sum(prompts) if prompts else None
        call.completion_tokens = sum(completions) if completions else None
    if call.prompt_tokens is None or call.completion_tokens is None:
        call.estimated = True
        if call.prompt_tokens is None:
            call.prompt_tokens = estimate_prompt(messages)
        if call.completion_tokens is None:
            call.completion_tokens = sum(
                c.completion_tokens if c.completion_tokens is not None else estimate_completion(c) for c in call.choices
            )


class Memory(Generic[V]):
    """What was learnt about an endpoint, per key (a model name), believed for `ttl_s` seconds."""

    def __init__(self, ttl_s: float = N_MEMORY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._values: dict[str, tuple[V, float]] = {}

    def get(self, key: str) -> V | None:
        found = self._values.get(key)
        if found is None:
            return None
        value, until = found
        if self.clock() >= until:
            del self._values[key]
            return None
        return value

    def set(self, key: str, value: V) -> None:
        self._values[key] = (value, self.clock() + self.ttl_s)
