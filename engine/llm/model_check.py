"""Models a definition names, checked against the endpoint's `GET /v1/models` where it answers.

A warning, never a refusal: servers such as llama-cpp-python answer to any model name, and a model can
be loaded later. Shown on the Workflows page and logged when the engine starts.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine import logs
from engine.definitions import WorkflowDef
from engine.llm import providers
from engine.settings import Settings

log = logs.logger(__name__)
SHOWN_MODELS = 8  # models listed in a warning at most


async def model_warnings(
    settings: Settings, definitions: Iterable[WorkflowDef], clients: providers.Providers
) -> dict[str, list[str]]:
    """Per workflow, a warning for each LLM step whose model the endpoint does not list ({} when it
    lists none, is not reachable, or is the simulated provider); asked through the caller's `clients`."""
    if providers.provider_name(settings) == providers.SIMULATED:
        return {}
    try:
        provider = await clients.provider_for(settings)
    except providers.ProviderError:
        return {}  # a step says why when it runs
    if not isinstance(provider, providers.OpenAIProvider):
        return {}
    listed = await provider.models()
    if not listed:
        return {}
    shown = ", ".join(sorted(listed)[:SHOWN_MODELS]) + (", …" if len(listed) > SHOWN_MODELS else "")
    warnings: dict[str, list[str]] = {}
    for defn in definitions:
        for step in defn.steps:
            model = step.config.get("model") or settings.llm_model if step.kind == "llm" else None
            if model and model not in listed:
                warnings.setdefault(defn.name, []).append(
                    f"step {step.key!r}: model {model!r} is not among the models {provider.base_url} lists ({shown})"
                )
    return warnings


async def log_model_warnings(
    settings: Settings, definitions: Iterable[WorkflowDef], clients: providers.Providers
) -> None:
    """Log each warning of `model_warnings` (for the engine's start); never raises."""
    try:
        found = await model_warnings(settings, list(definitions), clients)
    except Exception as exc:  # a check that fails must not stop anything
        log.debug("model check failed: %s", exc)
        return
    for workflow, lines in found.items():
        for line in lines:
            log.warning("workflow %s: %s", workflow, line)
