"""The Workflows page warns about a model a definition names that the endpoint's GET /v1/models does
not list, without blocking the definition (it loads, and can be started). The endpoint is the loopback
server (tests/llm_server.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from nicegui import ElementFilter, ui
from nicegui.testing import User

from tests.llm_server import LLMServer
from tests.ui.conftest import eventually
from tests.ui.test_run_page import start_run, wait_run

WORKFLOWS = {
    "typo": """
        name: typo
        steps:
          - key: write
            kind: llm
            model: stepdeck-tset
            prompt: Write about tide pools.
    """,
    "fine": """
        name: fine
        steps:
          - key: write
            kind: llm
            prompt: Write about tide pools.
    """,
}


def labels(user: User, marker: str) -> list[str]:
    """The texts of the labels with this marker on the page ([] while there is none)."""
    assert user.client is not None
    with user.client:
        return [str(e.text) for e in ElementFilter(kind=ui.label, marker=marker, local_scope=False)]


@pytest.fixture(autouse=True)
def endpoint(workflows_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    for name, text in WORKFLOWS.items():
        (workflows_dir / f"{name}.yaml").write_text(textwrap.dedent(text))
    with LLMServer(reply_tokens=5) as server:
        monkeypatch.setenv("STEPDECK_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("STEPDECK_LLM_API_KEY", "sk-test")
        monkeypatch.setenv("STEPDECK_LLM_MODEL", "stepdeck-test")
        yield server


async def test_the_workflows_page_warns_about_a_model_the_endpoint_does_not_list(user: User) -> None:
    await user.open("/workflows")
    await user.should_see(marker="workflow-typo")  # loaded: the warning never blocks a definition
    [warning] = await eventually(lambda: labels(user, "model-warning-typo"), "the model warning")
    assert "typo: step 'write': model 'stepdeck-tset' is not among the models" in warning
    assert "(stepdeck-test)" in warning
    assert labels(user, "model-warning-fine") == []
    run_id = await start_run(user, "typo")
    assert (await wait_run(user, run_id, "completed", "failed"))["status"] == "completed"
