"""What an LLM attempt did: usage and cost per alternative, every call made, the limit an output hit;
and the pure rules of a step's calls (the context window clamp, separate requests at once).

An `LlmRecord` lives on the step's context and is updated as calls end, so that the attempt stores it
whatever way the step ends (completed, failed, timed out, cancelled, held by the budget).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from engine.llm.calls import SIMULATED, Call
from engine.llm.prices import Price

if TYPE_CHECKING:
    from engine.llm.budget import HoldJson


class UsageJson(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool


class AlternativeJson(TypedDict):
    """One alternative of `LlmJson` (`AlternativeRecord` as stored, with its cost)."""

    index: int
    finish_reason: str | None
    truncated: bool
    at_limit: bool
    prompt_tokens: int
    completion_tokens: int
    peak_call_tokens: int
    exact: bool
    estimated: bool
    calls: int
    continuations: int
    latency_s: float
    cost: NotRequired[float | None]


class LlmJson(TypedDict):
    """An LLM attempt's record as stored with the attempt and read by pages and the API (`LlmRecord.to_json`).
    Keys added since the first records were stored are NotRequired: older attempts lack them."""

    provider: str
    model: str
    base_url: str
    max_tokens: int
    temperature: float | None
    on_truncation: str
    alternatives: list[AlternativeJson]
    calls: list[dict[str, Any]]
    usage: UsageJson
    truncated: bool
    finish_reason: str | None
    context_length: NotRequired[int | None]
    price: NotRequired[dict[str, float] | None]
    budget_hold: NotRequired[HoldJson | None]
    requested_max_tokens: NotRequired[int | None]
    messages: NotRequired[list[dict[str, str]]]
    simulated: NotRequired[bool]
    estimated: NotRequired[bool]
    limit: NotRequired[str]
    cost: NotRequired[float | None]


def llm_json(value: Any) -> LlmJson | None:
    """A stored record (parsed JSON), typed; None when there is none."""
    return cast(LlmJson, value) if isinstance(value, dict) else None


@dataclass(slots=True)
class AlternativeRecord:
    """What one alternative cost and how it ended (over its first call and any continuations)."""

    index: int
    finish_reason: str | None = None
    truncated: bool = False  # the last call stopped at the limit (finish reason `length`)
    at_limit: bool = False  # a secondary hint: a call used exactly max_tokens without saying `length`
    prompt_tokens: int = 0
    completion_tokens: int = 0
    peak_call_tokens: int = 0  # the most completion tokens of one call: what the limit bounds
    exact: bool = True  # counts as the server reported them (not split from a total, not estimated)
    estimated: bool = False  # some counts were estimated here from the text: the server reported none
    calls: int = 0
    continuations: int = 0
    latency_s: float = 0.0


@dataclass(slots=True)
class LlmRecord:
    """The LLM side of an attempt: provider, limits, usage per alternative, and every call made."""

    provider: str
    model: str
    base_url: str
    max_tokens: int
    temperature: float | None
    on_truncation: str
    alternatives: list[AlternativeRecord]
    calls: list[dict[str, Any]] = field(default_factory=list)
    context_length: int | None = None  # the model's context window, where the server tells it
    price: dict[str, float] | None = None  # USD per 1M prompt / completion tokens, from the price file
    budget_hold: HoldJson | None = None  # the budget this attempt was held for (it made no call)
    requested_max_tokens: int | None = None  # the step's max_tokens when it was clamped to the context window
    messages: list[dict[str, str]] = field(default_factory=list)  # what the model was asked (rendered)

    @property
    def limit(self) -> str:
        """The limit an output cut off at the token limit hit, in words."""
        if self.requested_max_tokens is not None and self.context_length is not None:
            return (
                f"the model's context window ({self.context_length:,} tokens; max_tokens={self.requested_max_tokens} "
                f"was clamped to {self.max_tokens})"
            )
        return f"max_tokens={self.max_tokens}"

    def add(self, call: Call, first_index: int, continuation: bool = False) -> None:
        """Account for a call whose choice i is alternative first_index + i (a failed one too)."""
        requested = range(first_index, first_index + call.n)
        self.calls.append(
            {
                "alternatives": [first_index + c.index for c in call.choices] if call.choices else list(requested),
                "n": call.n,
                "continuation": continuation,
                "max_tokens": call.max_tokens,
                "max_tokens_field": call.max_tokens_field,
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens,
                "finish_reasons": [c.finish_reason for c in call.choices],
                "retries": call.retries,
                "latency_ms": round(call.latency_s * 1000, 1),
                "first_token_ms": round(call.first_token_s * 1000, 1) if call.first_token_s is not None else None,
                "estimated": call.estimated,
                "error": call.error,
            }
        )
        per_choice = any(c.prompt_tokens is not None for c in call.choices)
        for position, choice in enumerate(call.choices):
            alt = self.alternatives[first_index + choice.index]
            tokens, exact = call.choice_tokens(choice)
            alt.calls += 1
            alt.continuations += continuation
            if per_choice:  # the server reported each choice's prompt: it read it once per choice
                alt.prompt_tokens += choice.prompt_tokens or 0
            else:
                # A call with n choices reads its prompt once: its tokens go to the first choice only,
                # so that the alternatives' prompt tokens add up to what was billed.
                alt.prompt_tokens += (call.prompt_tokens or 0) if position == 0 else 0
            alt.completion_tokens += tokens
            alt.peak_call_tokens = max(alt.peak_call_tokens, tokens)
            alt.exact = alt.exact and exact and call.prompt_tokens is not None
            alt.estimated = alt.estimated or call.estimated
            alt.finish_reason = choice.finish_reason
            alt.truncated = choice.finish_reason == "length"
            alt.at_limit = alt.at_limit or (exact and tokens == call.max_tokens and not alt.truncated)
            alt.latency_s += call.latency_s

    @property
    def truncated(self) -> bool:
        return any(a.truncated for a in self.alternatives)

    @property
    def estimated(self) -> bool:
        return any(c["estimated"] for c in self.calls)

    def usage(self) -> dict[str, Any]:
        """Tokens billed over all calls (a call with n choices processes its prompt once); `estimated` when
        some were counted here from the text because the server reported none."""
        prompt = sum(c["prompt_tokens"] or 0 for c in self.calls)
        completion = sum(a.completion_tokens for a in self.alternatives)
        total = prompt + completion
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "estimated": self.estimated,
        }

    def finish_reason(self) -> str | None:
        """`length` when any alternative was cut off, else the first alternative's reason."""
        if self.truncated:
            return "length"
        return self.alternatives[0].finish_reason if self.alternatives else None

    def to_json(self) -> LlmJson:
        data: dict[str, Any] = asdict(self)
        data["usage"] = self.usage()
        data["truncated"] = self.truncated
        data["finish_reason"] = self.finish_reason()
        data["simulated"] = self.provider == SIMULATED
        data["estimated"] = self.estimated
        data["limit"] = self.limit
        usage = data["usage"]
        data["cost"] = self._cost(usage["prompt_tokens"], usage["completion_tokens"])
        for alt in data["alternatives"]:
            alt["latency_s"] = round(alt["latency_s"], 4)
            alt["cost"] = self._cost(alt["prompt_tokens"], alt["completion_tokens"])
        return cast(LlmJson, data)

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.price is None:
            return None
        return Price(self.price["prompt"], self.price["completion"]).cost(prompt_tokens, completion_tokens)


def clamp_max_tokens(requested: int, context_length: int | None, prompt_tokens: int) -> int:
    """max_tokens that fits the model's context window with the prompt (where the window is known)."""
    if context_length is None or requested + prompt_tokens <= context_length:
        return requested
    return max(context_length - prompt_tokens, 1)


def parallel_requests(configured: Any, supports_n: bool | None, n: int) -> int:
    """How many separate requests of one step may run at once: the step's `parallel_requests`, else one
    at a time against a server seen to ignore or refuse `n` (some cut a running stream when another
    request queues), else all."""
    if isinstance(configured, int) and configured >= 1:
        return configured
    return 1 if supports_n is False else max(n, 1)


class LlmFieldsJson(TypedDict):
    """What an attempt's LLM record shows on its step or attempt (`llm_fields`)."""

    usage: UsageJson | None  # tokens used, against the limit sent (`max_tokens`)
    max_tokens: int | None
    finish_reason: str | None
    truncated: bool
    provider: str | None  # "simulated" when no model endpoint is configured
    model: str | None
    llm: LlmJson | None  # the full record: per-alternative usage and cost, every call made
