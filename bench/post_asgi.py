"""The layers of `bench.post_layers` without HTTP: each layer's ASGI app called in this process with the
same `POST /api/runs`, its CPU per request measured in short rounds, the layers interleaved, the floor's
app (`bench/http_floor.py`) among them. Without sockets and server processes the figures are steadier
than over HTTP, and the least round of many is steadier still on a busy machine.

    uv run python -m bench.post_asgi [--posts 200] [--reps 40] [--no-db]

`--no-db`: `operations.start_run_json` answers with the floor's run (`created_run`) without writing it,
so what is left above the floor is the HTTP layers' own cost (router, dependencies, error handlers,
GZip, the gate). The served app (NiceGUI's, with `ApiFastPath`) is measured over HTTP only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engine import BENCH_STEPS, workflow_yaml
from bench.post_layers import LAYERS, layer_app, print_table
from engine import operations
from engine.db import close_database, open_database
from engine.definitions import WorkflowDef
from engine.readmodel import RunDetailJson, created_run_json
from tests.dbtemplate import migrated_copy
from tests.integration.served import Workspace

BODY = json.dumps({"workflow": "par", "inputs": {}}).encode()
HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"user-agent", b"python-httpx"),
    (b"content-length", str(len(BODY)).encode()),
    (b"content-type", b"application/json"),
]


async def post(app: Any) -> None:
    """One `POST /api/runs` through `app`, as uvicorn would pass it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/api/runs",
        "raw_path": b"/api/runs",
        "query_string": b"",
        "headers": list(HEADERS),
        "state": {},
    }
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays; the app never reads this far
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    assert statuses == [201], statuses


async def _without_writing(defn: WorkflowDef, inputs: Any, actor: str, *, from_strings: bool = False) -> RunDetailJson:
    return created_run_json(1, defn, dict(inputs), actor, datetime.now(UTC))


async def measure(apps: dict[str, Any], db_url: str, posts: int, reps: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {layer: [] for layer in apps}
    await open_database(db_url)
    try:
        for app in apps.values():
            for _ in range(100):  # warm up: imports, caches
                await post(app)
        for _ in range(reps):
            for layer, app in apps.items():
                before = time.process_time()
                for _ in range(posts):
                    await post(app)
                samples[layer].append((time.process_time() - before) / posts * 1000)
    finally:
        await close_database()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=200, help="requests per layer and round")
    parser.add_argument("--reps", type=int, default=40, help="interleaved rounds")
    parser.add_argument("--no-db", action="store_true", help="start_run_json writes nothing (HTTP layers only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-asgi-") as name:
        ws = Workspace(Path(name), {"par": workflow_yaml("par", 10)}, {"benchsteps": BENCH_STEPS})
        migrated_copy(ws.db_path)
        os.environ.update({k: v for k, v in ws.env.items() if k.startswith(("STEPDECK_", "NICEGUI_"))})
        from bench.http_floor import app as floor_app

        apps = {"floor": floor_app, **{layer: layer_app(layer) for layer in LAYERS if layer not in ("floor", "served")}}
        if args.no_db:
            operations.start_run_json = _without_writing
            del apps["insert"]
        samples = asyncio.run(measure(apps, ws.db_url, args.posts, args.reps))
    what = "no database" if args.no_db else "SQLite"
    print_table(samples, f"in-process ASGI, {what}, {args.reps} interleaved rounds of {args.posts}")


if __name__ == "__main__":
    main()
