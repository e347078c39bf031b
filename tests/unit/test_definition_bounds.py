"""Hostile definition files: deep nesting, alias bombs, huge files, long chains. Each one is refused
with a located reason (or loaded, when it is merely large), quickly, and never stops the other files."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.definitions import DefinitionError, load_directory, load_file
from engine.yaml_limits import MAX_DEPTH, MAX_FILE_BYTES

STEP = "  - key: a\n    call: tests.stepfns:noop\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _json_input(default: str, *, before: str = "") -> str:
    return f"{before}inputs:\n  x:\n    type: json\n    default: {default}\nsteps:\n{STEP}"


def _refused(path: Path) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    return info.value


def test_nesting_twenty_thousand_deep_is_refused_with_its_line(tmp_path: Path) -> None:
    error = _refused(_write(tmp_path, "deep", _json_input("[" * 20_000 + "]" * 20_000)))
    assert f"nested more than {MAX_DEPTH} levels deep" in str(error)
    assert error.line == 4


def test_nesting_within_the_bound_loads(tmp_path: Path) -> None:
    depth = MAX_DEPTH - 5  # the document, `inputs`, `x` and `default` are levels too
    defn = load_file(_write(tmp_path, "nested", _json_input("[" * depth + "]" * depth)))
    assert defn.inputs[0].default is not None


def test_a_billion_laughs_is_refused_without_expanding_it(tmp_path: Path) -> None:
    anchors = ["x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, 10)]
    # A mapping with unknown top-level fields would be refused later, after construction: the alias
    # bomb must be refused while composing, before anything walks it.
    error = _refused(_write(tmp_path, "laughs", "\n".join(anchors) + "\n" + _json_input("*x9")))
    assert "once aliases are expanded" in str(error)


def test_an_alias_inside_itself_is_refused(tmp_path: Path) -> None:
    error = _refused(_write(tmp_path, "loop", _json_input("&r [1, *r]")))
    assert "refers to a value that contains it" in str(error)


def test_a_file_over_the_size_bound_is_refused_before_parsing(tmp_path: Path) -> None:
    path = _write(tmp_path, "big", "name: big\n# " + "x" * MAX_FILE_BYTES + f"\nsteps:\n{STEP}")
    assert "file too large" in str(_refused(path))


def test_a_thousand_step_chain_whose_needs_point_forward_loads(tmp_path: Path) -> None:
    steps = [f"  - key: s{i}\n    call: tests.stepfns:noop\n    needs: [s{i + 1}]\n" for i in range(999)]
    steps.append("  - key: s999\n    call: tests.stepfns:noop\n    needs: []\n")
    defn = load_file(_write(tmp_path, "chain", "steps:\n" + "".join(steps)))
    assert len(defn.steps) == 1000
    assert defn.dependents("s999")[:2] == ["s0", "s1"]


def test_a_thousand_step_cycle_is_named_briefly(tmp_path: Path) -> None:
    steps = [f"  - key: s{i}\n    call: tests.stepfns:noop\n    needs: [s{(i + 1) % 1000}]\n" for i in range(1000)]
    error = _refused(_write(tmp_path, "cycle", "steps:\n" + "".join(steps)))
    assert "cycle: s0 -> s1 -> " in str(error)
    assert "(1000 steps)" in str(error)
    assert len(str(error)) < 300


def test_hostile_files_never_stop_the_others(tmp_path: Path) -> None:
    _write(tmp_path, "a-deep", _json_input("[" * 20_000 + "]" * 20_000))
    _write(tmp_path, "b-loop", _json_input("&r [1, *r]"))
    (tmp_path / "c-dir.yaml").mkdir()
    _write(tmp_path, "d-binary", "")
    (tmp_path / "d-binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    _write(tmp_path, "ok", f"steps:\n{STEP}")
    catalog = load_directory(tmp_path)
    assert sorted(catalog.definitions) == ["ok"]
    assert sorted(Path(e.source).stem for e in catalog.errors) == ["a-deep", "b-loop", "c-dir", "d-binary"]
