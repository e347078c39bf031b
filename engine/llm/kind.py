"""The `llm` step kind: render the prompt, call the model, watch for truncation, apply the policy.

Everything the calls cost and returned is kept in an `LlmRecord` on the step's context, updated
as calls end, so that the attempt stores it whatever way the step ends (completed, failed,
timed out, cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engine.context import StepContext
from engine.definitions import StepDef
from engine.llm import budget, providers
from engine.llm.calls import estimate_prompt, settle_usage
from engine.llm.prices import Price, price_of
from engine.llm.providers import SIMULATED, Call, Choice, Request
from engine.llm.templates import render
from engine.outputs import clean_text

if TYPE_CHECKING:
    from engine.kinds import KindEnv

MAX_CONTINUATIONS = 3
CONTINUE_PROMPT = "Continue exactly where your previous answer stopped. Do not repeat anything, add no preamble."
T = TypeVar("T")


class TruncatedOutput(Exception):
    """An output was cut off at the token limit and the step's policy is `fail`."""


class LLMStepError(Exception):
    """An LLM step that cannot run as configured (no model, for instance)."""


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
    budget_hold: dict[str, Any] | None = None  # the budget this attempt was held for (it made no call)
    requested_max_tokens: int | None = None  # the step's max_tokens when it was clamped to the context window

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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
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
        return data

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.price is None:
            return None
        return Price(self.price["prompt"], self.price["completion"]).cost(prompt_tokens, completion_tokens)


class _CallSink:
    """Streams one call into the context; a retried call drops only what it had itself streamed.
    Counts chunks, so that a call cut short (cancel, timeout) is still accounted for."""

    def __init__(self, ctx: StepContext, indexes: Iterable[int]) -> None:
        self.ctx = ctx
        self.base = {i: ctx.stream_length(i) for i in indexes}
        self.chunks: dict[int, int] = {}
        self.chars: dict[int, int] = {}
        self.started = time.monotonic()
        self.first_token_s: float | None = None

    def delta(self, index: int, text: str) -> None:
        self.ctx.delta(index, text)
        self.chunks[index] = self.chunks.get(index, 0) + 1
        self.chars[index] = self.chars.get(index, 0) + len(text)
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.started

    def reset(self, index: int) -> None:
        self.ctx.truncate_stream(index, self.base.get(index, 0))
        self.chunks.pop(index, None)
        self.chars.pop(index, None)

    def note(self, message: str) -> None:
        self.ctx.log(message)


async def _call(
    provider: providers.Provider,
    request: Request,
    n: int,
    ctx: StepContext,
    rec: LlmRecord,
    first_index: int = 0,
    continuation: bool = False,
) -> Call:
    """One call, recorded when it ends, also when it fails or is cut short (its tokens then estimated from
    what streamed, its latency and first-token time measured here)."""
    sink = _CallSink(ctx, range(first_index, first_index + n))
    try:
        call = await provider.call(request, n, sink, first_index=first_index)
    except BaseException as exc:
        cut = Call(n=n, max_tokens=request.max_tokens, latency_s=time.monotonic() - sink.started)
        cut.first_token_s = sink.first_token_s
        cut.choices = [
            Choice(i - first_index, None, chunks, sink.chars.get(i, 0)) for i, chunks in sorted(sink.chunks.items())
        ]
        if isinstance(exc, providers.ProviderError):
            cut.retries, cut.error = exc.retries, str(exc)
            if exc.first_token_s is not None and cut.first_token_s is None:
                cut.first_token_s = exc.first_token_s
        else:
            cut.error = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}: {exc}"
        if cut.choices:
            settle_usage(cut, request.messages)
        else:
            cut.prompt_tokens, cut.completion_tokens = None, None
        rec.add(cut, first_index, continuation)
        raise
    rec.add(call, first_index, continuation)
    return call


