"""The JSON API against its own OpenAPI document, property-based (Schemathesis), on a real served process.

`main.py serve` runs on a temporary workspace with accounts, so sign-in is on: requests carry
`Authorization: Bearer <token>` from `main.py tokens add`. The first test runs Schemathesis's engine
(examples, coverage, fuzzing and stateful phases; valid and invalid requests) over every documented
operation and fails on any check: no 5xx, documented status codes, content types and headers, bodies
that match the response models, `Allow` on a 405, valid data accepted and invalid data rejected. The
second sends chosen requests to runs that exist (where generated ids seldom land) as an operator, a
viewer and without a token, and checks the expected status and the same conformance.

The engine runs inside an ordinary test: Schemathesis's pytest integration for a schema known only at
run time (`schemathesis.pytest.from_fixture`) sets `Node._nodeid`, which pytest 9.2 no longer has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.served import Server, Workspace, serving

if TYPE_CHECKING:  # imported by the test itself: every test process collects this module, one runs it
    from schemathesis import BaseSchema
    from schemathesis.engine import events
    from schemathesis.engine.recorder import CheckFailureInfo

PASSWORD = "schema-test-password"
SEED = 20240611  # a fixed seed: the same cases every run (change it to explore other ones)
MAX_EXAMPLES = 50  # per operation and phase; keeps the module well under a minute and a half

STEPS = '''
"""Step functions of the served process: something of every outcome a run can have."""


def quick(ctx):
    return f"{ctx.step_key} done"


def structured(ctx):
    return {"words": 3, "text": ctx.inputs.get("topic", "")}


def drafts(ctx):
    return [f"draft {i + 1}" for i in range(ctx.alternatives)]


def boom(ctx):
    ctx.log("about to fail")
    raise ValueError("the step exploded")
'''

DEMO = """
name: demo
description: Three steps and a choice.
inputs:
  topic:
    type: string
    default: tests
  count:
    type: integer
    default: 2
steps:
  - key: outline
    label: Outline
    call: api_steps:quick
  - key: facts
    label: Facts
    call: api_steps:structured
  - key: drafts
    label: Drafts
    call: api_steps:drafts
    alternatives: 2
    select: human
  - key: polish
    label: Polish
    call: api_steps:quick
"""

BROKEN = """
name: broken
steps:
  - key: first
    label: First
    call: api_steps:quick
  - key: explode
    label: Explode
    call: api_steps:boom
"""


@dataclass
class Served:
    server: Server
    token: str  # an operator's
    viewer_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def schema(self, *, signed_in: bool = True) -> BaseSchema:
        """The OpenAPI document the server serves, loaded with our settings (and the operator's token, when
        `signed_in`; the document itself is always fetched with it)."""
        config: dict[str, Any] = {
            "seed": SEED,
            "base-url": self.server.base_url,
            "request-timeout": 10,
            # A followed event stream never ends: replay and close.
            "parameters": {"query.follow": False},
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"},
            "operations": OPERATION_CONFIG,
        }
        if signed_in:
            config["headers"] = self.auth
        import schemathesis

        return schemathesis.openapi.from_url(
            f"{self.server.base_url}/openapi.json", config=schemathesis.Config.from_dict(config), headers=self.auth
        )


# What the document cannot say, and so what the checks must not expect.
OPERATION_CONFIG = [
    {
        "include-path-regex": r"^/api/runs$|/select$",
        "include-method": "POST",
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 409, 422]}},
    },
    {
        # GET /api/workflows/reload is GET /api/workflows/{name} for a workflow named "reload": the 405 of
        # other methods rightly allows GET there too, which the document lists under another path.
        "include-path": "/api/workflows/reload",
        "checks": {"allow_header_conformance": {"enabled": False}},
    },
]

# Every operation of the API, so that a run that skipped some cannot pass unnoticed.
OPERATIONS = {
    "GET /api/health",
    "GET /api/llm",
    "GET /api/workflows",
    "GET /api/workflows/errors",
    "GET /api/workflows/{name}",
    "POST /api/workflows/reload",
    "POST /api/runs",
    "GET /api/runs",
    "GET /api/runs/{run_id}",
    "POST /api/runs/{run_id}/cancel",
    "POST /api/runs/{run_id}/resume",
    "GET /api/runs/{run_id}/steps/{key}/rerun-plan",
    "POST /api/runs/{run_id}/steps/{key}/rerun",
    "POST /api/runs/{run_id}/steps/{key}/select",
    "GET /api/runs/{run_id}/steps/{key}",
    "GET /api/runs/{run_id}/attempts",
    "GET /api/runs/{run_id}/events",
    "GET /api/me",
    "GET /api/audit",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A served Stepdeck with sign-in on (an operator account), its token, and runs that wait and failed."""
    ws = Workspace(
        tmp_path_factory.mktemp("schema"),
        workflows={"demo": DEMO, "broken": BROKEN},
        modules={"api_steps": STEPS},
    )
    ws.add_user("ops", PASSWORD)
    ws.add_user("watcher", PASSWORD, role="viewer")
    token = ws.add_token("ops", "schemathesis")
    viewer_token = ws.add_token("watcher", "schemathesis")
    with serving(ws) as server:
        server.client.headers.update({"Authorization": f"Bearer {token}"})
        # Runs for generated ids to find (small integers come up often).
        server.wait_run(server.start_run("demo", {"topic": "schemas"}), "waiting")
        server.wait_run(server.start_run("broken"), "failed")
        yield Served(server, token, viewer_token)


