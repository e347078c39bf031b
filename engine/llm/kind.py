"""The `llm` step kind: render the prompt, call the model, watch for truncation, apply the policy.

Everything the calls cost and returned is kept in an `LlmRecord` (engine/llm/record.py) on the
step's context, updated as calls end, so that the attempt stores it whatever way the step ends
(completed, failed, timed out, cancelled, held by the budget guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from engine.context import StepContext
from engine.definitions import StepDef
from engine.llm import budget, providers
from engine.llm.calls import estimate_prompt, settle_usage
from engine.llm.prices import price_of
from engine.llm.providers import SIMULATED, Call, Choice, Request
from engine.llm.record import AlternativeRecord, LlmRecord, clamp_max_tokens, parallel_requests
from engine.llm.templates import render
from engine.outputs import clean_text
from models.errors import StepdeckError

if TYPE_CHECKING:
    from engine.kinds import KindEnv

MAX_CONTINUATIONS = 3
CONTINUE_PROMPT = "Continue exactly where your previous answer stopped. Do not repeat anything, add no preamble."
T = TypeVar("T")


class TruncatedOutput(StepdeckError):
    """An output was cut off at the token limit and the step's policy is `fail`."""


class LLMStepError(StepdeckError):
    """An LLM step that cannot run as configured (no model, for instance)."""


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
    provider = await env.providers.provider_for(settings)
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
        messages=[dict(m) for m in messages],
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
