"""A real OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

It runs in background threads, so sync tests, async tests (the event loop is never blocked by it) and
subprocesses can all reach it. Replies are deterministic: token i is the word ``w{i}`` followed by a space;
alternative k of a request with n > 1 prefixes each token with ``a{k}``.

    with LLMServer(reply_tokens=5) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import select
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

ReplyTokens = int | Callable[[dict[str, Any]], int]
Failure = int | tuple[int, Mapping[str, str]] | Literal["disconnect", "malformed", "hang", "cut"]
StreamUsage = Literal["end", "none", "per_choice"]

_FAILURE_WORDS = ("disconnect", "malformed", "hang", "cut")
_POLL_S = 0.02  # how often waits look for a closed client or a closing server
_TOKEN = re.compile(r"(?:a\d+)?w\d+")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (header names lower-cased; body is the parsed JSON or None)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float  # time.time()
    query: str = ""  # the query string, without the "?"


@dataclass(frozen=True)
class Plan:
    """What a completion request will produce: tokens start..start+count-1 for each of n_choices."""

    model: str
    n_choices: int
    start: int
    count: int
    finish_reason: str
    prompt_tokens: int

    def token(self, choice: int, i: int) -> str:
        return f"a{choice}w{i} " if self.n_choices > 1 else f"w{i} "

    def text(self, choice: int) -> str:
        return "".join(self.token(choice, i) for i in range(self.start, self.start + self.count))

    def usage(self, choices: int | None = None) -> dict[str, int]:
        """Usage of the whole request, or (choices=1) of one choice, as llama-server reports each."""
        completion = self.count * (self.n_choices if choices is None else choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


class BadRequest(ValueError):
    """The request body is not a valid chat completion request (answered with 400)."""


def _words(content: Any) -> list[str]:
    if isinstance(content, str):
        return content.split()
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return [w for part in content if isinstance(part, dict) for w in str(part.get("text") or "").split()]
    return []


def _positive_int(body: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{key}' must be a positive integer")
        return value
    return None


def plan_completion(
    body: dict[str, Any], reply_tokens: ReplyTokens, support_n: bool, context_size: int | None = None
) -> Plan:
    """Decide tokens, finish reason and prompt size of a chat completion request; raises BadRequest.
    With a context size, max_tokens is silently capped at what the context leaves (as llama.cpp does)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a non-empty list of objects")
    natural = reply_tokens(body) if callable(reply_tokens) else reply_tokens
    max_tokens = _positive_int(body, "max_completion_tokens", "max_tokens")
    n = _positive_int(body, "n") or 1
    start = 0
    if messages[-1].get("role") == "user" and any(m.get("role") == "assistant" for m in messages[:-1]):
        # Continuation: carry on the same sequence after everything the assistant already said.
        start = sum(
            1 for m in messages if m.get("role") == "assistant" for w in _words(m.get("content")) if _TOKEN.fullmatch(w)
        )
    remaining = max(natural - start, 0)
    prompt_tokens = sum(len(_words(m.get("content"))) for m in messages)
    if context_size is not None:
        room = max(context_size - prompt_tokens, 0)
        max_tokens = room if max_tokens is None else min(max_tokens, room)
    truncated = max_tokens is not None and max_tokens < remaining
    return Plan(
        model=str(body.get("model") or "unknown"),
        n_choices=n if support_n else 1,
        start=start,
        count=max_tokens if truncated and max_tokens is not None else remaining,
        finish_reason="length" if truncated else "stop",
        prompt_tokens=prompt_tokens,
    )


