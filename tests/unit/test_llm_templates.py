"""Prompt templates of LLM steps: the static checks of the definition loader (syntax, undeclared inputs,
steps not in needs, each located on its line in the file) and the sandboxed render (escapes, CPU and
memory abuse stopped with a message naming the template line)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.definitions import DefinitionError, load_file
from engine.llm.templates import MAX_RENDER_CHARS, MAX_RENDER_MEMORY_BYTES, TemplateError, render

VARIABLES = {"inputs": {"topic": "tide pools"}, "steps": {"outline": {"output": "1. Rocks"}}}


def load(tmp_path: Path, prompt_lines: list[str]) -> DefinitionError | None:
    """Load a workflow whose second step's prompt is a block scalar of `prompt_lines`."""
    body = "\n".join(f"      {line}" for line in prompt_lines)
    text = textwrap.dedent(
        """\
        name: tpl
        inputs:
          topic: string
        steps:
          - key: outline
            kind: llm
            prompt: Outline {{ inputs.topic }}.
          - key: draft
            kind: llm
            prompt: |
        """
    )
    path = tmp_path / "tpl.yaml"
    path.write_text(text + body + "\n")
    try:
        load_file(path)
    except DefinitionError as exc:
        return exc
    return None


PROMPT_LINE = 11  # the file line of the prompt's first line


@pytest.mark.parametrize(
    ("lines", "at", "detail"),
    [
        (["Draft:", "{{ steps.outline.output }", "end"], 2, "unexpected '}'"),
        (["Draft", "about {{ inputs.audience }}"], 2, "reads inputs.audience, which the workflow does not declare"),
        (
            ["Draft", "", "{{ steps.polish.output }}"],
            3,
            "reads steps.polish, which is not in this step's needs (outline)",
        ),
        (["{{ secret }}"], 1, "unknown variable 'secret'"),
        (["{{ inputs['missing'] }}"], 1, "reads inputs.missing"),
    ],
    ids=["syntax", "undeclared-input", "step-not-needed", "unknown-variable", "subscript"],
)
def test_the_loader_rejects_a_template_on_its_line_in_the_file(
    tmp_path: Path, lines: list[str], at: int, detail: str
) -> None:
    err = load(tmp_path, lines)
    assert err is not None, "the definition loaded"
    assert (err.step, err.field, err.line) == ("draft", "prompt", PROMPT_LINE + at - 1)
    assert detail in err.detail


@pytest.mark.parametrize(
    "prompt",
    ["{{ ''.__class__.__mro__ }}", "{{ range(10**9)|list }}", "{{ 'a'*10**9 }}", "{{ inputs.topic.nope.deeper }}"],
)
def test_runtime_escapes_get_through_the_loader(tmp_path: Path, prompt: str) -> None:
    assert load(tmp_path, ["Draft from {{ steps.outline.output }}", prompt]) is None


def test_a_good_template_renders_inputs_and_outputs() -> None:
    assert render("{{ inputs.topic }}: {{ steps.outline.output }}", VARIABLES) == "tide pools: 1. Rocks"


@pytest.mark.parametrize(
    ("source", "line", "detail"),
    [
        ("{{ ''.__class__.__mro__ }}", 1, "access to attribute '__class__' of 'str' object is unsafe"),
        ("ok\n{{ range(10**9)|list }}", 2, "Range too big"),
        ("{{ 'a'*10**9 }}", 1, "a repeated value would be 1,000,000,000 long"),
        ("{{ 'a'.center(10**9) }}", 1, "a padded value would be 1,000,000,000 long"),
        ("{{ '%0999999999d' % 1 }}", 1, "a padded value would be 999,999,999 long"),
        ("{{ 10 ** 100000 }}", 1, "a power with about"),  # Jinja's ** is left-associative
        (
            "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
            1,
            "a variable would be",
        ),
        ("a\nb\n{{ inputs.topic.nope.deeper }}", 3, "'str object' has no attribute 'nope'"),
    ],
)
def test_an_escape_or_abuse_fails_the_render_naming_the_line(source: str, line: int, detail: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source, VARIABLES)
    assert caught.value.line == line
    assert detail in str(caught.value)
    assert str(caught.value).startswith(f"prompt template line {line}: ")


def test_a_render_that_runs_too_long_stops_at_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError, match=r"rendering took longer than 0\.3 s"):
        render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            VARIABLES,
            time_limit_s=0.3,
        )
    assert time.monotonic() - started < 1.5


