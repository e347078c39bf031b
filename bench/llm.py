"""The engine's added latency per LLM step, over the loopback model server's own time.

    uv run python -m bench.llm [--steps 200] [--tokens 20] [--runs 3]

A run of N sequential `llm` steps against a real OpenAI-compatible server on 127.0.0.1 (the one
the tests use, in a process of its own so that it does not compete with the engine for the GIL),
streaming `--tokens` tokens per completion. Three figures per step:

- server: the time the server itself spent answering one request;
- client: one streamed call made directly with the `openai` client (server + HTTP + parsing);
- engine: wall time of the run divided by its steps (render, call, stream to the hub, record usage,
  two guarded transitions with their events, readiness).

"added" is engine minus server: what Stepdeck and the client add to the model's own time (target < 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import orjson

from bench.engine import wait_done
from engine import operations
from engine.db import connected
from engine.definitions import WorkflowDef, parse_definition
from engine.engine import Engine
from engine.settings import Secret, Settings


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
        async with client.chat.completions.with_streaming_response.create(
            model="stepdeck-test",
            messages=[{"role": "user", "content": "Write about tide pools."}],
            max_tokens=256,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            async for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    orjson.loads(line[5:])
    elapsed = (time.perf_counter() - started) / calls
    await client.close()
    return elapsed


@contextmanager
def model_server(tokens: int) -> Iterator[str]:
    """The loopback server in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.llm_server", "--tokens", str(tokens)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def server_stats(base_url: str) -> dict[str, float]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as response:
        stats: dict[str, float] = json.load(response)
        return stats


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="sequential LLM steps per run")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per completion")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (the median is reported)")
    args = parser.parse_args()
    with model_server(args.tokens) as base_url, tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite://{Path(tmp) / 'bench.db'}"
        settings = Settings(db_url=url, llm_base_url=base_url, llm_api_key=Secret("bench"), llm_model="stepdeck-test")
        await direct_calls(base_url, 20)  # warm up connections and imports
        direct = statistics.median([await direct_calls(base_url, args.steps) for _ in range(args.runs)])
        async with connected(url):
            engine = Engine(settings)
            await engine.start()
            defn = chain(args.steps)
            per_step, server_per_request = [], []
            try:
                await wait_done([await operations.start_run(chain(5), {}, "bench")], 60)  # warm-up
                for _ in range(args.runs):
                    before = server_stats(base_url)
                    started = time.perf_counter()
                    await wait_done([await operations.start_run(defn, {}, "bench")], 600)
                    per_step.append((time.perf_counter() - started) / args.steps)
                    after = server_stats(base_url)
                    requests = after["completion_requests"] - before["completion_requests"]
                    server_per_request.append((after["busy_s"] - before["busy_s"]) / requests)
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