def describe(label: str, check: str, info: CheckFailureInfo) -> str:
    failure = info.failure
    return f"{label} [{check}] {failure.title}\n{failure.message.strip()}\n    {info.code_sample}"


def test_every_operation_conforms_to_the_openapi_document(served: Served) -> None:
    """Schemathesis's examples, coverage, fuzzing and stateful phases with every check, signed in."""
    from schemathesis.engine import StopReason, events, from_schema

    failures: set[str] = set()
    errors: list[str] = []
    tested: set[str] = set()
    cases = 0
    finished: events.EngineFinished | None = None
    for event in from_schema(served.schema()).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            tested.add(recorder.label)
            cases += len(recorder.cases)
            for checks in recorder.checks.values():
                failures.update(
                    describe(recorder.label, c.name, c.failure_info) for c in checks if c.failure_info is not None
                )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            errors.append(f"{event.__class__.__name__}: {getattr(event, 'value', getattr(event, 'exception', ''))}")
        elif isinstance(event, events.EngineFinished):
            finished = event

    report = "\n\n".join(sorted(failures))
    assert not failures, f"{len(failures)} failures of the API against its OpenAPI document:\n\n{report}"
    assert not errors, "Schemathesis could not test everything:\n" + "\n".join(errors)
    assert finished is not None and finished.stop_reason == StopReason.COMPLETED, finished
    assert tested >= OPERATIONS, f"operations not tested: {sorted(OPERATIONS - tested)}"
    assert cases >= 10 * len(OPERATIONS), f"only {cases} requests for {len(OPERATIONS)} operations"


Call = tuple[str, str, dict[str, Any], set[int]]  # method, path template, Case arguments, expected statuses


