"""Workflow definitions: load YAML files, validate them, and describe steps and their graph."""

import dataclasses
import json
import math
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

from engine.calls import CallError, resolve_call
from engine.inputs import InputDeclError, parse_input, type_name

# Re-exported: callers deal with definitions and their inputs through this module.
from engine.inputs import InputDef as InputDef
from engine.inputs import InputError as InputError
from engine.inputs import validate_inputs as validate_inputs
from engine.llm import templates
from engine.notify.kinds import DEFAULT_EVENTS, EVENTS
from engine.retry import (
    DEFAULT_POLICY,
    MAX_DELAY_S,
    MAX_RETRIES,
    MAX_TOKENS_FACTOR,
    RETRY_ON_DEFAULT,
    FailureKind,
    RetryPolicy,
)
from engine.retry import DEFAULTS as RETRY_DEFAULTS
from engine.yaml_limits import MAX_DEPTH, MAX_FILE_BYTES, YamlLimitError, check_expanded_size
from models.errors import StepdeckError

# Extra step fields each kind accepts; those that are not StepDef attributes land in StepDef.config.
KIND_FIELDS: dict[str, frozenset[str]] = {
    "python": frozenset({"call"}),
    "llm": frozenset({"prompt", "system", "model", "max_tokens", "temperature", "on_truncation", "parallel_requests"}),
}
TRUNCATION_POLICIES = ("warn", "fail", "continue")
MAX_TOKENS_LIMIT = 10_000_000
RETRY_FIELDS = tuple(RETRY_DEFAULTS)
STEP_FIELDS = ("key", "label", "kind", "needs", "alternatives", "select", "timeout_s", "description", *RETRY_FIELDS)
WORKFLOW_FIELDS = ("name", "description", "inputs", "steps", "schedules", "max_cost", "notify", *RETRY_FIELDS)
NOTIFY_FIELDS = ("url", "events")
SCHEDULE_FIELDS = ("name", "cron", "timezone", "inputs", "enabled", "catch_up", "description")
CATCH_UP_POLICIES = ("skip", "once")
SELECT_MODES = ("auto", "human")
RESERVED_NAMES = frozenset({"errors", "reload"})  # paths under /api/workflows/
MAX_ALTERNATIVES = 20
DEFAULT_TIMEOUT_S = 900.0
SNAPSHOT_VERSION = 1
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DefinitionError(StepdeckError):
    """An invalid workflow definition, located by file, line, step and field (`step` is "#N" for a step without key)."""

    def __init__(
        self, source: str, detail: str, *, step: str | None = None, field: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(source, detail)
        self.source, self.detail, self.step, self.field, self.line = source, detail, step, field, line

    def __str__(self) -> str:
        parts = [f"{self.source}:{self.line}" if self.line else self.source]
        if self.step is not None:
            parts.append(f"step {self.step}" if self.step.startswith("#") else f"step {self.step!r}")
        if self.field:
            parts.append(self.field)
        return ": ".join([*parts, self.detail])


class _Mapping(dict[Any, Any]):
    """A YAML mapping that remembers the line where it, and each of its keys, start."""

    line: int
    key_lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and records line numbers, so errors can point into the file.
    Bounded: nesting depth and the node count with aliases expanded (engine/yaml_limits.py)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                detail = f"nested more than {MAX_DEPTH} levels deep"
                raise YamlLimitError(None, None, detail, self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            check_expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    problem = f"duplicate key {key!r} (first at line {seen[key]})"
                    raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Mapping]:
    data = _Mapping()
    data.line, data.key_lines = node.start_mark.line + 1, {}
    yield data
    data.update(loader.construct_mapping(node))
    data.key_lines = {loader.construct_object(k): k.start_mark.line + 1 for k, _ in node.value}


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
# An unquoted 2024-01-01 would otherwise become a date, which is neither a string nor JSON.
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _line(where: Any, key: Any = None) -> int | None:
    if not isinstance(where, _Mapping):
        return None
    return where.key_lines.get(key, where.line)


@dataclasses.dataclass(frozen=True, slots=True)
class StepDef:
    """One step of a workflow; `config` holds kind-specific fields that are not attributes here."""

    key: str
    label: str
    kind: str = "python"
    needs: tuple[str, ...] = ()
    alternatives: int = 1
    select: str = "auto"
    timeout_s: float = DEFAULT_TIMEOUT_S
    call: str | None = None
    description: str = ""
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    retries: int = DEFAULT_POLICY.retries
    retry_delay_s: float = DEFAULT_POLICY.delay_s
    retry_backoff: float = DEFAULT_POLICY.backoff
    retry_max_delay_s: float = DEFAULT_POLICY.max_delay_s
    retry_on: tuple[str, ...] = DEFAULT_POLICY.on
    retry_max_tokens_factor: float = DEFAULT_POLICY.max_tokens_factor

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.retries,
            self.retry_delay_s,
            self.retry_backoff,
            self.retry_max_delay_s,
            self.retry_on,
            self.retry_max_tokens_factor,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyDef:
    """A notification target of a workflow: a webhook (http/https) or an Apprise URL, and the events it gets."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleDef:
    """A cron trigger of a workflow: 5-field cron in a time zone, with inputs over the defaults."""

    name: str
    cron: str
    timezone: str  # an IANA name, e.g. Europe/Berlin
    inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    enabled: bool = True
    catch_up: str = "skip"  # skip: a firing missed while down is recorded, not run; once: run the latest
    description: str = ""


def _shallow(item: Any) -> dict[str, Any]:
    """A definition dataclass's fields as a dict (`to_snapshot`'s JSON round trip makes the deep copy that
    `dataclasses.asdict` would, at a tenth of the cost: a 2,000-step workflow starts runs without delay)."""
    names = _FIELD_NAMES.get(type(item))
    if names is None:
        names = _FIELD_NAMES[type(item)] = tuple(f.name for f in dataclasses.fields(item))
    return {name: getattr(item, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


_T = TypeVar("_T")


def _snapshot_text(defn: "WorkflowDef") -> str:
    return json.dumps(defn.to_snapshot(), ensure_ascii=False)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowDef:
    """A validated workflow: inputs, and steps in declared order."""

    name: str
    description: str
    inputs: tuple[InputDef, ...]
    steps: tuple[StepDef, ...]
    source: str
    schedules: tuple[ScheduleDef, ...] = ()
    max_cost: float | None = None  # USD of LLM cost per run; a step that would start past it waits for a person
    notify: tuple[NotifyDef, ...] = ()
    # What `derived` made from this definition, by the function that made it (the definition never changes).
    _derived: dict[Callable[..., Any], Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def step(self, key: str) -> StepDef:
        """Return the step with this key; KeyError if there is none."""
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(key)

    def keys(self) -> list[str]:
        """Step keys in declared order."""
        return [step.key for step in self.steps]

    def dependents(self, key: str) -> list[str]:
        """Steps that depend on `key` directly or transitively, in declared order, without `key` itself."""
        self.step(key)
        affected = {key}
        changed = True
        while changed:  # needs may point forward in the list, so one pass is not enough
            changed = False
            for step in self.steps:
                if step.key not in affected and affected.intersection(step.needs):
                    affected.add(step.key)
                    changed = True
        return [k for k in self.keys() if k in affected and k != key]

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-serializable copy of this definition, kept with each run."""
        data = {
            "version": SNAPSHOT_VERSION,
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "inputs": [_shallow(i) for i in self.inputs],
            "steps": [_shallow(s) for s in self.steps],
            "schedules": [_shallow(s) for s in self.schedules],
            "notify": [_shallow(n) for n in self.notify],
        }
        if self.max_cost is not None:
            data["max_cost"] = self.max_cost
        # The round trip makes a deep, plain-JSON copy that cannot alias this definition's values.
        return json.loads(json.dumps(data))  # type: ignore[no-any-return]

    def snapshot_json(self) -> str:
        """`to_snapshot()` as JSON text, made once per definition: every run started from it stores the same
        text, encoded once."""
        return self.derived(_snapshot_text)

    def derived(self, make: Callable[["WorkflowDef"], _T]) -> _T:
        """`make(self)`, made at the first call and kept with this definition for every later one: what
        every run of the definition starts from (its snapshot, its pending steps) is made once, not per run.
        `make` must be a module-level function of the definition alone; two threads may both make it once."""
        try:
            return self._derived[make]  # type: ignore[no-any-return]
        except KeyError:
            value = self._derived[make] = make(self)
            return value

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a definition from `to_snapshot()` output, without re-resolving calls."""
        if data.get("version", SNAPSHOT_VERSION) != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported definition snapshot version {data.get('version')!r}")
        inputs = tuple(InputDef(**{**i, "options": tuple(i["options"])}) for i in data["inputs"])
        steps = tuple(
            StepDef(
                **{
                    **s,
                    "needs": tuple(s["needs"]),
                    "config": dict(s["config"]),
                    "retry_on": tuple(s.get("retry_on", RETRY_ON_DEFAULT)),
                }
            )
            for s in data["steps"]
        )
        schedules = tuple(ScheduleDef(**s) for s in data.get("schedules", ()))
        notify = tuple(NotifyDef(n["url"], tuple(n["events"])) for n in data.get("notify", ()))
        return cls(
            data["name"], data["description"], inputs, steps, data["source"], schedules, data.get("max_cost"), notify
        )


@dataclasses.dataclass
class Catalog:
    """Workflow definitions loaded from a directory, and the errors of files that failed."""

    definitions: dict[str, WorkflowDef] = dataclasses.field(default_factory=dict)
    errors: list[DefinitionError] = dataclasses.field(default_factory=list)


def _parse_needs(value: Any) -> tuple[str, ...]:
    needs = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise ValueError(f"expected a step key or a list of step keys, got {type_name(value)}")
    if len(set(needs)) != len(needs):
        raise ValueError("a step is listed more than once")
    return tuple(needs)


def _parse_step(
    raw: Any,
    index: int,
    previous: str | None,
    source: str,
    workflows_dir: Path | None,
    resolve_calls: bool,
    input_names: Sequence[str] = (),
    retry_defaults: Mapping[str, Any] = RETRY_DEFAULTS,
) -> StepDef:
    position = f"#{index + 1}"
    if not isinstance(raw, Mapping):
        raise DefinitionError(source, f"expected a mapping, got {type_name(raw)}", step=position)
    key = raw.get("key")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        detail = "missing: every step needs a key" if key is None else f"invalid key {key!r}"
        detail += " (lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 100 characters)"
        raise DefinitionError(source, detail, step=position, field="key", line=_line(raw, "key"))

    def fail(field: str | None, detail: str, at: str | None = None) -> DefinitionError:
        return DefinitionError(source, detail, step=key, field=field, line=_line(raw, at or field))

    kind = raw.get("kind", "python")
    if not isinstance(kind, str) or kind not in KIND_FIELDS:
        raise fail("kind", f"unknown kind {kind!r} (known: {', '.join(KIND_FIELDS)})")
    allowed = {*STEP_FIELDS, *KIND_FIELDS[kind]}
    for name in raw:
        if name not in allowed:
            raise fail(None, f"unknown field {name!r} (allowed for kind {kind}: {', '.join(sorted(allowed))})", at=name)
    label = raw.get("label", key)
    if not isinstance(label, str) or not label.strip():
        raise fail("label", f"expected a non-empty string, got {label!r}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise fail("description", f"expected a string, got {type_name(description)}")
    try:
        needs = _parse_needs(raw["needs"]) if "needs" in raw else (previous,) if previous else ()
    except ValueError as exc:
        raise fail("needs", str(exc)) from None
    if key in needs:
        raise fail("needs", "a step cannot need itself")
    alternatives = raw.get("alternatives", 1)
    if isinstance(alternatives, bool) or not isinstance(alternatives, int) or not 1 <= alternatives <= MAX_ALTERNATIVES:
        raise fail("alternatives", f"expected an integer from 1 to {MAX_ALTERNATIVES}, got {alternatives!r}")
    select = raw.get("select", "human" if alternatives > 1 else "auto")
    if select not in SELECT_MODES:
        raise fail("select", f"expected one of {', '.join(SELECT_MODES)}, got {select!r}")
    timeout_s = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < math.inf:
        raise fail("timeout_s", f"expected a positive number of seconds, got {timeout_s!r}")
    call = raw.get("call")
    if "call" in KIND_FIELDS[kind]:  # a kind that accepts `call` runs it, so it is required
        if not isinstance(call, str) or not call:
            raise fail("call", f"required for kind {kind}: 'module:function'")
        if resolve_calls:
            try:
                resolve_call(call, workflows_dir)
            except CallError as exc:
                raise fail("call", str(exc)) from None
    if kind == "llm":
        _check_llm(raw, needs, input_names, fail)
    retry = parse_retry(raw, retry_defaults, fail)
    attributes = {f.name for f in dataclasses.fields(StepDef)}
    config = {name: value for name, value in raw.items() if name in KIND_FIELDS[kind] and name not in attributes}
    return StepDef(key, label, kind, needs, alternatives, select, float(timeout_s), call, description, config, **retry)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def parse_retry(
    raw: Mapping[str, Any], defaults: Mapping[str, Any], fail: Callable[[str, str], DefinitionError]
) -> dict[str, Any]:
    """The retry fields of a step (or of the workflow, as defaults for its steps) over `defaults`."""
    out = dict(defaults)
    retries = raw.get("retries", out["retries"])
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise fail("retries", f"expected an integer from 0 to {MAX_RETRIES}, got {retries!r}")
    out["retries"] = retries
    for name, low, high in (("retry_delay_s", 0.0, MAX_DELAY_S), ("retry_max_delay_s", 0.0, MAX_DELAY_S)):
        value = raw.get(name, out[name])
        if not _number(value) or not low <= value <= high:
            raise fail(name, f"expected a number of seconds from 0 to {high:g}, got {value!r}")
        out[name] = float(value)
    backoff = raw.get("retry_backoff", out["retry_backoff"])
    if not _number(backoff) or not 1 <= backoff <= 100:
        raise fail("retry_backoff", f"expected a multiplier from 1 to 100, got {backoff!r}")
    out["retry_backoff"] = float(backoff)
    factor = raw.get("retry_max_tokens_factor", out["retry_max_tokens_factor"])
    if not _number(factor) or not 1 <= factor <= MAX_TOKENS_FACTOR:
        raise fail("retry_max_tokens_factor", f"expected a number from 1 to {MAX_TOKENS_FACTOR:g}, got {factor!r}")
    out["retry_max_tokens_factor"] = float(factor)
    on = raw.get("retry_on", out["retry_on"])
    on = [on] if isinstance(on, str) else on
    known = [k.value for k in FailureKind]
    if not isinstance(on, list | tuple) or not all(isinstance(k, str) and k in known for k in on):
        raise fail("retry_on", f"expected a list of {', '.join(known)}, got {raw.get('retry_on')!r}")
    out["retry_on"] = tuple(dict.fromkeys(on))
    return out


def _check_llm(
    raw: Mapping[str, Any],
    needs: Sequence[str],
    input_names: Sequence[str],
    fail: Callable[..., DefinitionError],
) -> None:
    """The fields of an `llm` step, and what its templates read: declared inputs and needed steps only."""
    for name in ("prompt", "system"):
        source = raw.get(name)
        if source is None and name == "system":
            continue
        if not isinstance(source, str) or not source.strip():
            raise fail(name, "required for kind llm: the text sent to the model (a Jinja2 template)")
        _check_template(raw, name, source, needs, input_names, fail)
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise fail("model", f"expected a model name, got {model!r}")
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise fail("max_tokens", f"expected an integer from 1 to {MAX_TOKENS_LIMIT:,}, got {max_tokens!r}")
    temperature = raw.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise fail("temperature", f"expected a number from 0 to 2, got {temperature!r}")
    parallel = raw.get("parallel_requests")
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
        raise fail("parallel_requests", f"expected a positive integer, got {parallel!r}")
    policy = raw.get("on_truncation", "warn")
    if policy not in TRUNCATION_POLICIES:
        raise fail("on_truncation", f"expected one of {', '.join(TRUNCATION_POLICIES)}, got {policy!r}")


def _check_template(
    raw: Mapping[str, Any],
    name: str,
    source: str,
    needs: Sequence[str],
    input_names: Sequence[str],
    fail: Callable[..., DefinitionError],
) -> None:
    # A multi-line value is a block scalar (`prompt: |`): its first line is the one after the key.
    first = (_line(raw, name) or 0) + (1 if "\n" in source.strip("\n") or source.endswith("\n") else 0)

    def error(detail: str, template_line: int | None) -> DefinitionError:
        exc = fail(name, detail)
        exc.line = first + (template_line or 1) - 1 if first else None
        return exc

    try:
        tree = templates.parse(source, name)
    except templates.TemplateError as exc:
        raise error(exc.detail + (f" (template line {exc.line})" if exc.line else ""), exc.line) from None
    for ref in templates.references(tree):
        if ref.variable == "inputs" and ref.name not in input_names:
            known = ", ".join(input_names) or "none"
            raise error(f"reads inputs.{ref.name}, which the workflow does not declare (inputs: {known})", ref.line)
        if ref.variable == "steps" and ref.name not in needs:
            detail = f"reads steps.{ref.name}, which is not in this step's needs ({', '.join(needs) or 'none'})"
            raise error(detail, ref.line)
    for unknown, line in templates.unknown_names(tree):
        raise error(f"unknown variable {unknown!r} (templates read inputs.<name> and steps.<key>.output)", line)


def _find_cycle(steps: Sequence[StepDef]) -> list[str] | None:
    """The first cycle through `needs`, as keys from a step back to itself; iterative (a long chain
    must not exhaust the interpreter's stack)."""
    needs = {step.key: step.needs for step in steps}
    done: set[str] = set()
    for start in needs:
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        pending: list[Iterator[str]] = [iter(needs[start])]
        while pending:
            need = next(pending[-1], None)
            if need is None:
                pending.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif need in on_path:
                return [*path[path.index(need) :], need]
            elif need not in done:
                path.append(need)
                on_path.add(need)
                pending.append(iter(needs[need]))
    return None


def parse_definition(
    data: Any, source: str, *, name: str | None = None, workflows_dir: Path | None = None, resolve_calls: bool = True
) -> WorkflowDef:
    """Validate a definition parsed from YAML (or built in Python); `name` is used when it declares none."""
    if not isinstance(data, Mapping):
        raise DefinitionError(source, f"top level must be a mapping with 'steps', got {type_name(data)}")
    for key in data:
        if key not in WORKFLOW_FIELDS:
            raise DefinitionError(
                source, f"unknown field {key!r} (allowed: {', '.join(WORKFLOW_FIELDS)})", line=_line(data, key)
            )
    wf_name = data.get("name", name)
    if wf_name in RESERVED_NAMES:
        detail = f"the workflow name {wf_name!r} is taken by the API (/api/workflows/{wf_name}): choose another"
        raise DefinitionError(source, detail, field="name", line=_line(data, "name"))
    if not isinstance(wf_name, str) or not _NAME_RE.match(wf_name):
        detail = f"invalid workflow name {wf_name!r} (letters, digits, '_', '.', '-'; starting with a letter or digit)"
        raise DefinitionError(source, detail, field="name", line=_line(data, "name"))
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise DefinitionError(source, "expected a string", field="description", line=_line(data, "description"))
    raw_inputs = data.get("inputs") or {}
    if not isinstance(raw_inputs, Mapping):
        detail = f"expected a mapping of input name to declaration, got {type_name(raw_inputs)}"
        raise DefinitionError(source, detail, field="inputs", line=_line(data, "inputs"))
    inputs: list[InputDef] = []
    for input_name, decl in raw_inputs.items():
        try:
            inputs.append(parse_input(input_name, decl))
        except InputDeclError as exc:
            field = f"inputs.{input_name}" + (f".{exc.field}" if exc.field else "")
            line = (_line(decl, exc.field) if exc.field else None) or _line(raw_inputs, input_name)
            raise DefinitionError(source, str(exc), field=field, line=line) from None

    def workflow_fail(field: str, detail: str) -> DefinitionError:
        return DefinitionError(source, detail, field=field, line=_line(data, field))

    retry_defaults = parse_retry(data, RETRY_DEFAULTS, workflow_fail)
    notify = _parse_notify(data.get("notify"), data, source)
    raw_steps = data.get("steps")
    if not raw_steps or not isinstance(raw_steps, list):
        detail = "expected a list of steps" if raw_steps else "missing or empty: a workflow needs at least one step"
        raise DefinitionError(source, detail, field="steps", line=_line(data, "steps"))
    steps: list[StepDef] = []
    seen: dict[str, int] = {}  # key -> position: the duplicate check stays linear in the steps
    input_names = [i.name for i in inputs]
    for index, raw_step in enumerate(raw_steps):
        previous = steps[-1].key if steps else None
        step = _parse_step(raw_step, index, previous, source, workflows_dir, resolve_calls, input_names, retry_defaults)
        if step.key in seen:
            detail = f"duplicate step key {step.key!r} (also step #{seen[step.key] + 1})"
            raise DefinitionError(source, detail, step=step.key, field="key", line=_line(raw_step, "key"))
        seen[step.key] = index
        steps.append(step)
    keys = [step.key for step in steps]
    known_keys = set(keys)
    for step, raw_step in zip(steps, raw_steps, strict=True):
        for need in step.needs:
            if need not in known_keys:
                known = ", ".join(k for k in keys if k != step.key) or "none"
                detail = f"unknown step {need!r} (known: {known})"
                raise DefinitionError(source, detail, step=step.key, field="needs", line=_line(raw_step, "needs"))
    cycle = _find_cycle(steps)
    if cycle:
        line = _line(raw_steps[keys.index(cycle[0])], "needs")
        shown = cycle if len(cycle) <= 12 else [*cycle[:10], f"… ({len(cycle) - 1} steps)", cycle[-1]]
        raise DefinitionError(source, f"cycle: {' -> '.join(shown)}", step=cycle[0], field="needs", line=line)
    defn = WorkflowDef(wf_name, description, tuple(inputs), tuple(steps), source, notify=notify)
    schedules = _parse_schedules(data.get("schedules"), data, defn)
    return dataclasses.replace(defn, schedules=schedules, max_cost=_parse_max_cost(data, source))


def _parse_max_cost(data: Any, source: str) -> float | None:
    value = data.get("max_cost")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        detail = f"expected a cost in USD greater than 0, got {value!r}"
        raise DefinitionError(source, detail, field="max_cost", line=_line(data, "max_cost"))
    return float(value)


_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.IGNORECASE)
_ENV_URL_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")  # ${NAME}: the URL is read from the environment


