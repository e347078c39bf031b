"""LLM steps end to end: the real `openai` client against the real loopback server (tests/llm_server.py),
a real SQLite file and a running engine. Token limits and truncation policies, alternatives with and
without server-side `n`, retries and errors a person can act on, cancel and timeout keeping the partial
text, the prompt sandbox, the API key kept out of every output, the simulated provider, streaming to
viewers and checkpoints. Every scenario ends with a clean audit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import logs, operations, queries
from engine.db import current
from engine.definitions import WorkflowDef, load_file
from engine.engine import Engine
from engine.hub import Change, ChangeJson, Subscription
from engine.llm import providers
from engine.llm.kind import CONTINUE_PROMPT, MAX_CONTINUATIONS
from engine.registry import Registry
from engine.settings import Secret, Settings
from engine.store import fetch
from tests.conftest import api_client, as_json, attempts_of, engine_running, step_of, wait_for, wait_run
from tests.llm_server import LLMServer, error_body

Define = Callable[..., Any]
KEY = "sk-test-SECRET-123"
MODEL = "stepdeck-test"
TOPIC = {"topic": {"type": "string", "default": "tide pools"}}
ENDED = ("completed", "failed", "cancelled", "waiting")
ARTICLE = Path(__file__).resolve().parents[2] / "workflows" / "llm-article.yaml"

pytestmark = pytest.mark.usefixtures("audit_clean")


class KeyEchoServer(LLMServer):
    """The loopback server, but its 401 quotes the key it was sent back (as careless servers do)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reject_key = False
        self.echo: Callable[[str], str] = lambda key: key  # how the 401 quotes the key
        self._presented = threading.local()

    def _authorized(self, header: str | None) -> bool:
        self._presented.key = (header or "").removeprefix("Bearer ")
        return not self.reject_key

    def _auth_error(self) -> dict[str, Any]:
        return error_body(401, f"Incorrect API key provided: {self.echo(self._presented.key)}.", "invalid_api_key")


@pytest.fixture
def server() -> Iterator[KeyEchoServer]:
    with KeyEchoServer(reply_tokens=20) as srv:
        yield srv
    assert srv.errors == [], "the test server's handlers raised"


@pytest.fixture
def llm_settings(settings: Settings, server: LLMServer) -> Settings:
    return pointed_at(settings, server.base_url, llm_retry_base_s=0.01, llm_checkpoint_s=0.2)


@pytest.fixture
async def eng(llm_settings: Settings, registry: Registry) -> AsyncIterator[Engine]:
    async with llm_engine(llm_settings, registry) as engine:
        yield engine


def pointed_at(settings: Settings, base_url: str, **overrides: Any) -> Settings:
    """`settings` with the model endpoint at `base_url`, the test key and the test model, which every LLM test sets,
    and `overrides`: what the test itself is about."""
    return settings.with_overrides(llm_base_url=base_url, llm_api_key=Secret(KEY), llm_model=MODEL, **overrides)


@contextlib.asynccontextmanager
async def llm_engine(settings: Settings, registry: Registry) -> AsyncIterator[Engine]:
    """A started engine with the `openai` client already imported. The engine imports it in the background (about
    a second); a step that starts before that is done waits for it, which would eat the short timeouts used here."""
    await asyncio.to_thread(importlib.import_module, "openai")
    async with engine_running(settings, registry) as engine:
        yield engine


