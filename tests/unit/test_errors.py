"""One error root: every exception class defined in Stepdeck's own packages derives from `StepdeckError`, so
that a caller can tell ours from a library's or a step function's."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import engine
import models
import ui
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, OperationError
from models.errors import StepdeckError

ROOT = Path(__file__).resolve().parents[2]


def _our_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in (engine, models, ui):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if ".migrations." in info.name:
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                    found.append(cls)
    return found


def test_every_exception_class_of_ours_derives_from_the_root() -> None:
    classes = _our_exception_classes()
    assert len(classes) >= 25, f"the walk found too few exception classes: {classes}"
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, StepdeckError))
    assert strays == [], f"derive these from models.errors.StepdeckError: {strays}"


def test_operation_errors_are_the_ones_a_person_acts_on() -> None:
    for cls in (NotFound, Forbidden, Conflict, InvalidInput):
        assert issubclass(cls, OperationError) and issubclass(cls, StepdeckError)
    from models.errors import DatabaseUnavailable

    assert not issubclass(DatabaseUnavailable, OperationError)
    assert issubclass(DatabaseUnavailable, RuntimeError), "callers catching RuntimeError keep working"