def test_real_runs_and_refusals_conform_to_the_openapi_document(served: Served) -> None:
    """Each operation on runs that exist (where generated ids seldom land), as an operator, a viewer and
    without a token: the expected status, and a response the document describes."""
    server = served.server
    waiting = server.start_run("demo", {"topic": "conformance"})
    failed = server.start_run("broken")
    doomed = server.start_run("demo")
    for run_id, status in ((waiting, "waiting"), (failed, "failed"), (doomed, "waiting")):
        server.wait_run(run_id, status)
    runs = {"run_id": str(waiting)}

    def at(run_id: int, key: str | None = None) -> dict[str, Any]:
        return {"path_parameters": {"run_id": str(run_id), **({"key": key} if key else {})}}

    operator_calls: list[Call] = [
        ("GET", "/api/runs", {"query": {"status": "waiting", "include_steps": True}}, {200}),
        ("GET", "/api/runs", {"query": {"include_steps": False, "limit": 2}}, {200}),
        ("GET", "/api/runs/{run_id}", at(waiting), {200}),
        ("GET", "/api/runs/{run_id}", at(failed), {200}),
        *[("GET", "/api/runs/{run_id}/steps/{key}", at(waiting, k), {200}) for k in ("facts", "drafts", "polish")],
        ("GET", "/api/runs/{run_id}/steps/{key}", at(failed, "explode"), {200}),
        ("GET", "/api/runs/{run_id}/steps/{key}", at(failed, "nothing"), {404}),
        ("GET", "/api/runs/{run_id}/steps/{key}/rerun-plan", at(failed, "explode"), {200}),
        ("GET", "/api/runs/{run_id}/attempts", at(failed), {200}),
        ("GET", "/api/runs/{run_id}/events", {**at(waiting), "query": {"follow": False}}, {200}),
        (
            "GET",
            "/api/runs/{run_id}/events",
            {**at(waiting), "query": {"follow": False}, "headers": {"Accept": "text/event-stream"}},
            {200},
        ),
        ("GET", "/api/runs/{run_id}/events", {**at(waiting), "headers": {"Last-Event-ID": "one"}}, {422}),
        ("GET", "/api/workflows", {}, {200}),
        ("GET", "/api/workflows/{name}", {"path_parameters": {"name": "demo"}}, {200}),
        ("GET", "/api/workflows/errors", {}, {200}),
        ("GET", "/api/llm", {}, {200}),
        ("GET", "/api/me", {}, {200}),
        ("GET", "/api/audit", {"query": {"limit": 5}}, {200}),
        ("POST", "/api/runs", {"body": {"workflow": "demo", "inputs": {"count": 3}}}, {201}),
        ("POST", "/api/runs", {"body": {"workflow": "demo", "inputs": {"count": "many"}}}, {422}),
        ("POST", "/api/runs/{run_id}/steps/{key}/select", {**at(waiting, "drafts"), "body": {"index": 9}}, {409, 422}),
        ("POST", "/api/runs/{run_id}/steps/{key}/select", {**at(waiting, "drafts"), "body": {"index": 1}}, {200}),
        ("POST", "/api/runs/{run_id}/cancel", at(failed), {409}),
        ("POST", "/api/runs/{run_id}/steps/{key}/rerun", at(failed, "explode"), {200}),
        ("POST", "/api/runs/{run_id}/cancel", at(doomed), {200}),
        ("POST", "/api/runs/{run_id}/cancel", at(doomed), {200}),  # already cancelled: nothing to do
        ("POST", "/api/runs/{run_id}/resume", at(doomed), {200}),  # from the first unfinished step
        ("POST", "/api/workflows/reload", {}, {200}),
    ]
    # As a viewer every action is refused; without a token everything but health is.
    viewer_calls: list[Call] = [
        ("POST", "/api/runs", {"body": {"workflow": "demo"}}, {403}),
        ("POST", "/api/runs/{run_id}/cancel", at(waiting), {403}),
        ("POST", "/api/runs/{run_id}/resume", at(waiting), {403}),
        ("POST", "/api/runs/{run_id}/steps/{key}/rerun", at(waiting, "outline"), {403}),
        ("POST", "/api/runs/{run_id}/steps/{key}/select", {**at(waiting, "drafts"), "body": {"index": 0}}, {403}),
        ("POST", "/api/workflows/reload", {}, {403}),
        ("GET", "/api/runs/{run_id}", at(waiting), {200}),
    ]
    anonymous_calls: list[Call] = []
    for label in sorted(OPERATIONS):
        method, path = label.split(" ", 1)
        params = {k: v for k, v in {**runs, "key": "outline", "name": "demo"}.items() if "{" + k + "}" in path}
        bodies: dict[str, dict[str, Any]] = {"POST /api/runs": {"workflow": "demo"}, "POST /select": {"index": 0}}
        body = bodies.get(label) or (bodies["POST /select"] if path.endswith("/select") else None)
        arguments: dict[str, Any] = {"path_parameters": params, **({"body": body} if body else {})}
        anonymous_calls.append((method, path, arguments, {200} if path == "/api/health" else {401}))

    schema = served.schema(signed_in=False)  # explicit cases get no configured headers: each group sends its own
    problems: list[str] = []
    for calls, headers in (
        (operator_calls, served.auth),
        (viewer_calls, {"Authorization": f"Bearer {served.viewer_token}"}),
        (anonymous_calls, {}),
    ):
        for method, path, arguments, expected in calls:
            case = schema[path][method].Case(**arguments)
            try:
                response = case.call_and_validate(headers=headers)
            except BaseExceptionGroup as group:  # schemathesis's FailureGroup: every check that failed
                problems.append(f"{method} {path} {arguments}:\n{group}")
                continue
            if response.status_code not in expected:
                problems.append(f"{method} {path} {arguments}: {response.status_code}, expected {expected}")
    assert not problems, f"{len(problems)} calls went wrong:\n\n" + "\n\n".join(problems)
    assert server.run(waiting)["steps"][2]["selected_index"] == 1
