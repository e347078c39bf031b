"""Where the CPU of a `POST /api/runs` goes, one layer at a time, each against the HTTP floor.

    uv run python -m bench.post_layers [--posts 300] [--reps 5]

Every layer is a server process of its own answering the same request (a 10-step workflow, empty
inputs); the CPU each process spends per request is measured on all of them in turn, `--reps` times
interleaved (the median and the least round reported), and set against the floor's: absolute times on a
shared machine are noise.
Each layer adds one thing to the one before:

- floor: `bench/http_floor.py` (uvicorn, FastAPI validating the body model, the JSON of a queued run)
- insert: the floor's route doing the real work, `operations.start_run_json` (inputs checked, the run
  and its steps written through the SQLite writer, the read model built), on an open database
- route: the API's own router instead (`ui/api.py`: its nested routers, dependencies, the route)
- errors: + the API's error handlers (`ui/errors.py`)
- gzip: + GZipMiddleware
- gate: + the gate (`ui/security/`): the API app that `ApiFastPath` serves (`ui.app.api_app`)
- served: `main.py serve --no-engine`: NiceGUI's app and `ApiFastPath` in front of the above

`--served-from DIR[,DIR]` adds the served process of other checkouts (e.g. `git archive` of an older
commit) as layers of their own: a before and after measured side by side.

A layer's process: `python -m bench.post_layers serve LAYER PORT` (settings from the environment).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.gzip import GZipMiddleware

from engine import operations
from engine.db import close_database, open_database
from engine.registry import Registry
from engine.settings import from_env
from ui import errors
from ui.api import OrjsonResponse, StartRunIn, router
from ui.app import API_GZIP_MIN_BYTES, api_app
from ui.security import SessionCache

LAYERS = ("floor", "insert", "route", "errors", "gzip", "gate", "served")


# --- the layers' processes -------------------------------------------------------------------------


def layer_app(layer: str) -> Any:
    """The ASGI app of a layer (`floor` and `served` are served by their own modules)."""
    settings = from_env()
    workflows = Registry()
    workflows.load(settings.workflows_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await open_database(settings.db_url)
        try:
            yield
        finally:
            await close_database()

    if layer == "gate":
        app = api_app(settings, SessionCache(), workflows)
        app.router.lifespan_context = lifespan
        return app
    app = FastAPI(lifespan=lifespan)
    app.state.settings = settings
    app.state.workflows = workflows
    if layer == "insert":

        @app.post("/api/runs", status_code=201)
        async def start_run(body: StartRunIn) -> JSONResponse:
            run = await operations.start_run_json(workflows.get(body.workflow), body.inputs, "api@127.0.0.1")
            return OrjsonResponse(run, status_code=201)

        return app
    app.include_router(router)
    if layer in ("errors", "gzip"):
        errors.install(app)
    if layer == "gzip":
        app.add_middleware(GZipMiddleware, minimum_size=API_GZIP_MIN_BYTES, compresslevel=1)  # as `ui.app`
    return app


def serve_layer(layer: str, port: int) -> None:
    import uvicorn

    uvicorn.run(layer_app(layer), host="127.0.0.1", port=port, log_level="warning")


# --- measuring -------------------------------------------------------------------------------------


@contextlib.contextmanager
def layer_server(layer: str, tmp: Path) -> Iterator[tuple[int, Callable[[], object]]]:
    """A layer served on a free port, on a workspace of its own: its pid and one POST."""
    from bench.engine import BENCH_STEPS, serving_posts, workflow_yaml
    from tests.dbtemplate import migrated_copy
    from tests.integration.served import ROOT, Server, Workspace, free_port

    ws = Workspace(tmp / Path(layer).name, {"par": workflow_yaml("par", 10)}, {"benchsteps": BENCH_STEPS})
    migrated_copy(ws.db_path)
    if layer == "served":
        server = Server(ws, extra_args=["--no-engine"])
        server.start()
        assert server.proc is not None
        try:
            yield server.proc.pid, lambda: server.start_run("par")
        finally:
            server.close()
        return
    port = free_port()
    if layer not in LAYERS:  # a checkout's served process, named by its directory
        cwd, cmd = Path(layer), ["main.py", "serve", "--no-engine", "--host", "127.0.0.1", "--port", str(port)]
    elif layer == "floor":
        cwd, cmd = ROOT, ["-m", "bench.http_floor", str(port)]
    else:
        cwd, cmd = ROOT, ["-m", "bench.post_layers", "serve", layer, str(port)]
    with serving_posts(cmd, cwd, ws.env, port, "/api/health") as served:
        yield served


def measure(layers: list[str], posts: int, reps: int) -> dict[str, list[float]]:
    from bench.engine import post_cpu_ms

    samples: dict[str, list[float]] = {layer: [] for layer in layers}
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-post-") as name, contextlib.ExitStack() as stack:
        servers = {layer: stack.enter_context(layer_server(layer, Path(name))) for layer in layers}
        for rep in range(reps):
            for layer, (pid, post) in servers.items():
                samples[layer].append(post_cpu_ms(pid, post, posts))
            print(f"  (repetition {rep + 1} of {reps} done)", flush=True)
    return samples


def print_table(samples: dict[str, list[float]], rounds: str) -> None:
    """Each layer's CPU per request, against the floor's (`samples["floor"]`) and the layer above."""
    floor, floor_min = statistics.median(samples["floor"]), min(samples["floor"])
    print(f"\nPOST /api/runs, CPU per request by layer ({rounds}; {datetime.now(UTC):%H:%M} UTC)")
    print("  median: of the rounds; least: the least round, which a busy machine disturbs the least")
    print(f"  {'layer':<8} {'median ms':>9} {'x floor':>8} {'+ms':>7}   {'least ms':>8} {'x floor':>8} {'+ms':>7}")
    previous: tuple[float, float] | None = None
    for layer in samples:
        m, least = statistics.median(samples[layer]), min(samples[layer])
        delta = ("", "") if previous is None else (f"{m - previous[0]:+.3f}", f"{least - previous[1]:+.3f}")
        median_part = f"{m:9.3f} {m / floor:8.2f} {delta[0]:>7}"
        name = layer if layer in LAYERS else Path(layer).name
        print(f"  {name:<8} {median_part}   {least:8.3f} {least / floor_min:8.2f} {delta[1]:>7}")
        previous = (m, least)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve_layer(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=300, help="requests timed per layer and repetition")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--layers", default=",".join(LAYERS), help=f"a subset of {','.join(LAYERS)}")
    parser.add_argument("--served-from", default="", help="checkouts whose served process is measured too")
    args = parser.parse_args()
    layers = [layer for layer in args.layers.split(",") if layer]
    unknown = set(layers) - set(LAYERS)
    if unknown or "floor" not in layers:
        raise SystemExit(f"layers are among {', '.join(LAYERS)}, the floor included")
    layers += [str(Path(d).resolve()) for d in args.served_from.split(",") if d]
    print_table(measure(layers, args.posts, args.reps), f"{args.reps} interleaved rounds of {args.posts}")


if __name__ == "__main__":
    main()
