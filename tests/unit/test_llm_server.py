"""The test LLM server, driven by the real openai client over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.llm_server import LLMServer

# Imported by the tests that use it: the client takes about half a second to import, and every test process
# collects this module.
if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
# "Quickly", on a loaded machine too: far above what these take, far below the streams they cut short (50 s or more).
QUICK_S = 10.0


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(reply_tokens=5) as running:
        yield running


@pytest.fixture
async def client(server: LLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    import openai

    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as opened:
        yield opened


async def stream_texts(
    client: openai.AsyncOpenAI, messages: list[ChatCompletionMessageParam] = HELLO, **kwargs: Any
) -> tuple[dict[int, str], dict[int, str], Any]:
    """Stream a completion; return text per choice index, finish reason per index and the usage (or None)."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    stream = await client.chat.completions.create(model="m", messages=messages, stream=True, **kwargs)
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish, usage


async def test_streams_words_one_per_chunk_then_usage(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert [c.choices[0].delta.content for c in chunks[:5]] == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[5].choices[0].finish_reason == "stop"
    assert chunks[6].choices == []
    assert chunks[6].usage is not None
    assert (chunks[6].usage.prompt_tokens, chunks[6].usage.completion_tokens, chunks[6].usage.total_tokens) == (2, 5, 7)
    assert len(chunks) == 7
    assert await asyncio.to_thread(server.wait_completed, 1, 2.0)


async def test_non_streaming_completion_has_usage(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="m", messages=HELLO)

    assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 "
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 5)


async def test_small_max_tokens_stops_with_length(client: openai.AsyncOpenAI) -> None:
    texts, finish, _ = await stream_texts(client, max_tokens=2)
    reply = await client.chat.completions.create(model="m", messages=HELLO, max_completion_tokens=3)

    assert (texts, finish) == ({0: "w0 w1 "}, {0: "length"})
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("w0 w1 w2 ", "length")


@pytest.mark.parametrize(
    ("support_n", "expected", "completion_tokens"),
    [
        (True, {0: "a0w0 a0w1 a0w2 a0w3 a0w4 ", 1: "a1w0 a1w1 a1w2 a1w3 a1w4 ", 2: "a2w0 a2w1 a2w2 a2w3 a2w4 "}, 15),
        (False, {0: "w0 w1 w2 w3 w4 "}, 5),
    ],
)
async def test_n_alternatives_differ_unless_unsupported(
    server: LLMServer, client: openai.AsyncOpenAI, support_n: bool, expected: dict[int, str], completion_tokens: int
) -> None:
    server.support_n = support_n
    texts, finish, usage = await stream_texts(client, n=3, stream_options={"include_usage": True})

    assert texts == expected
    assert finish == dict.fromkeys(expected, "stop")
    assert usage.completion_tokens == completion_tokens


async def test_continuation_carries_on_after_the_assistant(client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "write"},
        {"role": "assistant", "content": "w0 w1 "},
        {"role": "user", "content": "go on"},
        {"role": "assistant", "content": "w2 "},
        {"role": "user", "content": "more"},
    ]
    rest, rest_finish, usage = await stream_texts(client, messages, stream_options={"include_usage": True})
    cut, cut_finish, _ = await stream_texts(client, messages, max_tokens=1)
    done, done_finish, _ = await stream_texts(
        client, [*messages[:4], {"role": "assistant", "content": "w3 w4 "}, *HELLO]
    )
    fresh, _, _ = await stream_texts(client, messages[:2])

    assert (rest, rest_finish) == ({0: "w3 w4 "}, {0: "stop"})
    assert usage.prompt_tokens == 7
    assert (cut, cut_finish) == ({0: "w3 "}, {0: "length"})
    assert (done, done_finish) == ({0: ""}, {0: "stop"})
    assert fresh == {0: "w0 w1 w2 w3 w4 "}  # the last message is not the user's: no continuation


