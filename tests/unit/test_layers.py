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
