"""The floor of a `POST /api/runs`: the same HTTP server (uvicorn, its default loop and parser, as
`main.py serve` runs it), FastAPI validating the same body model, and a JSON answer of the size of
a 10-step run's, with no database and no middleware. `bench.engine` measures the CPU of a request here
and on `serve --no-engine` side by side: what lies above this floor is ours.

    uv run python -m bench.http_floor PORT
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ui.api import StartRunIn

app = FastAPI()


def _answer(workflow: str, steps: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    step: dict[str, Any] = {
        "label": None,
        "kind": "python",
        "needs": [],
        "status": "pending",
        "attempt": 0,
        "output": None,
        "alternatives": [],
        "selected_index": None,
        "partial_output": None,
        "error": None,
        "error_detail": None,
        "stale": False,
        "stale_reason": None,
        "started_at": None,
        "completed_at": None,
        "duration_s": None,
        "progress": None,
        "progress_message": None,
        "logs": [],
        "log_times": [],
        "usage": None,
        "max_tokens": None,
        "finish_reason": None,
        "truncated": False,
        "provider": None,
        "model": None,
        "llm": None,
        "cost": None,
        "retries": 0,
        "retries_used": 0,
        "retry_at": None,
    }
    return {
        "id": 1,
        "workflow": workflow,
        "status": "queued",
        "inputs": {},
        "created_at": now,
        "updated_at": now,
        "steps": [{**step, "key": f"s{i}", "label": f"s{i}"} for i in range(steps)],
    }


@app.post("/api/runs", status_code=201)
async def start_run(body: StartRunIn) -> JSONResponse:
    return JSONResponse(_answer(body.workflow, 10), status_code=201)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
