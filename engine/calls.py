"""Resolve `call: "package.module:function"` strings to Python callables."""

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.errors import StepdeckError


class CallError(StepdeckError, ValueError):
    """A `call` string that is malformed or does not name an importable callable."""


def _is_dotted_identifier(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _add_to_path(workflows_dir: Path) -> None:
    # Front of sys.path so a workflow module wins over an installed module of the same name.
    entry = str(workflows_dir.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def resolve_call(call: str, workflows_dir: Path | None) -> Callable[..., Any]:
    """Import the module named by `call` (from `workflows_dir` first) and return its callable."""
    module_name, sep, attr = call.partition(":")
    if not sep or not _is_dotted_identifier(module_name) or not attr.isidentifier():
        raise CallError(f"expected 'module:function', got {call!r}")
    if workflows_dir is not None:
        _add_to_path(workflows_dir)
    if module_name not in sys.modules:
        # Finders cache directory listings; a module written moments ago would otherwise be missed.
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            where = f" (looked in {workflows_dir} and sys.path)" if workflows_dir is not None else ""
            raise CallError(f"module {module_name!r} not found{where}") from exc
        raise CallError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise CallError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        target: object = getattr(module, attr)
    except AttributeError:
        raise CallError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise CallError(f"{call!r} is not callable (got {type(target).__name__})")
    return target