async def _all(calls: Iterable[Awaitable[T]], at_once: int | None = None) -> list[T]:
    """Await all, at most `at_once` at a time; on the first error the others are cancelled (and awaited)
    before it propagates."""
    pending = list(calls)
    if at_once is not None and at_once < len(pending):
        gate = asyncio.Semaphore(at_once)

        async def gated(c: Awaitable[T]) -> T:
            async with gate:
                return await c

        pending = [gated(c) for c in pending]
    tasks = [asyncio.ensure_future(c) for c in pending]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def template_variables(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {"inputs": dict(inputs), "steps": {key: {"output": value} for key, value in outputs.items()}}


async def run_llm(step: StepDef, ctx: StepContext, env: KindEnv) -> Any:
    settings = env.settings
    config = step.config
    provider = await providers.provider_for(settings)
    model = config.get("model") or settings.llm_model or (SIMULATED if provider.name == SIMULATED else "")
    if not model:
        raise LLMStepError("no model: set `model:` on the step, or STEPDECK_LLM_MODEL (or OPENAI_MODEL)")
    requested = int(config.get("max_tokens") or settings.max_tokens)
    on_truncation = config.get("on_truncation", "warn")
    hold, passed = await budget.check_budget(
        ctx.run_id, ctx.step_key, ctx.attempt, env.max_cost, settings.llm_daily_budget
    )
    if passed is not None:
        ctx.log(f"{passed.reason}: running past it, as a person resumed this step")
    if hold is not None:
        ctx.llm = LlmRecord(
            provider.name, model, provider.base_url, requested, None, on_truncation, [], budget_hold=hold.to_json()
        )
        raise budget.BudgetReached(hold)
    variables = template_variables(ctx.inputs, ctx.outputs)
    loop = asyncio.get_running_loop()
    messages = []
    if config.get("system"):
        system = await loop.run_in_executor(env.threads, render, config["system"], variables, "system")
        messages.append({"role": "system", "content": clean_text(system)})
    prompt = await loop.run_in_executor(env.threads, render, config["prompt"], variables, "prompt")
    messages.append({"role": "user", "content": clean_text(prompt)})
    context_length = await provider.context_length(model)
    max_tokens = clamp_max_tokens(requested, context_length, estimate_prompt(messages))
    if max_tokens != requested:
        ctx.log(
            f"max_tokens={requested} does not fit the model's context window ({context_length:,} tokens with the "
            f"prompt): asking for at most {max_tokens}"
        )
    request = Request(model, messages, max_tokens, config.get("temperature"), step.timeout_s)
    price = price_of(settings.llm_prices, model)
    n = step.alternatives
    record = ctx.llm = LlmRecord(
        provider.name,
        model,
        provider.base_url,
        max_tokens,
        request.temperature,
        on_truncation,
        [AlternativeRecord(i) for i in range(n)],
        context_length=context_length,
        requested_max_tokens=requested if max_tokens != requested else None,
        price={"prompt": price.prompt, "completion": price.completion} if price is not None else None,
    )
    checkpoints = asyncio.create_task(_checkpoints(ctx, env), name=f"checkpoint:{ctx.run_id}:{ctx.step_key}")
    try:
        await _first_calls(provider, request, n, ctx, record, config.get("parallel_requests"))
        if on_truncation == "continue":
            await _all(
                (_continue(provider, request, i, ctx, record) for i in range(n) if record.alternatives[i].truncated),
                parallel_requests(config.get("parallel_requests"), provider.supports_n(model), n),
            )
    finally:
        checkpoints.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checkpoints
        ctx.flush_stream()
    cut = [a for a in record.alternatives if a.truncated]
    for alt in cut:
        which = f"alternative {alt.index + 1}" if n > 1 else "the output"
        more = f" after {alt.continuations} continuations" if alt.continuations else ""
        ctx.log(f"warning: {which} was cut off at {record.limit} (finish_reason 'length'){more}")
    if cut and on_truncation == "fail":
        which = ", ".join(str(a.index + 1) for a in cut)
        what = f"alternative {which} was" if n > 1 else "the output was"
        fix = (
            "use a model with a larger context or a shorter prompt, or set on_truncation: continue"
            if record.requested_max_tokens is not None
            else "raise max_tokens or set on_truncation: continue"
        )
        raise TruncatedOutput(f"{what} cut off at the token limit ({record.limit}, finish_reason 'length'); {fix}")
    texts = [ctx.stream_text(i) for i in range(n)]
    return texts[0] if n == 1 else texts


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


async def _first_calls(
    provider: providers.Provider, request: Request, n: int, ctx: StepContext, rec: LlmRecord, configured: Any
) -> None:
    """N alternatives: one call with `n` where the server honours it, separate calls where it does not."""

    async def single(i: int) -> None:
        try:
            await _call(provider, request, 1, ctx, rec, i)
        except providers.ProviderError as exc:
            if n == 1:
                raise
            raise providers.ProviderError(f"alternative {i + 1}: {exc}") from None

    def at_once() -> int:
        return parallel_requests(configured, provider.supports_n(request.model), n)

    if n == 1:
        await _call(provider, request, 1, ctx, rec)  # no task of its own: one call, on this one
        return
    if provider.supports_n(request.model) is False:
        await _all((single(i) for i in range(n)), at_once())
        return
    try:
        call = await _call(provider, request, n, ctx, rec)
    except providers.ProviderError as exc:
        if not exc.about_n:
            raise
        # Some servers refuse `n` outright (rather than ignoring it): ask for each alternative.
        provider.refuses_n(request.model)
        ctx.log(f"the endpoint refused n={n} ({exc}): asking for each alternative separately")
        await _all((single(i) for i in range(n)), at_once())
        return
    got = {c.index for c in call.choices}
    missing = [i for i in range(n) if i not in got]
    if missing:
        ctx.log(f"the endpoint returned {len(got)} of {n} completions for one request (no `n`): asking separately")
        await _all((single(i) for i in missing), at_once())


async def _continue(provider: providers.Provider, request: Request, i: int, ctx: StepContext, rec: LlmRecord) -> None:
    """Ask the model to go on from where alternative i was cut off, up to MAX_CONTINUATIONS times."""
    alt = rec.alternatives[i]
    while alt.truncated and alt.continuations < MAX_CONTINUATIONS:
        messages = [
            *request.messages,
            {"role": "assistant", "content": ctx.stream_text(i)},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        follow_up = Request(request.model, messages, request.max_tokens, request.temperature, request.timeout_s)
        ctx.log(
            f"continuing {'alternative ' + str(i + 1) if len(rec.alternatives) > 1 else 'the output'} "
            f"after the token limit ({alt.continuations + 1} of {MAX_CONTINUATIONS})"
        )
        await _call(provider, follow_up, 1, ctx, rec, i, continuation=True)


async def _checkpoints(ctx: StepContext, env: KindEnv) -> None:
    """Save the streamed text on the running attempt every few seconds, so a crash leaves it visible."""
    saved: str | None = None
    while True:
        await asyncio.sleep(env.settings.llm_checkpoint_s)
        text = ctx.partial_text()
        if text is not None and text != saved:
            try:
                await env.checkpoint(clean_text(text), ctx.llm.to_json() if ctx.llm is not None else None)
                saved = text
            except Exception:  # a missed checkpoint costs nothing the final write will not record
                continue