def error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON for a status code."""
    kind = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    if code is None and status == 429:
        code = "rate_limit_exceeded"
    text = message or f"{HTTPStatus(status).phrase} (scripted by the test server)"
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


class _ClientGone(Exception):
    """The client closed the connection before the server finished."""


class _ServerClosing(Exception):
    """LLMServer.close() was called while this request was being served."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() joins the handler threads itself, with a bound
    request_queue_size = 128

    def __init__(self, owner: LLMServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            return  # a client went away at an unlucky moment
        self.owner.errors.append("".join(traceback.format_exc()))
        traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each SSE chunk leaves at once
    server: _HTTPServer
    interrupted = False  # set by a request that queues behind this one (cut_on_queue)

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- low-level I/O that notices a closed client or a closing server ---

    def _check(self) -> None:
        if self.server.owner._stopping.is_set():
            raise _ServerClosing
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                raise _ClientGone
        except (OSError, ValueError) as err:
            raise _ClientGone from err

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self._check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Wakes early when the client closes (EOF is readable); _check then tells which it was.
            readable, _, _ = select.select([self.connection], [], [], min(left, _POLL_S))
            if readable:
                time.sleep(min(left, _POLL_S))  # readable but still open (pipelined bytes): don't spin

    def _io_error(self) -> Exception:
        return _ServerClosing() if self.server.owner._stopping.is_set() else _ClientGone()

    def _write(self, data: bytes, check: bool = True) -> None:
        if check:
            self._check()
        try:
            self.wfile.write(data)
        except OSError as err:
            raise self._io_error() from err

    def _send_head(self, status: int, headers: Mapping[str, str]) -> None:
        self._check()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        try:
            self.end_headers()
        except OSError as err:
            raise self._io_error() from err

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._send_head(
            status, {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        )
        self._write(data)

    def _chunk(self, data: bytes) -> None:
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, obj: Any) -> None:
        self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _start_stream(self) -> None:
        self._send_head(
            200,
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "Transfer-Encoding": "chunked",
            },
        )

    # --- requests ---

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        owner = self.server.owner
        body = self._read_body() if method == "POST" else None
        path, _, query = self.path.partition("?")
        path = path.rstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner._record(RecordedRequest(method, path, headers, body, time.time(), query))
        try:
            if method == "POST" and path == "/v1/chat/completions":
                self._completion(body)
            elif not owner._authorized(self.headers.get("Authorization")):
                self._send_json(401, owner._auth_error())
            elif method == "GET" and path == "/stats":  # for a benchmark that runs the server in its own process
                stats = {"busy_s": owner.busy_s, "completion_requests": len(owner.completion_requests)}
                self._send_json(200, {**stats, "completed": owner.completed, "aborted": owner.aborted})
            elif method == "GET" and path == "/v1/models" and owner.list_models:
                models = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "stepdeck-tests"} for m in owner.models
                ]
                if owner.context_size is not None and owner.context_via == "models":
                    for m in models:  # as llama-server describes its model
                        m["meta"] = {"n_ctx_train": owner.context_size, "n_vocab": 32000}
                self._send_json(200, {"object": "list", "data": models})
            elif (
                method == "GET" and path == "/props" and owner.context_size is not None and owner.context_via == "props"
            ):
                props = {"default_generation_settings": {"n_ctx": owner.context_size}, "total_slots": 1}
                self._send_json(200, props)
            else:
                self._send_json(404, error_body(404, f"Unknown endpoint {method} {path}", "unknown_url"))
        except (_ClientGone, _ServerClosing):
            self.close_connection = True

    def _completion(self, body: Any) -> None:
        owner = self.server.owner
        started = time.perf_counter()
        try:
            failure = owner._pop_failure()
            if failure is not None:
                self._fail(failure, body)
                return
            if not owner._authorized(self.headers.get("Authorization")):
                self._send_json(401, owner._auth_error())
                return
            try:
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                refusal = owner._refusal(body)
                if refusal is not None:
                    raise BadRequest(refusal)
                plan = plan_completion(body, owner.reply_tokens, owner.support_n, owner.context_size)
            except BadRequest as err:
                self._send_json(400, error_body(400, str(err)))
                return
            stream_options = body.get("stream_options") or {}
            if body.get("stream"):
                with owner._generating(self):
                    self._stream(plan, bool(stream_options.get("include_usage")))
            else:
                self._pause(plan.count * owner.chunk_delay_s)
                self._send_json(200, owner._completion_json(plan))
            owner._count("completed")
        except _ClientGone:
            owner._count("aborted")
            raise
        finally:
            owner._add_busy(time.perf_counter() - started)

    def _stream(self, plan: Plan, include_usage: bool, stop_after: int | None = None) -> None:
        """Stream the plan's chunks; with stop_after, cut the connection after that many token chunks."""
        owner = self.server.owner
        meta = owner._chunk_meta(plan)
        usage_mode = owner.stream_usage if include_usage else "none"
        extra: dict[str, Any] = {"usage": None} if usage_mode != "none" else {}
        self._start_stream()
        if owner.cut_on_queue:
            # llama-cpp-python sends the role first; a request queued behind this one ends it right there.
            for k in range(plan.n_choices):
                self._event({**meta, "choices": [_choice(k, {"role": "assistant", "content": ""}, None)], **extra})
        for step, i in enumerate(range(plan.start, plan.start + plan.count)):
            if step == stop_after:
                self._cut()
                return
            if step or owner.cut_on_queue:
                self._pause(owner.chunk_delay_s)
            if self.interrupted:
                self._chunk(b"data: [DONE]\n\n")
                self._write(b"0\r\n\r\n", check=False)
                owner._count("cut")
                return
            for k in range(plan.n_choices):
                delta = (
                    {"role": "assistant", "content": plan.token(k, i)} if step == 0 else {"content": plan.token(k, i)}
                )
                self._event({**meta, "choices": [_choice(k, delta, None)], **extra})
        if stop_after is not None:
            self._cut()
            return
        self._pause(owner.chunk_delay_s if plan.count else 0)
        for k in range(plan.n_choices):
            delta = {} if plan.count else {"role": "assistant", "content": ""}
            self._event({**meta, "choices": [_choice(k, delta, plan.finish_reason)], **extra})
            if usage_mode == "per_choice":
                self._event({**meta, "choices": [], "usage": plan.usage(choices=1)})
        if usage_mode == "end":
            self._event({**meta, "choices": [], "usage": plan.usage()})
        self._chunk(b"data: [DONE]\n\n")
        self._write(b"0\r\n\r\n", check=False)

    def _cut(self) -> None:
        """Close the socket mid-body, without the final chunk: the client sees an incomplete response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _fail(self, failure: Failure, body: Any) -> None:
        owner = self.server.owner
        streaming = isinstance(body, dict) and bool(body.get("stream"))
        if failure == "hang":
            while True:
                self._pause(3600)
        elif failure == "disconnect":
            try:
                plan = plan_completion(body, 2, False) if isinstance(body, dict) else None
            except BadRequest:
                plan = None
            if streaming and plan is not None:
                self._stream(plan, False, stop_after=2)
            else:
                data = json.dumps(owner._completion_json(plan) if plan else {}).encode()
                self._send_head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
                self._write(data[: len(data) // 2])
                self._cut()
        elif failure == "cut":  # a role chunk, then [DONE]: no finish reason (a stream cut by the server)
            self._start_stream()
            self._event(
                {
                    "id": "chatcmpl-cut",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "x",
                    "choices": [_choice(0, {"role": "assistant", "content": ""}, None)],
                }
            )
            self._chunk(b"data: [DONE]\n\n")
            self._write(b"0\r\n\r\n")
        elif failure == "malformed":
            if streaming:
                self._start_stream()
                self._chunk(b"data: {not json\n\n")
                self._chunk(b"data: [DONE]\n\n")
                self._write(b"0\r\n\r\n")
            else:
                data = b"{not json"
                self._send_head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
                self._write(data)
        else:
            status, headers = failure if isinstance(failure, tuple) else (failure, {})
            self._send_json(status, error_body(status), headers)


def _choice(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class LLMServer:
    """OpenAI-compatible chat completion server on 127.0.0.1 (random port); thread-safe counters for tests."""

    def __init__(
        self,
        *,
        reply_tokens: ReplyTokens = 20,
        support_n: bool = True,
        chunk_delay_s: float = 0.0,
        api_key: str | None = None,
        models: tuple[str, ...] = ("stepdeck-test",),
    ) -> None:
        # Settings: read at every request, so a test may change them while the server runs.
        self.reply_tokens: ReplyTokens = reply_tokens
        self.support_n = support_n  # False: answer one choice whatever `n` asks (llama-cpp-python)
        self.refuse_n = False  # True: a request with n > 1 gets a 400 about `n`
        self.chunk_delay_s = chunk_delay_s
        self.api_key = api_key
        self.models = models
        self.list_models = True  # False: GET /v1/models answers 404
        self.strict_models = False  # True: a model not in `models` gets a 400 (else any name is echoed)
        self.stream_usage: StreamUsage = "end"  # none: no usage in streams even when asked (llama-cpp-python);
        # per_choice: one usage record after each choice (llama-server with n)
        self.refuse_stream_options = False  # True: a request with stream_options gets a 400
        self.cut_on_queue = False  # True: a running stream ends (no finish reason) when another request queues
        self.context_size: int | None = None  # caps max_tokens silently at what the context leaves
        self.context_via: Literal["props", "models"] = "props"  # where the context size is told
        self.errors: list[str] = []  # tracebacks of unexpected handler errors
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._failures: deque[Failure] = deque()
        self._requests: list[RecordedRequest] = []
        self._counts = {"aborted": 0, "completed": 0, "cut": 0}
        self._busy_s = 0.0
        self._streaming: list[_Handler] = []
        self.max_streaming = 0  # the most streams served at once
        self._generation = threading.Lock()  # cut_on_queue: one stream at a time, as one llama.cpp slot
        self._ids = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> Self:
        """Bind a random loopback port and serve in a daemon thread."""
        if self._httpd is None:
            self._httpd = _HTTPServer(self)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="llm-server", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop serving: open streams, hanging requests and idle keep-alive connections end at once."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # wakes handlers blocked reading the next keep-alive request
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            self._lock.wait_for(lambda: not self._connections, timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LLMServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def open_connections(self) -> int:
        """Client connections open now (kept alive between requests, or serving one)."""
        with self._lock:
            return len(self._connections)

    @property
    def base_url(self) -> str:
        """What OpenAI clients take as base_url: http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting and observing ---

    def fail_next(self, *items: Failure) -> None:
        """Queue failures, consumed in order, one per chat completion request."""
        for item in items:
            status = item[0] if isinstance(item, tuple) else item
            if not (isinstance(status, int) and 400 <= status <= 599) and item not in _FAILURE_WORDS:
                raise ValueError(f"unknown scripted failure: {item!r}")
        with self._lock:
            self._failures.extend(items)

    def reset(self) -> None:
        """Forget scripted failures, requests and counters (settings stay as they are)."""
        with self._lock:
            self._failures.clear()
            self._requests.clear()
            self._counts = {"aborted": 0, "completed": 0, "cut": 0}
            self._busy_s = 0.0
            self.max_streaming = 0
            self.errors.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def aborted(self) -> int:
        """Completion requests the client closed before the server finished answering."""
        return self._counted("aborted")

    @property
    def cut(self) -> int:
        """Streams ended early, without a finish reason, because another request queued (cut_on_queue)."""
        return self._counted("cut")

    @property
    def completed(self) -> int:
        """Completion requests answered in full (streamed or not)."""
        return self._counted("completed")

    @property
    def busy_s(self) -> float:
        """Seconds spent serving completion requests, summed over requests (overlapping ones count twice)."""
        with self._lock:
            return self._busy_s

    def wait_aborted(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Block until `aborted` reaches count; False on timeout (from async code: asyncio.to_thread)."""
        return self._wait(lambda: self._counts["aborted"] >= count, timeout_s)

    def wait_completed(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        return self._wait(lambda: self._counts["completed"] >= count, timeout_s)

    def wait_requests(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        return self._wait(lambda: len(self._requests) >= count, timeout_s)

    # --- used by the handler threads ---

    def _wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(predicate, timeout_s)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                if self._stopping.is_set():  # accepted while close() ran: don't wait for its first request
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            else:
                self._connections.discard(conn)
                self._lock.notify_all()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _counted(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
            self._lock.notify_all()

    def _add_busy(self, seconds: float) -> None:
        with self._lock:
            self._busy_s += seconds

    def _refusal(self, body: dict[str, Any]) -> str | None:
        """Why a request is refused with a 400 under the server's settings, or None."""
        n = body.get("n")
        if self.refuse_n and isinstance(n, int) and n > 1:
            return "'n' is not supported: only n=1 is allowed"
        if self.strict_models and body.get("model") not in self.models:
            return f"model '{body.get('model')}' not found"
        if self.refuse_stream_options and "stream_options" in body:
            return "Unrecognized request argument supplied: stream_options"
        return None

    @contextlib.contextmanager
    def _generating(self, handler: _Handler) -> Iterator[None]:
        """One stream being served; with cut_on_queue, one at a time, and a newcomer ends the running one."""
        with self._lock:
            if self.cut_on_queue:
                for running in self._streaming:
                    running.interrupted = True
            self._streaming.append(handler)
            self.max_streaming = max(self.max_streaming, len(self._streaming))
        try:
            if self.cut_on_queue:
                with self._generation:
                    yield
            else:
                yield
        finally:
            with self._lock:
                self._streaming.remove(handler)

    def _pop_failure(self) -> Failure | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def _auth_error(self) -> dict[str, Any]:
        return error_body(401, "Incorrect API key provided.", "invalid_api_key")

    def _chunk_meta(self, plan: Plan) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": plan.model,
        }

    def _completion_json(self, plan: Plan) -> dict[str, Any]:
        choices = [
            {
                "index": k,
                "message": {"role": "assistant", "content": plan.text(k), "refusal": None},
                "logprobs": None,
                "finish_reason": plan.finish_reason,
            }
            for k in range(plan.n_choices)
        ]
        meta = {**self._chunk_meta(plan), "object": "chat.completion"}
        return {**meta, "choices": choices, "usage": plan.usage()}


def main() -> None:
    """Serve until killed, in a process of its own: `python -m tests.llm_server [--tokens N]`.
    Prints the base URL on the first line; `GET /stats` reports the server's own time."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20, help="tokens per completion")
    args = parser.parse_args()
    with LLMServer(reply_tokens=args.tokens) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
