"""Prompt templates of LLM steps: sandboxed Jinja2 with a time limit, a size cap and static checks.

Jinja2's sandbox stops attribute escapes (`''.__class__.__mro__`) but not CPU or memory abuse.
Here a render also stops at a deadline (a trace function in the rendering thread checks the
clock on every line of the compiled template), at an output cap (checked as the output is
generated), and before an operation that would build a huge value (`'a' * 10**9`, `10 ** 10**9`,
a width of a billion in `center` or `%`). `range` is capped by the sandbox itself.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace

from models.errors import StepdeckError

MAX_RENDER_CHARS = 1_000_000  # about 250,000 tokens: more than any model's context
RENDER_TIME_LIMIT_S = 2.0
VARIABLES = ("inputs", "steps")
TEMPLATE_FILENAME = "<template>"
MAX_RENDER_MEMORY_BYTES = 256 * 2**20  # growth of the process while one template renders
_PERCENT_RE = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.DOTALL)
_NUMBER_RE = re.compile(r"\d+")


class TemplateError(StepdeckError):
    """A template that cannot be parsed or rendered; `line` is the line within the template."""

    def __init__(self, what: str, detail: str, line: int | None = None) -> None:
        super().__init__(what, detail, line)
        self.what, self.detail, self.line = what, detail, line

    def __str__(self) -> str:
        where = f"{self.what} template" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.detail}"


class _LimitExceeded(StepdeckError):
    pass


def _too_big(n: int, what: str) -> _LimitExceeded:
    return _LimitExceeded(f"{what} would be {n:,} long, more than the limit of {MAX_RENDER_CHARS:,} characters")


def _check_width(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_RENDER_CHARS:
        raise _too_big(value, "a padded value")


_SUBJECT_AT = {"replace": 1, "join": 1, "wordwrap": 1, "truncate": 1}  # after the context or environment


def _capped_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def capped(*args: Any, **kwargs: Any) -> Any:
        at = _SUBJECT_AT.get(name, 0)
        subject, rest = args[at], args[at + 1 :]
        for value in (*rest, *kwargs.values()):
            _check_width(value)
        if name == "format" and isinstance(subject, str):
            _check_percent(subject, rest if rest else kwargs)
        _check_result(name, subject, rest, kwargs)
        return original(*args, **kwargs)

    return capped


def _check_percent(template: str, args: Any) -> None:
    """Refuse a `%` format whose widths and precisions (`*` ones read from the arguments) pass the cap."""
    values = list(args) if isinstance(args, tuple) else [] if isinstance(args, Mapping) else [args]
    position, total = 0, 0
    for match in _PERCENT_RE.finditer(template):
        if match.group(3) == "%":
            continue
        for group in (match.group(1), match.group(2)):
            if group == "*":
                star = values[position] if position < len(values) else 0
                position += 1
                size = star if isinstance(star, int) and not isinstance(star, bool) else 0
            else:
                size = int(group) if group else 0
            _check_width(abs(size))
            total += abs(size)
        position += 1
    if total > MAX_RENDER_CHARS:
        raise _too_big(total, "a formatted value")


def _check_spec(spec: str) -> int:
    """Refuse a `str.format` field spec (nested fields already filled in) whose width or precision passes the
    cap; returns their sum."""
    total = 0
    for number in _NUMBER_RE.findall(spec):
        if len(number) > 12:
            raise _too_big(10 ** (len(number) - 1), "a formatted value")
        _check_width(int(number))
        total += int(number)
    if total > MAX_RENDER_CHARS:
        raise _too_big(total, "a formatted value")
    return total


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _check_result(name: str, subject: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse, before it is built, a value of one call that would pass the cap (replace, join, indent)."""
    if name == "replace" and isinstance(subject, str) and len(args) >= 2:
        old, new = _text(args[0]), _text(args[1])
        count = subject.count(old) if old else len(subject) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        size = len(subject) + count * (len(new) - len(old))
        if size > MAX_RENDER_CHARS:
            raise _too_big(size, "a replaced value")
    elif name == "join":
        # Builtins only (no Python frame per item): the render's trace function would see a million calls.
        items = subject if isinstance(subject, (str, list, tuple)) else list(subject)
        separator = _text(args[0]) if args else _text(kwargs.get("d", kwargs.get("sep", "")))
        size = sum(map(len, map(str, items))) + len(separator) * max(len(items) - 1, 0)
        if size > MAX_RENDER_CHARS:
            raise _too_big(size, "a joined value")
    elif name == "indent" and isinstance(subject, str):
        width = args[0] if args else kwargs.get("width", 4)
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
        size = len(subject) + (subject.count("\n") + 1) * pad
        if size > MAX_RENDER_CHARS:
            raise _too_big(size, "an indented value")
    elif name == "expandtabs" and isinstance(subject, str):
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            size = len(subject) + subject.count("\t") * max(tabsize, 0)
            if size > MAX_RENDER_CHARS:
                raise _too_big(size, "an expanded value")


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with size checks on the operations that can build a huge value in one step."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        for name in ("center", "indent", "format", "wordwrap", "truncate", "replace"):
            self.filters[name] = _capped_filter(name, self.filters[name])
        self.filters["join"] = _capped_filter("join", self.filters["join"])

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > 33_000:
                raise _LimitExceeded("a product of more than about 10,000 digits is too large")
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(times, int)
                    and len(seq) * times > MAX_RENDER_CHARS
                ):
                    raise _too_big(len(seq) * times, "a repeated value")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                digits = right * abs(left).bit_length() * 0.30103
                if digits > 10_000:
                    raise _LimitExceeded(f"a power with about {digits:,.0f} digits is too large")
        elif operator == "%" and isinstance(left, str):
            _check_percent(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(__obj, "__self__", None).__class__ is str:  # a string method: center, ljust, zfill…
            method = getattr(__obj, "__name__", "")
            if method == "join":
                _check_result("join", args[0] if args else (), (__obj.__self__,), {})
            else:
                for value in (*args, *kwargs.values()):
                    _check_width(value)
                _check_result(method, __obj.__self__, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` through a formatter that checks each field's spec once nested fields are filled in."""
        if getattr(value, "__name__", "") not in ("format", "format_map") or not isinstance(
            getattr(value, "__self__", None), str
        ):
            return None
        template: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return str(_CappedFormatter(self).vformat(template, (), args[0]))
            return str(_CappedFormatter(self).vformat(template, args, kwargs))

        return functools.update_wrapper(wrapper, value)


class _CappedFormatter(SandboxedFormatter):
    """One per call: the widths of all its fields add up against the cap."""

    total = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        self.total += _check_spec(format_spec)
        if self.total > MAX_RENDER_CHARS:
            raise _too_big(self.total, "a formatted value")
        return super().format_field(value, format_spec)


_env = _PromptEnvironment()


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> jinja2.Template:
    return _env.from_string(source)


def parse(source: str, what: str = "prompt") -> nodes.Template:
    """The template's syntax tree; TemplateError with the line on a syntax error."""
    try:
        return _env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(what, exc.message or "syntax error", exc.lineno) from None


@dataclass(frozen=True, slots=True)
class Reference:
    """A use of `inputs.<name>` or `steps.<key>` in a template, with its line."""

    variable: str
    name: str
    line: int


def references(tree: nodes.Template) -> Iterator[Reference]:
    """The `inputs.x`, `inputs['x']`, `steps.k` and `steps['k']` a template reads, and unknown globals."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in VARIABLES:
            continue
        if isinstance(node, nodes.Getattr):
            yield Reference(target.name, node.attr, node.lineno)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield Reference(target.name, node.arg.value, node.lineno)


def unknown_names(tree: nodes.Template) -> list[tuple[str, int]]:
    """Names a template reads that are neither `inputs`, `steps`, nor set by the template itself."""
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    found: dict[str, int] = {}
    for n in tree.find_all(nodes.Name):
        if n.ctx == "load" and n.name not in VARIABLES and n.name not in assigned and n.name not in _env.globals:
            found.setdefault(n.name, n.lineno)
    return sorted(found.items(), key=lambda item: item[1])


def _template_line(tb: TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _rss_bytes() -> int | None:
    """The process's resident memory (Linux); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MEMORY_EVERY = 256  # trace events between two looks at the process's memory


class _Guard:
    """A trace function for the rendering thread: raises once the clock passes the deadline, when a
    variable of the template grows past the cap (`{% set x = x ~ x %}` in a loop), or when the process
    has grown by more than MAX_RENDER_MEMORY_BYTES since the render began (many values each under the
    cap: `{% set ns.xs = ns.xs + ['a' * 999999 ~ i] %}`)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.seconds = seconds
        self.events = 0
        start = _rss_bytes()
        self.memory_limit = None if start is None else start + MAX_RENDER_MEMORY_BYTES

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > self.at:
            raise _LimitExceeded(f"rendering took longer than {self.seconds:g} s")
        self.events += 1
        if self.memory_limit is not None and self.events % _MEMORY_EVERY == 0:
            rss = _rss_bytes()
            if rss is not None and rss > self.memory_limit:
                raise _LimitExceeded(f"rendering used more than {MAX_RENDER_MEMORY_BYTES // 2**20} MB of memory")
        if frame.f_code.co_filename != TEMPLATE_FILENAME:
            return None
        if event == "line":
            for value in frame.f_locals.values():
                _check_size(value)
                if isinstance(value, Namespace):  # the one mutable holder the immutable sandbox allows
                    for item in value._Namespace__attrs.values():
                        _check_size(item)
        return self


def _check_size(value: Any) -> None:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_RENDER_CHARS:
        raise _too_big(len(value), "a variable")


def render(
    source: str, variables: Mapping[str, Any], what: str = "prompt", time_limit_s: float = RENDER_TIME_LIMIT_S
) -> str:
    """Render in the calling thread (run it in a worker thread); TemplateError names the line."""
    template = _compile(source) if len(source) < 100_000 else _env.from_string(source)
    parts: list[str] = []
    size = 0
    guard = _Guard(time_limit_s)
    previous = sys.gettrace()
    sys.settrace(guard)
    try:
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise _too_big(size, "the rendered text")
            parts.append(chunk)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(what, exc.message or "syntax error", exc.lineno) from None
    except MemoryError as exc:
        detail = "out of memory: the template builds a value too large to hold"
        raise TemplateError(what, detail, _template_line(exc.__traceback__)) from None
    except (_LimitExceeded, SecurityError, jinja2.UndefinedError, OverflowError) as exc:
        raise TemplateError(what, str(exc), _template_line(exc.__traceback__)) from None
    except RecursionError:
        raise TemplateError(what, "recursion too deep") from None
    except Exception as exc:
        raise TemplateError(what, f"{type(exc).__name__}: {exc}", _template_line(exc.__traceback__)) from None
    finally:
        sys.settrace(previous)
    return "".join(parts)
