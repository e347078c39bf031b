"""The layering of ARCHITECTURE.md, read from the source: imports point downwards, and statuses are
written by `engine/transitions/` only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from models.status import AttemptStatus, RunStatus, StepStatus

ROOT = Path(__file__).resolve().parents[2]
# What each layer may not import (its own modules and third parties are fine).
FORBIDDEN = {"models": {"engine", "ui", "main", "bench", "tests"}, "engine": {"ui", "main", "bench", "tests"}}
STATUS_WRITE = re.compile(
    r"UPDATE\s+(runs|steps|attempts)\s+SET\s+(?:(?!\bWHERE\b).)*\bstatus\s*=|INSERT\s+INTO\s+(runs|steps|attempts)\b",
    re.IGNORECASE | re.DOTALL,
)


def sources(*packages: str) -> list[Path]:
    found = [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]
    return [p for p in found if "migrations" not in p.parts]


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):  # f-strings: their literal parts, joined
            text = "".join(
                v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "?" for v in node.values
            )
            found.append((node.lineno, text))
    return found


def test_imports_point_downwards() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(imported_roots(path) & banned))}"
        for layer, banned in FORBIDDEN.items()
        for path in sources(layer)
        if imported_roots(path) & banned
    ]
    assert wrong == []


def test_the_import_check_sees_imports() -> None:
    # The check above is only worth something if it reads imports where they are.
    assert {"engine", "models"} <= imported_roots(ROOT / "engine" / "engine.py")
    assert {"engine", "ui"} <= imported_roots(ROOT / "ui" / "app.py")


def test_statuses_are_written_only_by_the_transitions() -> None:
    transitions = ROOT / "engine" / "transitions"
    writes = [
        (path, line)
        for path in [*sources("engine", "ui", "models"), ROOT / "main.py"]
        for line, text in strings(path)
        if STATUS_WRITE.search(text)
    ]
    outside = [f"{path.relative_to(ROOT)}:{line}" for path, line in writes if transitions not in path.parents]
    assert outside == []
    # The scan finds the real writes (it would pass vacuously if the SQL were spelt differently).
    inside = {path.name for path, _ in writes if transitions in path.parents}
    assert inside == {"runs.py", "steps.py"}


STATUS_VALUES = {s.value for enum in (RunStatus, StepStatus, AttemptStatus) for s in enum}
# Words that are spelt like a status without being one of a run, step or attempt.
NOT_STATUSES = {
    ("ui/cli.py", "failed"),  # what `check --fix` did to a run, in its report
}


def test_the_ui_names_statuses_by_their_enums() -> None:
    literals = {
        (str(path.relative_to(ROOT)), line, text)
        for path in sources("ui")
        for line, text in strings(path)
        if text in STATUS_VALUES
    }
    stray = sorted(f"{path}:{line} {text!r}" for path, line, text in literals if (path, text) not in NOT_STATUSES)
    assert stray == [], "use RunStatus / StepStatus / AttemptStatus (models/status.py)"
    assert {(path, text) for path, _, text in literals} == NOT_STATUSES, "the allowed words are still there"


def test_every_module_logs_in_the_stepdeck_namespace() -> None:
    # One namespace (engine/logs.py) so one handler and one level cover every line the product writes.
    bare = re.compile(r"getLogger\(__name__\)")
    stray = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in [*sources("engine", "ui", "models"), ROOT / "main.py"]
        for n, text in enumerate(path.read_text().splitlines(), 1)
        if bare.search(text)
    ]
    assert stray == [], "use `log = logs.logger(__name__)` (models/: getLogger(f'stepdeck.{__name__}'))"


# --- what crosses from engine/ to ui/ ------------------------------------------------------------------
# The engine's results reach the pages and the API typed (TypedDicts next to what builds them, dataclasses),
# not as dicts of anything: a key spelt wrong or a value of the wrong type is found by mypy, not by a user.
ANY_DICT = re.compile(r"\b[Dd]ict\[str, (typing\.)?Any\]")
# Engine functions whose results are dicts of anything by nature, which ui/ may still take as such.
ANY_DICT_ALLOWED = {
    "engine.store.fetch": "rows of the SQL the caller wrote (ui/run_list.py)",
    "engine.inputs.validate_inputs": "a run's inputs: values people gave, by name",
    "engine.registry.inputs_in_order": "a run's inputs: values people gave, by name",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_returns() -> tuple[dict[str, str], dict[str, list[str]], dict[str, str]]:
    """The return annotations of engine/'s functions (by qualified name) and of its methods (qualified
    names by method name), and the names its modules import from one another (for re-exports)."""
    functions: dict[str, str] = {}
    methods: dict[str, list[str]] = {}
    imported: dict[str, str] = {}
    for path in sources("engine"):
        module = module_name(path)
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{module}.{node.name}"] = ast.unparse(node.returns) if node.returns else ""
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        name = f"{module}.{node.name}.{item.name}"
                        functions[name] = ast.unparse(item.returns) if item.returns else ""
                        methods.setdefault(item.name, []).append(name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("engine"):
                for alias in node.names:
                    imported[f"{module}.{alias.asname or alias.name}"] = f"{node.module}.{alias.name}"
    return functions, methods, imported


def engine_used_by_ui() -> dict[str, set[str]]:
    """The engine functions each ui/ module imports or calls through an imported engine module, and the
    engine methods whose name it uses as an attribute (which object it is used on is not in the source)."""
    functions, methods, imported = engine_returns()
    modules = {module_name(path) for path in sources("engine")}

    def resolve(name: str) -> str | None:
        for _ in range(5):  # through re-exports
            if name in functions:
                return name
            if name not in imported:
                return None
            name = imported[name]
        return None

    used: dict[str, set[str]] = {}
    for path in sources("ui"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = str(path.relative_to(ROOT))
        aliases: dict[str, str] = {}  # a local name of an engine module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("engine"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        aliases[alias.asname or alias.name] = full
                    elif found := resolve(full):
                        used.setdefault(found, set()).add(here)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "engine":
                        aliases[alias.asname or "engine"] = alias.name if alias.asname else "engine"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            for name in methods.get(node.attr, []):
                used.setdefault(name, set()).add(here)
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if (
                isinstance(base, ast.Name)
                and base.id in aliases
                and (found := resolve(f"{aliases[base.id]}.{'.'.join(chain)}"))
            ):
                used.setdefault(found, set()).add(here)
    return used


def test_the_ui_gets_no_dicts_of_anything_from_the_engine() -> None:
    functions, _, _ = engine_returns()
    used = engine_used_by_ui()
    untyped = {name for name in used if ANY_DICT.search(functions[name])}
    stray = sorted(
        f"{name} -> {functions[name]} ({', '.join(sorted(used[name]))})" for name in untyped - ANY_DICT_ALLOWED.keys()
    )
    assert stray == [], "give the result a type (a TypedDict next to what builds it), not dict[str, Any]"
    assert untyped == set(ANY_DICT_ALLOWED), "the allowed ones are still there"


def test_the_ui_scan_sees_what_the_ui_uses() -> None:
    # The check above is only worth something if it finds the engine's functions however ui/ reaches them:
    # by name, through an imported module (a package's too), and as methods of what they return.
    used = engine_used_by_ui()
    assert {
        "engine.queries.run_header",
        "engine.queries.list_attempts",
        "engine.notify.notifier.list_deliveries",
        "engine.llm.providers.describe",
        "engine.readmodel.RunDetail.to_json",
        "engine.hub.Change.to_json",
    } <= set(used)