def unreachable_base_url() -> str:
    """A loopback endpoint nobody listens on: the port is bound to find a free one, then closed again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def llm(key: str = "write", prompt: str = "Write about {{ inputs.topic }}.", **fields: Any) -> dict[str, Any]:
    return {"key": key, "kind": "llm", "prompt": prompt, **fields}


async def run_to_end(
    defn: WorkflowDef, inputs: dict[str, Any] | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    run_id = await operations.start_run(defn, inputs or {}, "tester")
    await wait_run(run_id, *ENDED, timeout_s=timeout_s)
    return as_json((await queries.run_detail(run_id)).to_json())


async def start_streaming(
    server: LLMServer, define: Define, registry: Registry, name: str, tokens: int, delay_s: float
) -> int:
    """Start a run of a one-LLM-step workflow `name` whose reply streams `tokens` tokens `delay_s` apart: for the
    tests that act while the text is still coming. Returns the run id."""
    server.reply_tokens, server.chunk_delay_s = tokens, delay_s
    define(name, [llm()], inputs=TOPIC)
    return await operations.start_run(registry.get(name), {}, "tester")


async def usage_rows(run_id: int) -> list[dict[str, Any]]:
    return await fetch("SELECT * FROM llm_usage WHERE run_id = ? ORDER BY attempt_id, alternative", (run_id,))


def words(start: int, stop: int, prefix: str = "") -> str:
    """What the server streams for tokens start..stop-1: `w{i} ` each."""
    return "".join(f"{prefix}w{i} " for i in range(start, stop))


def bodies(server: LLMServer) -> list[dict[str, Any]]:
    return [r.body for r in server.completion_requests]


# --- max_tokens ------------------------------------------------------------------------------------------


async def test_max_tokens_is_16384_by_default_and_the_steps_own_value_when_set(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("mt", [llm("plain"), llm("capped", max_tokens=50)], inputs=TOPIC)
    run = await run_to_end(registry.get("mt"))
    assert run["status"] == "completed", run["error"]
    sent = bodies(server)
    assert [b["max_tokens"] for b in sent] == [16384, 50]
    assert all(b["model"] == MODEL and b["stream"] is True and "n" not in b for b in sent)
    assert sent[0]["messages"] == [{"role": "user", "content": "Write about tide pools."}]
    plain, capped = run["steps"]
    # What the model was asked is kept with the attempt and shown by the API.
    assert plain["llm"]["messages"] == sent[0]["messages"]
    assert (plain["max_tokens"], capped["max_tokens"]) == (16384, 50)
    for step in (plain, capped):
        assert step["output"] == words(0, 20)
        assert (step["finish_reason"], step["truncated"]) == ("stop", False)
        assert (step["provider"], step["model"]) == ("openai-compatible", MODEL)
        assert step["usage"]["completion_tokens"] == 20
        assert step["usage"]["prompt_tokens"] == 4  # the server counts words
    assert [r["max_tokens"] for r in await usage_rows(run["id"])] == [16384, 50]


# --- truncation --------------------------------------------------------------------------------------------


async def test_truncation_is_flagged_and_warn_completes_with_a_warning(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("cut-warn", [llm(max_tokens=5)], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-warn"))
    assert run["status"] == "completed", run["error"]
    assert run["truncated_steps"] == ["write"]
    step = run["steps"][0]
    assert step["output"] == words(0, 5)
    assert (step["truncated"], step["finish_reason"], step["max_tokens"]) == (True, "length", 5)
    assert step["usage"]["completion_tokens"] == 5
    assert "warning: the output was cut off at max_tokens=5 (finish_reason 'length')" in step["logs"]
    [attempt] = await attempts_of(run["id"], "write")
    [alt] = attempt["llm"]["alternatives"]
    assert (alt["truncated"], alt["finish_reason"], alt["completion_tokens"]) == (True, "length", 5)
    assert attempt["llm"]["on_truncation"] == "warn"
    [row] = await usage_rows(run["id"])
    assert (row["truncated"], row["finish_reason"], row["max_tokens"], row["completion_tokens"]) == (1, "length", 5, 5)
    assert (row["outcome"], row["continuations"], row["provider"]) == ("completed", 0, "openai-compatible")
    assert len(server.completion_requests) == 1


async def test_truncation_with_policy_fail_fails_the_step_naming_the_limit_and_keeps_the_text(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define(
        "cut-fail", [llm(max_tokens=5, on_truncation="fail"), llm("after", "{{ steps.write.output }}")], inputs=TOPIC
    )
    run = await run_to_end(registry.get("cut-fail"))
    assert run["status"] == "failed"
    step, after = run["steps"]
    assert step["status"] == "failed"
    assert step["error"] == (
        "TruncatedOutput: the output was cut off at the token limit (max_tokens=5, finish_reason 'length'); "
        "raise max_tokens or set on_truncation: continue"
    )
    assert (step["truncated"], step["finish_reason"]) == (True, "length")
    assert step["partial_output"] == words(0, 5)
    [attempt] = await attempts_of(run["id"], "write")
    assert (attempt["status"], attempt["partial_output"], attempt["outputs"]) == ("failed", words(0, 5), None)
    [row] = await usage_rows(run["id"])
    assert (row["truncated"], row["completion_tokens"], row["outcome"]) == (1, 5, "failed")
    assert after["status"] == "pending"
    assert len(server.completion_requests) == 1


@pytest.mark.parametrize("natural", [14, 20])
async def test_truncation_with_policy_continue_asks_to_go_on_and_joins_the_parts_in_order(
    eng: Engine, server: LLMServer, define: Define, natural: int, registry: Registry
) -> None:
    server.reply_tokens = natural  # 14: three calls (5 + 5 + 4); 20: four calls, the last one exactly at the limit
    define("cut-continue", [llm(max_tokens=5, on_truncation="continue")], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-continue"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert step["output"] == words(0, natural)
    assert (step["truncated"], step["finish_reason"]) == (False, "stop")
    calls = -(-natural // 5)
    sent = bodies(server)
    assert len(sent) == calls
    first = sent[0]["messages"]
    for i, body in enumerate(sent[1:], start=1):
        assert body["max_tokens"] == 5
        assert body["messages"] == [
            *first,
            {"role": "assistant", "content": words(0, 5 * i)},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
    [row] = await usage_rows(run["id"])
    assert (row["truncated"], row["continuations"], row["completion_tokens"]) == (0, calls - 1, natural)
    assert row["peak_call_tokens"] == 5
    assert f"continuing the output after the token limit (1 of {MAX_CONTINUATIONS})" in step["logs"]


async def test_continue_stops_after_three_continuations_and_is_still_flagged_truncated(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.reply_tokens = 30
    define("cut-continue-long", [llm(max_tokens=5, on_truncation="continue")], inputs=TOPIC)
    run = await run_to_end(registry.get("cut-continue-long"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert step["output"] == words(0, 20)
    assert (step["truncated"], step["finish_reason"]) == (True, "length")
    assert len(server.completion_requests) == 1 + MAX_CONTINUATIONS
    assert (
        "warning: the output was cut off at max_tokens=5 (finish_reason 'length') after 3 continuations"
        in (step["logs"])
    )
    [row] = await usage_rows(run["id"])
    assert (row["truncated"], row["continuations"], row["completion_tokens"]) == (1, 3, 20)


async def test_continue_goes_on_with_each_alternative_from_its_own_text(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.reply_tokens = 12
    define(
        "cut-continue-alts", [llm(max_tokens=5, on_truncation="continue", alternatives=2, select="auto")], inputs=TOPIC
    )
    run = await run_to_end(registry.get("cut-continue-alts"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    # The first call (n=2) prefixes each token with its alternative; continuations are single completions.
    assert step["alternatives"] == [words(0, 5, f"a{k}") + words(5, 12) for k in range(2)]
    assert step["truncated"] is False
    sent = bodies(server)
    assert [b.get("n") for b in sent] == [2, None, None, None, None]
    continued = sorted(b["messages"][-2]["content"] for b in sent[1:])
    assert continued == sorted(
        [words(0, 5, "a0"), words(0, 5, "a1"), *(words(0, 5, f"a{k}") + words(5, 10) for k in range(2))]
    )
    rows = await usage_rows(run["id"])
    assert [(r["alternative"], r["continuations"], r["truncated"]) for r in rows] == [(0, 2, 0), (1, 2, 0)]


# --- alternatives ------------------------------------------------------------------------------------------


async def test_alternatives_in_one_request_when_the_server_honours_n(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("alts-n", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    run = await run_to_end(registry.get("alts-n"))
    assert run["status"] == "completed", run["error"]
    [body] = bodies(server)
    assert body["n"] == 3
    step = run["steps"][0]
    assert step["alternatives"] == [words(0, 20, f"a{k}") for k in range(3)]
    assert step["output"] == step["alternatives"][0]
    rows = await usage_rows(run["id"])
    assert [(r["alternative"], r["completion_tokens"], r["truncated"]) for r in rows] == [(k, 20, 0) for k in range(3)]
    assert step["usage"]["completion_tokens"] == 60
    # One request reads the prompt once: its tokens are counted once, on the first alternative.
    assert [r["prompt_tokens"] for r in rows][1:] == [0, 0]
    assert rows[0]["prompt_tokens"] == step["usage"]["prompt_tokens"] > 0


async def test_alternatives_are_asked_for_separately_when_the_server_ignores_n(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    lengths = iter([10, 11, 12])
    server.support_n = False
    server.reply_tokens = lambda body: next(lengths)  # each request gets its own completion
    define("alts-no-n", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    run = await run_to_end(registry.get("alts-no-n"))
    assert run["status"] == "completed", run["error"]
    sent = bodies(server)
    assert [b.get("n") for b in sent] == [3, None, None]
    step = run["steps"][0]
    outputs = step["alternatives"]
    assert outputs[0] == words(0, 10)
    assert sorted(outputs[1:]) == [words(0, 11), words(0, 12)]
    assert len(set(outputs)) == 3
    assert "the endpoint returned 1 of 3 completions for one request (no `n`): asking separately" in step["logs"]
    rows = await usage_rows(run["id"])
    by_alt = {r["alternative"]: r["completion_tokens"] for r in rows}
    assert by_alt == {k: len(outputs[k].split()) for k in range(3)}


async def test_alternatives_are_asked_for_separately_when_the_server_refuses_n(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.refuse_n = True  # some servers answer a request with n > 1 with a 400 about `n` instead of ignoring it
    define("alts-refused-n", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    run = await run_to_end(registry.get("alts-refused-n"))
    assert run["status"] == "completed", run["error"]
    assert [b.get("n") for b in bodies(server)] == [3, None, None, None]
    step = run["steps"][0]
    assert len(step["alternatives"]) == 3
    assert any("refused n=3" in line for line in step["logs"])


# --- retries and errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failures",
    [
        pytest.param([(429, {"retry-after": "0.05"})], id="429-retry-after"),
        pytest.param([500, 503], id="5xx"),
        pytest.param(["disconnect"], id="disconnect"),
    ],
)
async def test_a_failed_call_is_retried_and_the_step_completes(
    eng: Engine, server: LLMServer, define: Define, failures: list[Any], registry: Registry
) -> None:
    server.fail_next(*failures)
    define("retry", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("retry"))
    assert run["status"] == "completed", run["error"]
    step = run["steps"][0]
    assert step["output"] == words(0, 20)  # nothing streamed by a dropped call is left in it
    requests = server.completion_requests
    assert len(requests) == len(failures) + 1
    assert step["llm"]["calls"][0]["retries"] == len(failures)
    if failures[0] == (429, {"retry-after": "0.05"}):
        assert requests[1].received_at - requests[0].received_at >= 0.05


async def test_more_failures_than_retries_fail_the_step_with_a_readable_message(
    eng: Engine, server: LLMServer, llm_settings: Settings, define: Define, registry: Registry
) -> None:
    tries = llm_settings.llm_retries + 1
    server.fail_next(*[500] * tries)
    define("retry-out", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("retry-out"))
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert step["error"] == (
        f"ProviderError: the model endpoint at {server.base_url} had a server error "
        f"(HTTP 500: Internal Server Error (scripted by the test server)) (gave up after {tries} tries)"
    )
    assert len(server.completion_requests) == tries


@pytest.mark.parametrize(
    ("status", "hint"),
    [(400, "HTTP 400: Bad Request (scripted by the test server))"), (401, "check STEPDECK_LLM_API_KEY")],
)
async def test_a_refused_request_is_not_retried(
    eng: Engine, server: KeyEchoServer, define: Define, status: int, hint: str, registry: Registry
) -> None:
    if status == 401:
        server.reject_key = True
    else:
        server.fail_next(status)
    define("refused", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("refused"))
    assert run["status"] == "failed"
    error = run["steps"][0]["error"]
    assert error.startswith(
        f"ProviderError: the model endpoint at {server.base_url} refused the request (HTTP {status}"
    )
    assert hint in error
    assert KEY not in error
    assert len(server.completion_requests) == 1


async def test_an_endpoint_nobody_listens_on_fails_the_step_with_a_readable_message(
    settings: Settings, define: Define, registry: Registry
) -> None:
    base_url = unreachable_base_url()
    define("unreachable", [llm()], inputs=TOPIC)
    started = time.monotonic()
    async with engine_running(pointed_at(settings, base_url, llm_retry_base_s=0.01), registry):
        run = await run_to_end(registry.get("unreachable"))
    assert time.monotonic() - started < 5
    assert run["status"] == "failed"
    error = run["steps"][0]["error"]
    assert error.startswith(f"ProviderError: cannot reach the model endpoint at {base_url} (")
    assert error.endswith(f"(gave up after {settings.llm_retries + 1} tries)")


async def test_a_malformed_stream_fails_the_step_with_a_readable_message(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.fail_next("malformed")
    define("malformed", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("malformed"))
    assert run["status"] == "failed"
    error = run["steps"][0]["error"]
    assert error.startswith(f"ProviderError: the model endpoint at {server.base_url} sent a malformed stream: ")
    assert len(server.completion_requests) == 1


# --- cancel, timeout, checkpoints ------------------------------------------------------------------------


async def _partial_in_db(run_id: int) -> str | None:
    rows = await fetch("SELECT partial_output FROM attempts WHERE run_id = ? AND status = 'running'", (run_id,))
    return rows[0]["partial_output"] if rows and rows[0]["partial_output"] else None


async def test_cancelling_mid_stream_aborts_the_request_and_keeps_the_partial_text(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    run_id = await start_streaming(server, define, registry, "cancel-llm", 400, 0.02)
    await wait_for(lambda: _partial_in_db(run_id), 5, "streamed text checkpointed")
    assert await operations.cancel_run(run_id, "alice") is True
    started = time.monotonic()
    assert await asyncio.to_thread(server.wait_aborted, 1, 2.0), "the HTTP request was not aborted"
    assert time.monotonic() - started < 1
    await wait_for(lambda: _no_driver(eng, run_id), 2, "the driver to stop")
    step = await step_of(run_id, "write")
    assert (step["status"], step["error"]) == ("cancelled", "cancelled by alice")
    [attempt] = await attempts_of(run_id, "write")
    assert attempt["status"] == "cancelled"
    assert attempt["partial_output"].startswith("w0 w1 ")
    assert attempt["partial_output"] == words(0, len(attempt["partial_output"].split()))
    assert step["partial_output"] == attempt["partial_output"]
    assert attempt["llm"] is not None and attempt["llm"]["provider"] == "openai-compatible"


async def _no_driver(engine: Engine, run_id: int) -> bool:
    return run_id not in engine.drivers


async def test_a_timeout_fails_the_step_and_keeps_the_partial_text(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    # Text must have arrived before the timeout, whatever the machine: the model client is imported before
    # the step starts (its first import takes a second of CPU, more on a loaded machine), and the timeout
    # leaves 2 s for the first words of a stream that lasts 8.
    await asyncio.to_thread(importlib.import_module, "openai")
    server.reply_tokens, server.chunk_delay_s = 400, 0.02
    define("timeout-llm", [llm(timeout_s=2)], inputs=TOPIC)
    run = await run_to_end(registry.get("timeout-llm"))
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert step["error"] == "timed out after 2 s"
    assert step["partial_output"].startswith("w0 w1 ")
    assert step["partial_output"] == words(0, len(step["partial_output"].split()))
    assert await asyncio.to_thread(server.wait_aborted, 1, 2.0), "the HTTP request was not aborted"


async def test_a_server_that_never_answers_times_out_and_the_request_is_aborted(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.fail_next("hang")
    define("hang-llm", [llm(timeout_s=0.5)], inputs=TOPIC)
    run = await run_to_end(registry.get("hang-llm"))
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert (step["error"], step["partial_output"]) == ("timed out after 0.5 s", None)
    assert await asyncio.to_thread(server.wait_aborted, 1, 2.0), "the HTTP request was not aborted"
    assert len(server.completion_requests) == 1


async def test_streamed_text_is_checkpointed_on_the_running_attempt(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    run_id = await start_streaming(server, define, registry, "checkpoint", 40, 0.03)
    partial = await wait_for(lambda: _partial_in_db(run_id), 3, "a checkpoint of the streamed text")
    running = await step_of(run_id, "write")
    assert running["status"] == "running"
    assert running["partial_output"] and running["partial_output"].startswith("w0 ")  # what viewers are shown
    assert partial.startswith("w0 ")
    await wait_run(run_id, *ENDED)
    step = await step_of(run_id, "write")
    assert step["status"] == "completed"
    assert step["output"].startswith(partial)
    assert step["output"] == words(0, 40)


# --- the prompt sandbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{{ range(10**9)|list }}", "Range too big"),
        ("{{ 'a'*10**9 }}", "a repeated value would be 1,000,000,000 long"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "rendering took longer than 2 s",
        ),
        ("{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}", "long"),
    ],
    ids=["attribute-escape", "huge-range", "huge-repeat", "endless-loop", "doubling-string"],
)
async def test_a_prompt_that_escapes_or_abuses_the_sandbox_fails_the_step_not_the_engine(
    eng: Engine, server: LLMServer, define: Define, prompt: str, message: str, registry: Registry
) -> None:
    define("escape", [llm(prompt=prompt)])  # loads: the template parses and reads nothing undeclared
    started = time.monotonic()
    run = await run_to_end(registry.get("escape"))
    assert time.monotonic() - started < 5
    assert run["status"] == "failed"
    error = run["steps"][0]["error"]
    assert error.startswith("TemplateError: prompt template line 1: "), error
    assert message in error
    assert server.completion_requests == []
    define("after-escape", [llm()], inputs=TOPIC)
    assert (await run_to_end(registry.get("after-escape")))["status"] == "completed"  # the engine goes on


async def test_a_template_runtime_error_names_the_template_line(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("bad-attr", [llm(prompt="Write about\nthe topic\n{{ inputs.topic.nope.deeper }} now.\n")], inputs=TOPIC)
    run = await run_to_end(registry.get("bad-attr"))
    assert run["status"] == "failed"
    error = run["steps"][0]["error"]
    assert error.startswith("TemplateError: prompt template line 3: "), error
    assert "nope" in error
    assert server.completion_requests == []


# --- the API key stays secret -------------------------------------------------------------------------------


async def test_the_api_key_appears_in_no_response_log_or_database_row(
    eng: Engine,
    server: KeyEchoServer,
    llm_settings: Settings,
    define: Define,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    registry: Registry,
) -> None:
    caplog.set_level(logging.DEBUG)
    define("secret", [llm(max_tokens=5, alternatives=2, select="human")], inputs=TOPIC)
    define("secret-fail", [llm()], inputs=TOPIC)
    async with api_client(llm_settings, registry) as api:
        server.fail_next(500, "disconnect")  # retries log their causes
        ok = (await api.post("/api/runs", json={"workflow": "secret", "inputs": {}})).json()["id"]
        assert await wait_run(ok, *ENDED) == "waiting"
        assert (await api.post(f"/api/runs/{ok}/steps/write/select", json={"index": 1})).status_code == 200
        assert await wait_run(ok, *ENDED) == "completed"
        server.reject_key = True  # the server quotes the key it was sent in its 401
        failed = (await api.post("/api/runs", json={"workflow": "secret-fail", "inputs": {}})).json()["id"]
        assert await wait_run(failed, *ENDED) == "failed"
        responses = [await api.get(url) for url in ("/api/llm", "/api/workflows", "/api/runs", "/api/workflows/secret")]
        for run_id in (ok, failed):
            for path in ("", "/attempts", "/events?follow=false"):
                responses.append(await api.get(f"/api/runs/{run_id}{path}"))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert any(KEY in r.headers.get("authorization", "") for r in server.completion_requests), "the key was sent"
    assert "Incorrect API key provided: ***." in (await step_of(failed, "write"))["error"]
    for response in responses:
        assert KEY not in response.text, response.request.url
    assert KEY not in caplog.text
    assert all(KEY not in str(record.args) for record in caplog.records)
    loggers = {r.name for r in caplog.records}
    assert "openai" in {n.split(".")[0] for n in loggers}, "DEBUG was captured"
    backend = type(current()).__module__  # its logger: the module's name, or that name in the stepdeck namespace
    assert {backend, logs.logger(backend).name} & loggers, "the engine's SQL was logged at DEBUG"
    assert any("retry 1 of 3" in r.getMessage() for r in caplog.records)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    on_sqlite = current().kind == "sqlite"
    tables_sql = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if on_sqlite
        else "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    tables = [r["name"] for r in await fetch(tables_sql)]
    assert {"runs", "steps", "attempts", "events", "llm_usage"} <= set(tables)
    for table in tables:
        for row in await fetch(f'SELECT * FROM "{table}"'):
            for column, value in row.items():
                assert KEY not in str(value), f"{table}.{column}"
    if on_sqlite:  # the file itself: freed pages, the WAL
        files = await asyncio.to_thread(files_containing, tmp_path, "stepdeck.db*", KEY)
        assert "stepdeck.db" in files
        assert [name for name, found in files.items() if found] == []


@pytest.mark.parametrize(
    "echo",
    [str.upper, lambda key: key[:12] + "...", lambda key: key[4:].lower()],
    ids=["upper-cased", "truncated", "lower-cased-tail"],
)
async def test_an_echo_of_the_key_in_another_case_or_cut_short_is_scrubbed(
    eng: Engine, server: KeyEchoServer, define: Define, echo: Callable[[str], str], registry: Registry
) -> None:
    server.reject_key, server.echo = True, echo
    define("secret-echo", [llm()], inputs=TOPIC)
    run = await run_to_end(registry.get("secret-echo"))
    assert run["status"] == "failed"
    error = run["steps"][0]["error"]
    assert "Incorrect API key provided: ***" in error
    assert echo(KEY) not in error
    assert not any(KEY.lower()[i : i + 8] in error.lower() for i in range(len(KEY) - 7)), error


async def test_query_parameters_of_the_base_url_are_sent_as_parameters_and_never_logged(
    settings: Settings, server: LLMServer, define: Define, caplog: pytest.LogCaptureFixture, registry: Registry
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{server.base_url}?sig=SIG-SECRET-42&api-version=2024"
    async with llm_engine(pointed_at(settings, url, llm_retry_base_s=0.01), registry):
        define("query", [llm()], inputs=TOPIC)
        run = await run_to_end(registry.get("query"))
    assert run["status"] == "completed", run["error"]
    [request] = server.completion_requests
    assert request.path == "/v1/chat/completions"
    assert request.query == "sig=SIG-SECRET-42&api-version=2024"
    assert any("HTTP Request: POST" in r.getMessage() for r in caplog.records), "the client's INFO line was captured"
    assert "SIG-SECRET-42" not in caplog.text
    assert all("SIG-SECRET-42" not in r.getMessage() for r in caplog.records)
    assert run["steps"][0]["output"] == words(0, 20)


async def test_a_base_url_with_a_password_fails_the_step_without_showing_it(
    settings: Settings, server: LLMServer, define: Define, caplog: pytest.LogCaptureFixture, registry: Registry
) -> None:
    caplog.set_level(logging.DEBUG)
    url = server.base_url.replace("http://", "http://bob:hunter2-SECRET@")
    # Settings made in code skip the environment's checks; the provider refuses the URL itself.
    llm_settings = dataclasses.replace(settings, llm_base_url=url, llm_api_key=Secret(KEY), llm_model=MODEL)
    async with llm_engine(llm_settings, registry):
        define("userinfo", [llm()], inputs=TOPIC)
        run = await run_to_end(registry.get("userinfo"))
    assert run["status"] == "failed"
    assert "has a user name or password in it: put the key in STEPDECK_LLM_API_KEY" in run["steps"][0]["error"]
    assert "hunter2" not in run["steps"][0]["error"] + caplog.text
    assert server.completion_requests == []


def files_containing(directory: Path, pattern: str, text: str) -> dict[str, bool]:
    """Each file matching `pattern`, and whether its bytes contain `text`."""
    return {p.name: text.encode() in p.read_bytes() for p in directory.glob(pattern)}


# --- the simulated provider ----------------------------------------------------------------------------------


async def test_the_bundled_article_workflow_completes_offline_on_the_simulated_provider(
    settings: Settings, define: Define, registry: Registry
) -> None:
    sim = settings.with_overrides(llm_sim_tokens_per_s=5000.0)
    assert providers.provider_name(sim) == providers.SIMULATED
    registry.add(load_file(ARTICLE))
    define("sim-cut", [llm(max_tokens=5)], inputs=TOPIC)
    async with engine_running(sim, registry), api_client(sim, registry) as api:
        llm_info = (await api.get("/api/llm")).json()
        assert llm_info == {
            "provider": "simulated",
            "simulated": True,
            "base_url": None,
            "model": "simulated",
            "max_tokens": 16384,
        }
        r = await api.post("/api/runs", json={"workflow": "llm-article", "inputs": {"topic": "tide pools"}})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        assert await wait_run(run_id, *ENDED, timeout_s=20) == "waiting"
        draft = await step_of(run_id, "draft")
        assert draft["status"] == "waiting"
        assert len(draft["alternatives"]) == 3 and len(set(draft["alternatives"])) == 3
        r = await api.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": 2})
        assert r.status_code == 200, r.text
        assert await wait_run(run_id, *ENDED, timeout_s=20) == "completed"
        run = (await api.get(f"/api/runs/{run_id}")).json()
        cut = await run_to_end(registry.get("sim-cut"))
    outline, draft = run["steps"][:2]
    assert draft["output"] == draft["alternatives"][2]
    [polished] = await attempts_of(run_id, "polish")
    assert polished["consumed"] == {"draft": {"attempt": 1, "index": 2}}  # the chosen draft was polished
    for step in run["steps"]:
        assert (step["status"], step["provider"], step["model"]) == ("completed", "simulated", "simulated")
        assert step["output"].startswith("Simulated output.")
        assert step["llm"]["simulated"] is True
    assert outline["max_tokens"] == 1024
    step = cut["steps"][0]
    assert cut["status"] == "completed"
    assert (step["truncated"], step["finish_reason"], step["provider"]) == (True, "length", "simulated")
    assert len(step["output"].split()) == 5
    assert step["usage"]["completion_tokens"] == 5


# --- streaming to viewers ------------------------------------------------------------------------------------


async def run_watching_tokens(workflow: WorkflowDef) -> tuple[dict[str, Any], list[ChangeJson]]:
    """Run the workflow to its end while subscribed to the hub; returns the run and its `tokens` changes."""
    sub = current().hub.subscribe()
    try:
        run = await run_to_end(workflow)
        changes = await drain(sub)
    finally:
        sub.close()
    return run, [c.to_json() for c in changes if c.run_id == run["id"] and c.kind == "tokens"]


async def test_streamed_text_reaches_subscribers_in_throttled_batches_that_add_up_to_the_output(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.reply_tokens, server.chunk_delay_s = 2000, 0.0003
    define("stream", [llm()], inputs=TOPIC)
    run, tokens = await run_watching_tokens(registry.get("stream"))
    step = run["steps"][0]
    assert step["output"] == words(0, 2000)
    assert all(t["alternative"] == 0 and t["attempt"] == 1 and not t["reset"] for t in tokens)
    assert streamed(tokens, 0) == step["output"]
    assert 2 <= len(tokens) <= step["duration_s"] / 0.1 + 3, (len(tokens), step["duration_s"])


async def test_each_alternative_streams_to_subscribers_on_its_own(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    define("stream-alts", [llm(alternatives=3, select="auto")], inputs=TOPIC)
    run, tokens = await run_watching_tokens(registry.get("stream-alts"))
    assert [streamed(tokens, k) for k in range(3)] == run["steps"][0]["alternatives"]


async def test_a_retried_stream_tells_subscribers_to_drop_what_the_failed_call_streamed(
    eng: Engine, server: LLMServer, define: Define, registry: Registry
) -> None:
    server.fail_next("disconnect")  # two tokens, then the connection drops
    define("stream-retry", [llm()], inputs=TOPIC)
    run, tokens = await run_watching_tokens(registry.get("stream-retry"))
    resets = [t for t in tokens if t["reset"]]
    assert [(t["offset"], t["text"]) for t in resets] == [(0, "")]
    text = ""
    for t in tokens:  # as a viewer applies them, in the order they arrive
        text = text[: t["offset"]] + t["text"]
    assert text == run["steps"][0]["output"] == words(0, 20)


async def drain(sub: Subscription) -> list[Change]:
    """What the subscription holds; everything a finished run published is queued by then."""
    changes = []
    while (change := await sub.get(timeout_s=0.05)) is not None:
        changes.append(change)
    assert not sub.overflowed
    return changes


def streamed(tokens: list[ChangeJson], alternative: int) -> str:
    """The text of one alternative put together from `tokens` changes, checking they fit end to end."""
    text = ""
    for t in sorted((t for t in tokens if t["alternative"] == alternative), key=lambda t: t["offset"]):
        assert t["offset"] == len(text), "batches neither overlap nor leave gaps"
        text += t["text"]
    return text
