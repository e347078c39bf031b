"""The `llm` step kind: render the prompt, call the model, watch for truncation, apply the policy.

Everything the calls cost and returned is kept in an `LlmRecord` on the step's context, updated
as calls end, so that the attempt stores it whatever way the step ends (completed, failed,
timed out, cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engine.context import StepContext
from engine.definitions import StepDef
from engine.llm import providers
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

    def add(self, call: Call, first_index: int, continuation: bool = False) -> None:
        """Account for a finished call whose choice i is alternative first_index + i."""
        self.calls.append(
            {
                "alternatives": [first_index + c.index for c in call.choices],
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
            }
        )
        for position, choice in enumerate(call.choices):
            alt = self.alternatives[first_index + choice.index]
            tokens, exact = call.choice_tokens(choice)
            alt.calls += 1
            alt.continuations += continuation
            # A call with n choices reads its prompt once: its tokens go to the first choice only,
            # so that the alternatives' prompt tokens add up to what was billed.
            alt.prompt_tokens += (call.prompt_tokens or 0) if position == 0 else 0
            alt.completion_tokens += tokens
            alt.peak_call_tokens = max(alt.peak_call_tokens, tokens)
            alt.exact = alt.exact and exact and call.prompt_tokens is not None
            alt.finish_reason = choice.finish_reason
            alt.truncated = choice.finish_reason == "length"
            alt.at_limit = alt.at_limit or (exact and tokens == call.max_tokens and not alt.truncated)
            alt.latency_s += call.latency_s

    @property
    def truncated(self) -> bool:
        return any(a.truncated for a in self.alternatives)

    def usage(self) -> dict[str, int]:
        """Tokens billed over all calls (a call with n choices processes its prompt once)."""
        prompt = sum(c["prompt_tokens"] or 0 for c in self.calls)
        completion = sum(a.completion_tokens for a in self.alternatives)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

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
        for alt in data["alternatives"]:
            alt["latency_s"] = round(alt["latency_s"], 4)
        return data


class _CallSink:
    """Streams one call into the context; a retried call drops only what it had itself streamed.
    Counts chunks, so that a call cut short (cancel, timeout) is still accounted for."""

    def __init__(self, ctx: StepContext, indexes: Iterable[int]) -> None:
        self.ctx = ctx
        self.base = {i: ctx.stream_length(i) for i in indexes}
        self.chunks: dict[int, int] = {}

    def delta(self, index: int, text: str) -> None:
        self.ctx.delta(index, text)
        self.chunks[index] = self.chunks.get(index, 0) + 1

    def reset(self, index: int) -> None:
        self.ctx.truncate_stream(index, self.base.get(index, 0))
        self.chunks.pop(index, None)


async def _call(
    provider: providers.Provider,
    request: Request,
    n: int,
    ctx: StepContext,
    rec: LlmRecord,
    first_index: int = 0,
    continuation: bool = False,
) -> Call:
    """One call, recorded when it ends, also when it is cut short (its tokens counted from the chunks)."""
    sink = _CallSink(ctx, range(first_index, first_index + n))
    try:
        call = await provider.call(request, n, sink, first_index=first_index)
    except BaseException:
        if sink.chunks:
            cut = Call(n=n, max_tokens=request.max_tokens)
            cut.choices = [Choice(i - first_index, None, chunks) for i, chunks in sorted(sink.chunks.items())]
            rec.add(cut, first_index, continuation)
        raise
    rec.add(call, first_index, continuation)
    return call


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await all; on the first error the others are cancelled (and awaited) before it propagates."""
    tasks = [asyncio.ensure_future(c) for c in calls]
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
    max_tokens = int(config.get("max_tokens") or settings.max_tokens)
    on_truncation = config.get("on_truncation", "warn")
    variables = template_variables(ctx.inputs, ctx.outputs)
    loop = asyncio.get_running_loop()
    messages = []
    if config.get("system"):
        system = await loop.run_in_executor(env.threads, render, config["system"], variables, "system")
        messages.append({"role": "system", "content": clean_text(system)})
    prompt = await loop.run_in_executor(env.threads, render, config["prompt"], variables, "prompt")
    messages.append({"role": "user", "content": clean_text(prompt)})
    request = Request(model, messages, max_tokens, config.get("temperature"), step.timeout_s)
    n = step.alternatives
    record = ctx.llm = LlmRecord(
        provider.name,
        model,
        provider.base_url,
        max_tokens,
        request.temperature,
        on_truncation,
        [AlternativeRecord(i) for i in range(n)],
    )
    checkpoints = asyncio.create_task(_checkpoints(ctx, env), name=f"checkpoint:{ctx.run_id}:{ctx.step_key}")
    try:
        await _first_calls(provider, request, n, ctx, record)
        if on_truncation == "continue":
            await _all(
                _continue(provider, request, i, ctx, record) for i in range(n) if record.alternatives[i].truncated
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
        ctx.log(f"warning: {which} was cut off at max_tokens={max_tokens} (finish_reason 'length'){more}")
    if cut and on_truncation == "fail":
        which = ", ".join(str(a.index + 1) for a in cut)
        what = f"alternative {which} was" if n > 1 else "the output was"
        raise TruncatedOutput(
            f"{what} cut off at the token limit (max_tokens={max_tokens}, finish_reason 'length'); "
            "raise max_tokens or set on_truncation: continue"
        )
    texts = [ctx.stream_text(i) for i in range(n)]
    return texts[0] if n == 1 else texts


async def _first_calls(
    provider: providers.Provider, request: Request, n: int, ctx: StepContext, rec: LlmRecord
) -> None:
    """N alternatives: one call with `n` where the server honours it, parallel calls where it does not."""

    async def single(i: int) -> None:
        await _call(provider, request, 1, ctx, rec, i)

    if n == 1 or provider.supports_n is False:
        await _all(single(i) for i in range(n))
        return
    try:
        call = await _call(provider, request, n, ctx, rec)
    except providers.ProviderError as exc:
        if provider.supports_n is not None or "(HTTP 400" not in str(exc):
            raise
        # Some servers refuse `n` outright (rather than ignoring it): ask for each alternative.
        provider.refuses_n()
        ctx.log(f"the endpoint refused n={n} ({exc}): asking for each alternative separately")
        await _all(single(i) for i in range(n))
        return
    got = {c.index for c in call.choices}
    missing = [i for i in range(n) if i not in got]
    if missing:
        ctx.log(f"the endpoint returned {len(got)} of {n} completions for one request (no `n`): asking separately")
        await _all(single(i) for i in missing)


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
