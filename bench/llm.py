"""The engine's added latency per LLM step, over the loopback model server's own time.

    uv run python -m bench.llm [--steps 200] [--tokens 20] [--runs 3]

A run of N sequential `llm` steps against a real OpenAI-compatible server on 127.0.0.1 (the one
the tests use), streaming `--tokens` tokens per completion. Three figures per step:

- server: the time the server itself spent answering one request;
- client: one streamed call made directly with the `openai` client (server + HTTP + parsing);
- engine: wall time of the run divided by its steps (render, call, stream to the hub, record usage,
  two guarded transitions with their events, readiness).

"added" is engine − server: what Stepdeck and the client add to the model's own time (target < 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import openai

from bench.engine import _wait_all_done
from engine import operations
from engine.definitions import WorkflowDef, parse_definition
from engine.executor import Engine
from engine.settings import Secret, Settings
from models.db import connected
from tests.llm_server import LLMServer


def chain(steps: int) -> WorkflowDef:
    data = {
        "name": "bench-llm",
        "inputs": {"topic": {"type": "string", "default": "tide pools"}},
        "steps": [
            {"key": f"s{i}", "kind": "llm", "prompt": "Write about {{ inputs.topic }}.", "max_tokens": 256}
            for i in range(steps)
        ],
    }
    return parse_definition(data, "<bench llm>")


async def direct_calls(base_url: str, calls: int) -> float:
    """Seconds per streamed call made straight with the client, as the engine makes them."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    started = time.perf_counter()
    for _ in range(calls):
        stream = await client.chat.completions.create(
            model="stepdeck-test",
            messages=[{"role": "user", "content": "Write about tide pools."}],
            max_tokens=256,
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for _chunk in stream:
                pass
    elapsed = (time.perf_counter() - started) / calls
    await client.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="sequential LLM steps per run")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per completion")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (the median is reported)")
    args = parser.parse_args()
    with LLMServer(reply_tokens=args.tokens) as server, tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite://{Path(tmp) / 'bench.db'}"
        settings = Settings(
            db_url=url, llm_base_url=server.base_url, llm_api_key=Secret("bench"), llm_model="stepdeck-test"
        )
        await direct_calls(server.base_url, 20)  # warm up connections and imports
        direct = statistics.median([await direct_calls(server.base_url, args.steps) for _ in range(args.runs)])
        async with connected(url):
            engine = Engine(settings)
            await engine.start()
            defn = chain(args.steps)
            per_step, server_per_request = [], []
            try:
                await _wait_all_done([await operations.start_run(chain(5), {}, "bench")], 60)  # warm-up
                for _ in range(args.runs):
                    server.reset()
                    started = time.perf_counter()
                    await _wait_all_done([await operations.start_run(defn, {}, "bench")], 600)
                    per_step.append((time.perf_counter() - started) / args.steps)
                    server_per_request.append(server.busy_s / len(server.completion_requests))
            finally:
                await engine.stop()
    engine_s, server_s = statistics.median(per_step), statistics.median(server_per_request)
    print(f"LLM steps: {args.steps} sequential, {args.tokens} tokens each, median of {args.runs} runs")
    print(f"  server's own time per request     {server_s * 1000:7.2f} ms")
    print(f"  direct client call (server+HTTP)  {direct * 1000:7.2f} ms")
    print(f"  engine per LLM step               {engine_s * 1000:7.2f} ms")
    print(f"  added over the server (target<5)  {(engine_s - server_s) * 1000:7.2f} ms")
    print(f"  engine only (over direct client)  {(engine_s - direct) * 1000:7.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