async def test_reply_tokens_may_depend_on_the_request(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    server.reply_tokens = lambda body: len(body["messages"][0]["content"])

    texts, _, _ = await stream_texts(client, [{"role": "user", "content": "abc"}])

    assert texts == {0: "w0 w1 w2 "}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (503, "InternalServerError"),
        (400, "BadRequestError"),
    ],
)
async def test_scripted_status_raises_the_client_error(
    server: LLMServer, client: openai.AsyncOpenAI, status: int, error: str
) -> None:
    import openai

    expected: type[openai.APIStatusError] = getattr(openai, error)
    server.fail_next((status, {"retry-after": "0.05"}))

    with pytest.raises(expected) as raised:
        await stream_texts(client)
    texts, _, _ = await stream_texts(client)  # one failure per request: the next one is served

    assert raised.value.status_code == status
    assert raised.value.response.headers["retry-after"] == "0.05"
    assert isinstance(raised.value.body, dict) and raised.value.body["message"]
    assert texts == {0: "w0 w1 w2 w3 w4 "}


async def test_failures_are_consumed_in_order(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    import openai

    server.fail_next(429, 500)

    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=HELLO)
    assert (await client.chat.completions.create(model="m", messages=HELLO)).choices[0].finish_reason == "stop"


def test_unknown_failures_are_refused() -> None:
    server = LLMServer()
    with pytest.raises(ValueError, match="unknown scripted failure"):
        server.fail_next("explode")  # type: ignore[arg-type]


async def test_api_key_is_required_when_set(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    import openai

    server.api_key = "secret"

    with pytest.raises(openai.AuthenticationError) as raised:
        await stream_texts(client)
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="secret", max_retries=0) as keyed:
        texts, _, _ = await stream_texts(keyed)

    assert isinstance(raised.value.body, dict)
    assert (raised.value.body["type"], raised.value.body["code"]) == ("invalid_request_error", "invalid_api_key")
    assert texts == {0: "w0 w1 w2 w3 w4 "}
    assert server.requests[-1].headers["authorization"] == "Bearer secret"


async def test_malformed_chunk_raises_json_error(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    server.fail_next("malformed", "malformed")

    # The openai client does not wrap this: a bad SSE payload surfaces as the json module's own error.
    with pytest.raises(json.JSONDecodeError):
        await stream_texts(client)
    with pytest.raises(json.JSONDecodeError):
        await client.chat.completions.create(model="m", messages=HELLO)


async def test_disconnect_mid_stream_raises_connection_error(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    import openai

    server.fail_next("disconnect", "disconnect")
    received: list[str] = []

    async def read_all() -> None:
        stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIConnectionError) as raised:
        await read_all()
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=HELLO)

    assert received == ["w0 ", "w1 "]
    assert "incomplete chunked read" in str(raised.value.__cause__)
    assert (server.completed, server.aborted) == (0, 0)


async def test_closing_a_stream_midway_counts_as_aborted(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    server.reply_tokens, server.chunk_delay_s = 1000, 0.05

    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    async for _ in stream:
        break
    closed_at = time.monotonic()
    await stream.close()

    assert await asyncio.to_thread(server.wait_aborted, 1, QUICK_S)
    assert time.monotonic() - closed_at < QUICK_S
    assert server.completed == 0


async def test_hang_answers_nothing_until_the_client_gives_up(server: LLMServer) -> None:
    import openai

    server.fail_next("hang")

    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=0.3) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(model="m", messages=HELLO)

    assert await asyncio.to_thread(server.wait_aborted, 1, QUICK_S)


@pytest.mark.parametrize("failure", [None, "hang"])
async def test_close_is_quick_while_a_client_waits(failure: str | None) -> None:
    import openai

    server = LLMServer(reply_tokens=10_000, chunk_delay_s=0.05).start()
    if failure == "hang":
        server.fail_next("hang")
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as opened:
        pending = asyncio.ensure_future(stream_texts(opened))
        assert await asyncio.to_thread(server.wait_requests, 1, QUICK_S)
        await asyncio.sleep(0.1)

        started = time.monotonic()
        await asyncio.to_thread(server.close)

        assert time.monotonic() - started < QUICK_S
        with pytest.raises(openai.APIConnectionError):
            await pending
    assert server.aborted == 0  # the server left, not the client