def test_the_rendered_text_is_capped() -> None:
    with pytest.raises(TemplateError, match="the rendered text would be"):
        render("{% for i in range(99999) %}{{ 'x' * 99999 }}{% endfor %}", VARIABLES)


# One call that builds a value ten times the cap. The module promises to stop such an operation
# *before* it builds the value; these build it (10 MB here; a factor of 1000 more takes the engine's
# process down) and only `|length` is rendered, so the output cap never sees it.
@pytest.mark.parametrize(
    "source",
    [
        "{{ (('a' * 999999)|replace('a', 'a' * 10))|length }}",
        "{{ ('a' * 999999).replace('a', 'a' * 10)|length }}",
        "{{ (('a' * 999999)|list)|join('b' * 10)|length }}",
        "{{ ('b' * 10).join('a' * 999999)|length }}",
        "{{ (('%999999s' * 10) % ((1,) * 10))|length }}",
        "{{ ('{:999999}' * 10).format(*((1,) * 10))|length }}",
        "{{ (('\n' * 10)|indent(999999, true, true))|length }}",
    ],
    ids=["replace-filter", "replace-method", "join-filter", "join-method", "percent-format", "str-format", "indent"],
)
def test_a_huge_value_built_in_one_call_is_refused(source: str) -> None:
    # A time limit no machine reaches: the size check must be what stops these, however loaded the machine.
    with pytest.raises(TemplateError, match=f"more than the limit of {MAX_RENDER_CHARS:,} characters"):
        render(source, VARIABLES, time_limit_s=3600)


# Widths and precisions that reach C code as arguments, nested fields or precisions: each would build
# 1-2 GB in one call. They are refused before the call (a 1 GB address-space limit in a child process
# turns a missed one into "out of memory", not this message).
_BYPASS = """
import resource, sys
from engine.llm.templates import TemplateError, render
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
try:
    render(sys.argv[1], {"inputs": {}, "steps": {}}, time_limit_s=3600)
except TemplateError as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    "source",
    [
        "{{ '%*d' % (2147483647, 1) }}",
        "{{ '%.*f' % (999999999, 1.0) }}",
        "{{ '{:{}}'.format('x', 2147483647) }}",
        "{{ '{:.{}f}'.format(1.0, 999999999) }}",
        "{{ '{x:{w}}'.format_map({'x': 'a', 'w': 2147483647}) }}",
        "{{ '%.999999999f' % 1.0 }}",
        "{{ '%.999999999f'|format(1.0) }}",
        "{{ ('\t' * 1000).expandtabs(999999) }}",
    ],
    ids=["star-width", "star-precision", "nested-width", "nested-precision", "map", "precision", "filter", "tabs"],
)
def test_a_width_precision_or_expansion_past_the_cap_is_refused_before_it_runs(source: str) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _BYPASS, source], cwd=root, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"more than the limit of {MAX_RENDER_CHARS:,} characters" in done.stdout, done.stdout


def test_ordinary_widths_and_precisions_still_render() -> None:
    source = "{{ '%5.1f|%-3s|%%' % (2.0, 'a') }}{{ '{:>4}|{:.{}f}'.format('x', 2.0, 2) }}{{ 'a\tb'.expandtabs(4) }}"
    assert render(source, VARIABLES) == "  2.0|a  |%   x|2.00a   b"


def test_many_values_each_under_the_cap_stop_at_the_memory_bound() -> None:
    source = (
        "{% set ns = namespace(xs=[]) %}{% for i in range(2000) %}"
        "{% set ns.xs = ns.xs + ['a' * 999999 ~ i] %}{% endfor %}{{ ns.xs|length }}"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _BYPASS.replace("2**30, 2**30", "2**31, 2**31"), source],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"rendering used more than {MAX_RENDER_MEMORY_BYTES // 2**20} MB of memory" in done.stdout, done.stdout


_OUT_OF_MEMORY = """
import resource
from engine.llm.templates import TemplateError, render
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))  # this child only: a failed allocation, never a real 2 GB
try:
    render("{{ (('a' * 999999)|replace('a', 'a' * 2000))|length }}", {"inputs": {}, "steps": {}})
except TemplateError as exc:
    print(exc)
"""


def test_a_render_that_runs_out_of_memory_says_so() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _OUT_OF_MEMORY], cwd=root, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith("prompt template line 1:")
    assert re.search(r"memory|would be", message), f"no reason given: {message!r}"
