"""Model prices from a small file (`STEPDECK_LLM_PRICES`, TOML or YAML), and what tokens cost.

    # prices.toml: USD per 1M tokens
    [models."gpt-4o-mini"]
    prompt = 0.15
    completion = 0.60

    # prices.yaml
    models:
      gpt-4o-mini: {prompt: 0.15, completion: 0.60}

A model without a price has no cost (shown as such, never as $0). Costs of estimated token counts are
estimates, and marked so wherever they are shown.
"""

from __future__ import annotations

import math
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.errors import StepdeckError

PER_TOKENS = 1_000_000


class PriceFileError(StepdeckError, ValueError):
    """The price file cannot be read or says something we cannot use; the message names the file."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M prompt tokens and per 1M completion tokens."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / PER_TOKENS


_cache: dict[str, tuple[float, dict[str, Price]]] = {}
_lock = threading.Lock()


def load_prices(path: str) -> dict[str, Price]:
    """The prices in the file, by model name (re-read when the file changes); {} without a file."""
    if not path:
        return {}
    file = Path(path)
    try:
        mtime = file.stat().st_mtime
    except OSError as exc:
        raise PriceFileError(f"STEPDECK_LLM_PRICES: cannot read {path}: {exc.strerror}") from None
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    prices = parse_prices(file.read_text(encoding="utf-8"), path)
    with _lock:
        _cache[path] = (mtime, prices)
    return prices


def parse_prices(text: str, source: str) -> dict[str, Price]:
    """Prices from the text of a price file (YAML unless the name ends in .toml)."""
    try:
        data: Any = tomllib.loads(text) if source.endswith(".toml") else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise PriceFileError(f"STEPDECK_LLM_PRICES: {source} is not valid: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise PriceFileError(f"STEPDECK_LLM_PRICES: {source} needs a `models` table of model names")
    prices = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or set(entry) - {"prompt", "completion"}:
            raise PriceFileError(
                f"STEPDECK_LLM_PRICES: {source}: model {name!r} needs `prompt` and `completion` (USD per 1M tokens)"
            )
        values = [entry.get("prompt"), entry.get("completion")]
        if not all(_price(v) for v in values):
            raise PriceFileError(
                f"STEPDECK_LLM_PRICES: {source}: model {name!r}: prices must be numbers of 0 or more, got {values}"
            )
        prices[str(name)] = Price(float(values[0]), float(values[1]))  # type: ignore[arg-type]
    return prices


def _price(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def price_of(path: str, model: str) -> Price | None:
    """The price of a model under the price file, or None."""
    return load_prices(path).get(model)


def usd(amount: float | None, estimated: bool = False) -> str:
    """A cost as people read it: `$0.0123`, `~$0.0123` when estimated, `no price` without one."""
    if amount is None:
        return "no price"
    text = f"${amount:,.4f}" if amount < 1 else f"${amount:,.2f}"
    return f"~{text}" if estimated else text