async def test_requests_are_recorded_and_reset_clears_them(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    server.chunk_delay_s = 0.02
    await client.chat.completions.create(model="m", messages=HELLO, temperature=0.5, max_tokens=4)
    models = await client.models.list()

    [first, second] = server.requests
    assert (first.method, first.path, first.body["temperature"], first.body["max_tokens"]) == (
        "POST",
        "/v1/chat/completions",
        0.5,
        4,
    )
    assert first.headers["authorization"] == "Bearer x"
    assert (second.method, second.path) == ("GET", "/v1/models")
    assert [m.id for m in models.data] == ["stepdeck-test"]
    assert server.busy_s >= 0.06  # four tokens at 20 ms each
    assert server.completed == 1

    server.fail_next(500)
    server.reset()

    assert (server.requests, server.completed, server.aborted, server.busy_s) == ([], 0, 0, 0.0)
    assert (await client.chat.completions.create(model="m", messages=HELLO)).choices[0].finish_reason == "stop"


def test_sync_client_and_subprocess_reach_it(server: LLMServer) -> None:
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sync_client:
        stream = sync_client.chat.completions.create(model="m", messages=HELLO, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    script = f"import urllib.request; print(urllib.request.urlopen('{server.base_url}/models').read().decode())"
    listed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)

    assert text == "w0 w1 w2 w3 w4 "
    assert json.loads(listed.stdout)["data"][0]["id"] == "stepdeck-test"


# --- behaving like the real servers (issue 14) ----------------------------------------------------------------


async def test_like_llama_cpp_python_a_running_stream_is_cut_when_another_request_queues(
    server: LLMServer, client: openai.AsyncOpenAI
) -> None:
    # 3 s of stream for the second request to arrive in, however busy the machine.
    server.cut_on_queue, server.chunk_delay_s, server.reply_tokens = True, 0.05, 60
    first = asyncio.create_task(stream_texts(client))
    assert await asyncio.to_thread(server.wait_requests, 1)
    second = asyncio.create_task(stream_texts(client))
    (texts, finish, _), (texts2, finish2, _) = await asyncio.gather(first, second)
    assert finish == {}  # [DONE] with no finish reason, wherever the second request cut it
    assert finish2 == {0: "stop"} and texts2[0].startswith("w0 ")
    assert texts2[0].startswith(texts[0]) and len(texts[0].split()) < 60  # the first stream stopped short
    assert server.cut == 1


async def test_like_llama_cpp_python_no_usage_in_streams_n_ignored_any_model_echoed(
    server: LLMServer, client: openai.AsyncOpenAI
) -> None:
    server.stream_usage, server.support_n = "none", False
    texts, _, usage = await stream_texts(client, n=3, stream_options={"include_usage": True})
    assert (list(texts), usage) == ([0], None)


async def test_like_llama_server_one_usage_record_per_choice(server: LLMServer, client: openai.AsyncOpenAI) -> None:
    server.stream_usage = "per_choice"
    stream = await client.chat.completions.create(
        model="m", messages=HELLO, stream=True, n=2, stream_options={"include_usage": True}
    )
    usages = [chunk.usage.completion_tokens async for chunk in stream if chunk.usage]
    assert usages == [5, 5]


async def test_like_llama_server_max_tokens_capped_at_the_context_size_told_by_props(
    server: LLMServer, client: openai.AsyncOpenAI
) -> None:
    server.context_size, server.reply_tokens = 6, 50
    texts, finish, _ = await stream_texts(client, max_tokens=16384)
    assert (len(texts[0].split()), finish[0]) == (4, "length")  # 6 minus the 2 prompt tokens
    props = await client.get(server.base_url.removesuffix("/v1") + "/props", cast_to=object)
    assert props == {"default_generation_settings": {"n_ctx": 6}, "total_slots": 1}


@pytest.mark.parametrize(
    ("setting", "kwargs", "message"),
    [
        ("refuse_n", {"n": 2}, "'n' is not supported"),
        ("strict_models", {"model": "nope"}, "model 'nope' not found"),
        ("refuse_stream_options", {"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_refusals_of_a_strict_server(
    server: LLMServer, client: openai.AsyncOpenAI, setting: str, kwargs: dict[str, Any], message: str
) -> None:
    import openai

    setattr(server, setting, True)
    with pytest.raises(openai.BadRequestError, match=message):
        await client.chat.completions.create(**{"model": "stepdeck-test", "messages": HELLO, "stream": True, **kwargs})
