"""The workflow definitions a process knows, loaded from the definitions directory.

A `Registry` belongs to whoever composes the process (`main.py`'s commands, a test): it is handed to the
engine, the scheduler and the dashboard, never reached as a module global."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.definitions import Catalog, DefinitionError, WorkflowDef, load_directory
from engine.errors import NotFound


class Registry:
    """Definitions by name, plus the files that failed to load (shown, never fatal)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.catalog = Catalog(definitions={}, errors=[])

    def load(self, directory: Path) -> Catalog:
        """(Re)load every definition file of `directory`; broken files end up in `errors`."""
        self.directory = directory
        self.catalog = load_directory(directory)
        return self.catalog

    def reload(self) -> Catalog:
        if self.directory is None:
            raise RuntimeError("no definitions directory configured")
        return self.load(self.directory)

    @property
    def definitions(self) -> dict[str, WorkflowDef]:
        return self.catalog.definitions

    @property
    def errors(self) -> list[DefinitionError]:
        return self.catalog.errors

    def get(self, name: str) -> WorkflowDef:
        try:
            return self.catalog.definitions[name]
        except KeyError:
            known = ", ".join(sorted(self.catalog.definitions)) or "none"
            broken = [e for e in self.catalog.errors if Path(e.source).stem == name]
            hint = f"; its file failed to load: {broken[0]}" if broken else ""
            raise NotFound(f"unknown workflow {name!r} (known: {known}){hint}") from None

    def in_declared_order(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """A run's inputs in the order its workflow declares them (`declared_order`); all of them in stored
        order when the workflow is unknown."""
        return declared_order(self.catalog.definitions.get(name), inputs)

    def add(self, defn: WorkflowDef) -> None:
        """Register a definition made in Python (tests, embedding)."""
        self.catalog.definitions[defn.name] = defn


def declared_order(defn: WorkflowDef | None, inputs: dict[str, Any]) -> dict[str, Any]:
    """A run's inputs in the order `defn` declares them (PostgreSQL's jsonb keeps keys in an order of its
    own); keys it does not declare, or all of them without a definition, in stored order."""
    if defn is None:
        return inputs
    return {**{i.name: inputs[i.name] for i in defn.inputs if i.name in inputs}, **inputs}


def inputs_in_order(workflows: Registry | None, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """`Registry.in_declared_order` where the reader has definitions; stored order where it has none."""
    return inputs if workflows is None else workflows.in_declared_order(name, inputs)
