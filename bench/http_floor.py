"""The floor of a `POST /api/runs`: the same HTTP server (uvicorn, its default loop and parser, as
`main.py serve` runs it), FastAPI validating the same body model, and the same JSON answer (a queued
10-step run, built as the API builds it), with no database and no middleware. `bench.engine` measures
the CPU of a request here and on `serve --no-engine` side by side: what lies above this floor is ours.

    uv run python -m bench.http_floor PORT
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI

from engine.definitions import parse_definition
from engine.readmodel import created_run_json
from ui.api import OrjsonResponse, StartRunIn

app = FastAPI()
PAR = parse_definition({"name": "par", "steps": [{"key": f"s{i}", "call": "bench.steps:noop"} for i in range(10)]}, "")


@app.post("/api/runs", status_code=201)
async def start_run(body: StartRunIn) -> OrjsonResponse:
    run = created_run_json(1, PAR, dict(body.inputs), "api@127.0.0.1", datetime.now(UTC))
    return OrjsonResponse(run, status_code=201)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