def _parse_notify(raw: Any, data: Any, source: str) -> tuple[NotifyDef, ...]:
    """`notify:` a list of targets, each a URL or `{url, events}`; http(s) URLs are webhooks, others Apprise."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        detail = f"expected a list of targets (a URL, or url and events), got {type_name(raw)}"
        raise DefinitionError(source, detail, field="notify", line=_line(data, "notify"))
    targets = []
    for index, item in enumerate(raw):
        entry = {"url": item} if isinstance(item, str) else item
        where = f"notify[{index}]"
        if not isinstance(entry, Mapping):
            raise DefinitionError(source, f"expected a URL or a mapping, got {type_name(item)}", field=where)
        for key in entry:
            if key not in NOTIFY_FIELDS:
                detail = f"unknown field {key!r} (allowed: {', '.join(NOTIFY_FIELDS)})"
                raise DefinitionError(source, detail, field=f"{where}.{key}", line=_line(entry, key))
        url = entry.get("url")
        if isinstance(url, str) and _ENV_URL_RE.match(url.strip()):
            pass  # kept as written: the URL (and its token) stays out of the definition and the database
        elif not isinstance(url, str) or not _URL_RE.match(url.strip()):
            # The URL itself is not repeated: it may carry a token.
            detail = "expected a URL (https://… for a webhook, an Apprise URL such as ntfy://topic) or ${ENV_VAR}"
            raise DefinitionError(source, detail, field=f"{where}.url", line=_line(entry, "url"))
        events = entry.get("events", list(DEFAULT_EVENTS))
        events = [events] if isinstance(events, str) else events
        if not isinstance(events, list) or not events or not all(e in EVENTS for e in events):
            detail = f"expected a list of events from {', '.join(EVENTS)}, got {entry.get('events')!r}"
            raise DefinitionError(source, detail, field=f"{where}.events", line=_line(entry, "events"))
        targets.append(NotifyDef(url.strip(), tuple(dict.fromkeys(events))))
    return tuple(targets)


def _parse_schedules(raw: Any, data: Any, defn: WorkflowDef) -> tuple[ScheduleDef, ...]:
    from engine.cron import CronError, check_cron, check_timezone, local_timezone

    if raw is None:
        return ()
    source = defn.source
    if not isinstance(raw, list):
        detail = f"expected a list of schedules, got {type_name(raw)}"
        raise DefinitionError(source, detail, field="schedules", line=_line(data, "schedules"))
    schedules: list[ScheduleDef] = []
    for index, item in enumerate(raw):
        where = f"schedules[{index}]"
        if not isinstance(item, Mapping):
            raise DefinitionError(source, f"expected a mapping, got {type_name(item)}", field=where)

        def fail(field: str | None, detail: str, item: Any = item, where: str = where) -> DefinitionError:
            name = item.get("name")
            label = f"schedules.{name}" if isinstance(name, str) else where
            return DefinitionError(
                source, detail, field=f"{label}.{field}" if field else label, line=_line(item, field)
            )

        for key in item:
            if key not in SCHEDULE_FIELDS:
                raise fail(key, f"unknown field {key!r} (allowed: {', '.join(SCHEDULE_FIELDS)})")
        name = item.get("name", f"schedule-{index + 1}")  # better named: the name identifies its fire times
        if not isinstance(name, str) or not _KEY_RE.match(name):
            raise fail("name", f"every schedule needs a name (lowercase letters, digits, '_' and '-'), got {name!r}")
        if name in (s.name for s in schedules):
            raise fail("name", f"duplicate schedule name {name!r}")
        timezone = item.get("timezone") or local_timezone()
        cron = item.get("cron")
        try:
            if not isinstance(timezone, str):
                raise CronError(f"expected a time zone name such as Europe/Berlin, got {timezone!r}")
            check_timezone(timezone)
        except CronError as exc:
            raise fail("timezone", str(exc)) from None
        if not isinstance(cron, str):
            raise fail("cron", f"required: five fields 'minute hour day month weekday', got {cron!r}")
        try:
            check_cron(cron, timezone)
        except CronError as exc:
            raise fail("cron", str(exc)) from None
        inputs = item.get("inputs") or {}
        if not isinstance(inputs, Mapping):
            raise fail("inputs", f"expected a mapping of input values, got {type_name(inputs)}")
        try:
            validate_inputs(defn, dict(inputs))
        except InputError as exc:
            problems = "; ".join(f"{k}: {v}" for k, v in exc.problems.items()) or str(exc)
            raise fail("inputs", problems) from None
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            raise fail("enabled", f"expected true or false, got {enabled!r}")
        catch_up = item.get("catch_up", "skip")
        if catch_up not in CATCH_UP_POLICIES:
            raise fail("catch_up", f"expected one of {', '.join(CATCH_UP_POLICIES)}, got {catch_up!r}")
        description = item.get("description") or ""
        if not isinstance(description, str):
            raise fail("description", "expected a string")
        schedules.append(ScheduleDef(name, cron.strip(), timezone, dict(inputs), enabled, catch_up, description))
    return tuple(schedules)


def load_file(path: Path, workflows_dir: Path | None = None) -> WorkflowDef:
    """Load and validate one YAML definition; calls resolve from `workflows_dir` (default: the file's directory)."""
    source = str(path)
    try:
        if not path.is_file():
            raise DefinitionError(source, "not a regular file")
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise DefinitionError(source, f"file too large: a definition holds at most {MAX_FILE_BYTES:,} bytes")
        data = yaml.load(raw.decode("utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(source, f"cannot read file: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = f"invalid YAML: {exc.problem or exc.context}"
        raise DefinitionError(source, detail, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(source, f"invalid YAML: {exc}") from None
    return parse_definition(data, source, name=path.stem, workflows_dir=workflows_dir or path.parent)


def load_directory(path: Path) -> Catalog:
    """Load every *.yaml and *.yml file in `path`; a broken file lands in `errors` and never stops the others."""
    catalog = Catalog()
    if not path.is_dir():
        detail = "not a directory" if path.exists() else "directory does not exist"
        catalog.errors.append(DefinitionError(str(path), detail))
        return catalog
    # Dot files are editor swap and lock files, not definitions.
    try:
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
    except OSError as exc:
        catalog.errors.append(DefinitionError(str(path), f"cannot list the directory: {exc}"))
        return catalog
    for file in files:
        try:
            defn = load_file(file, path)
        except DefinitionError as exc:
            catalog.errors.append(exc)
            continue
        except Exception as exc:  # a bug or a bound we missed must still not stop the other files
            catalog.errors.append(DefinitionError(str(file), f"could not be loaded: {type(exc).__name__}: {exc}"))
            continue
        if defn.name in catalog.definitions:
            detail = f"workflow name {defn.name!r} is already used by {catalog.definitions[defn.name].source}"
            catalog.errors.append(DefinitionError(str(file), detail, field="name"))
        else:
            catalog.definitions[defn.name] = defn
    return catalog
