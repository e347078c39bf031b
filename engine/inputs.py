"""Workflow inputs: their declarations, and the checking of values supplied when a run starts."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.json_limits import json_problem
from models.errors import StepdeckError

if TYPE_CHECKING:
    from engine.definitions import WorkflowDef

INPUT_TYPES = ("string", "text", "integer", "number", "boolean", "choice", "json")
_STRING_TYPES = ("string", "text", "choice")
_DECL_FIELDS = ("type", "description", "default", "required", "options", "min", "max")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


@dataclass(frozen=True, slots=True)
class InputDef:
    """One declared input. `default` None means there is no default."""

    name: str
    type: str
    required: bool
    default: Any
    description: str
    options: tuple[str, ...]
    min: int | float | None = None  # integer and number inputs: the smallest value allowed
    max: int | float | None = None  # and the largest


class InputDeclError(StepdeckError, ValueError):
    """A malformed input declaration; `field` names the declaration key at fault, if any."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class InputError(StepdeckError, ValueError):
    """Values supplied for a run that do not fit the declared inputs; `problems` maps input name to message."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("invalid inputs: " + "; ".join(f"{name}: {msg}" for name, msg in self.problems.items()))


def type_name(value: Any) -> str:
    """The YAML/JSON word for a value's type, for error messages read by people who never see Python."""
    if value is None:
        return "null"
    for type_, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list")):
        if isinstance(value, type_):
            return name
    return "mapping" if isinstance(value, Mapping) else type(value).__name__


def parse_input(name: Any, raw: Any) -> InputDef:
    """Build an InputDef from its YAML form (`{type: ..., ...}` or the short form `string`)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputDeclError(f"invalid input name {name!r} (letters, digits and _, not starting with a digit)")
    if raw is None or isinstance(raw, str):
        raw = {"type": raw or "string"}
    if not isinstance(raw, Mapping):
        raise InputDeclError(f"expected a type name or a mapping, got {type_name(raw)}")
    for key in raw:
        if key not in _DECL_FIELDS:
            raise InputDeclError(f"unknown field {key!r} (allowed: {', '.join(_DECL_FIELDS)})")
    type_ = raw.get("type", "string")
    if type_ not in INPUT_TYPES:
        raise InputDeclError(f"unknown type {type_!r} (known: {', '.join(INPUT_TYPES)})", "type")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise InputDeclError(f"expected a string, got {type_name(description)}", "description")
    options = raw.get("options")
    if type_ == "choice":
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            raise InputDeclError("type choice needs a non-empty list of strings", "options")
        if len(set(options)) != len(options):
            raise InputDeclError("options must be unique", "options")
    elif options is not None:
        raise InputDeclError("only allowed for type choice", "options")
    bounds: dict[str, int | float | None] = {}
    for bound in ("min", "max"):
        given = raw.get(bound)
        if given is None:
            bounds[bound] = None
        elif type_ not in ("integer", "number"):
            raise InputDeclError("only allowed for types integer and number", bound)
        elif isinstance(given, bool) or not isinstance(given, int if type_ == "integer" else int | float):
            raise InputDeclError(f"expected {'an integer' if type_ == 'integer' else 'a number'}", bound)
        else:
            bounds[bound] = given
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise InputDeclError(f"min {bounds['min']} is above max {bounds['max']}", "min")
    default = raw.get("default")
    required = raw.get("required", default is None)
    if not isinstance(required, bool):
        raise InputDeclError(f"expected true or false, got {type_name(required)}", "required")
    defn = InputDef(name, type_, required, default, description, tuple(options or ()), bounds["min"], bounds["max"])
    if default is not None:
        try:
            check_value(defn, default)
        except ValueError as exc:
            raise InputDeclError(f"invalid default for type {type_}: {exc}", "default") from None
    return defn


def _from_string(type_: str, text: str) -> Any:
    stripped = text.strip()
    if type_ == "integer":
        if not _INT_RE.match(stripped):
            raise ValueError(f"{text!r} is not an integer")
        return int(stripped)
    if type_ == "number":
        if _INT_RE.match(stripped):
            return int(stripped)
        try:
            return float(stripped)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if type_ == "boolean":
        if stripped.lower() in _TRUE | _FALSE:
            return stripped.lower() in _TRUE
        raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no or 1/0)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{text!r} is not valid JSON: {exc}") from None


def check_value(defn: InputDef, value: Any, *, from_strings: bool = False) -> Any:
    """Return `value` checked (with `from_strings`, converted) for the input's type; ValueError if it does not fit."""
    if from_strings and isinstance(value, str) and defn.type not in _STRING_TYPES:
        value = _from_string(defn.type, value)
    if defn.type in _STRING_TYPES:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type_name(value)}")
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        if defn.type == "choice" and value not in defn.options:
            raise ValueError(f"{value!r} is not one of: {', '.join(defn.options)}")
    elif defn.type == "json":
        if problem := json_problem(value):
            raise ValueError(problem)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a JSON value: {exc}") from None
    elif defn.type == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {type_name(value)}")
    # bool is an int subclass, but True is never a sensible word count.
    elif isinstance(value, bool) or not isinstance(value, int if defn.type == "integer" else int | float):
        raise ValueError(f"expected {'an integer' if defn.type == 'integer' else 'a number'}, got {type_name(value)}")
    elif not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    elif defn.min is not None and value < defn.min:
        raise ValueError(f"must be at least {defn.min}, got {value}")
    elif defn.max is not None and value > defn.max:
        raise ValueError(f"must be at most {defn.max}, got {value}")
    elif problem := json_problem(value):
        raise ValueError(problem)
    return value


def validate_inputs(defn: WorkflowDef, raw: Mapping[str, Any], *, from_strings: bool = False) -> dict[str, Any]:
    """Return every declared input with defaults filled in, or raise InputError listing all problems."""
    declared = {i.name: i for i in defn.inputs}
    known = ", ".join(declared) or "none: this workflow takes no inputs"
    problems = {str(name): f"unknown input (known: {known})" for name in raw if name not in declared}
    values: dict[str, Any] = {}
    for name, idef in declared.items():
        # None counts as "not given", so an API client sending null gets the default.
        if raw.get(name) is not None:
            try:
                values[name] = check_value(idef, raw[name], from_strings=from_strings)
            except ValueError as exc:
                problems[name] = str(exc)
        elif idef.default is not None:
            values[name] = copy.deepcopy(idef.default)
        elif idef.required:
            problems[name] = "required input missing"
        else:
            values[name] = None
    if problems:
        raise InputError(problems)
    return values
