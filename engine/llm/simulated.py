"""The simulated provider: deterministic text from the prompt, for running without a model endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

from engine.llm.calls import SIMULATED, Call, Choice, Request, Sink

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

    def supports_n(self, model: str) -> bool:
        return True

    def refuses_n(self, model: str) -> None:
        pass

    async def context_length(self, model: str) -> int | None:
        return None

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
