"""A real HTTP receiver on loopback for notification tests: records every request; answers a scripted
status (e.g. 500 twice, then 200); can be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.integration.served import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.codes: list[int] = []  # answered in order; 200 once they are used up
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), raw))
                    code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self, match: Callable[[Received], bool] = lambda r: True) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if match(r)]

    def wait_for(self, match: Callable[[Received], bool], timeout_s: float = 30.0, count: int = 1) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.received(match)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"the receiver got {len(self.received(match))} matching requests, not {count}")

    async def until(self, match: Callable[[Received], bool], timeout_s: float = 30.0, count: int = 1) -> list[Received]:
        """`wait_for` from a test whose event loop runs the engine (it must not be blocked)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.received(match)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"the receiver got {len(self.received(match))} matching requests, not {count}")


def event(name: str) -> Callable[[Received], bool]:
    return lambda r: r.headers.get("X-Stepdeck-Event") == name or _event_in_body(r) == name


def _event_in_body(r: Received) -> str | None:
    try:
        data = r.json
    except ValueError:
        return None
    return data.get("event") if isinstance(data, dict) else None
