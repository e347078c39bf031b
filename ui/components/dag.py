"""A small picture of a workflow's step graph (Mermaid `graph LR`, edges from `needs`)."""

from __future__ import annotations

from nicegui import ui

from engine.definitions import StepDef, WorkflowDef

_PLAIN = frozenset(" _-.,:()/'+")


def mermaid_text(text: str) -> str:
    """`text` safe inside a quoted Mermaid label: anything but letters, digits and plain punctuation
    becomes an entity code (`#35;`), so quotes, brackets, `#`, `;` and markup cannot end the label."""
    return "".join(c if c.isalnum() or c in _PLAIN else f"#{ord(c)};" for c in text)


def _node(index: int, step: StepDef) -> str:
    label = mermaid_text(step.label)
    if step.alternatives > 1:
        label += f" ({step.alternatives} alternatives)"
    # Node ids are positions, not keys: a key such as `end` or `a-b` would be read as Mermaid syntax.
    if step.select == "human":
        return f's{index}{{{{"{label}"}}}}'  # hexagon: a person picks an alternative here
    return f's{index}["{label}"]'


def mermaid_source(defn: WorkflowDef) -> str:
    """The definition's DAG in Mermaid syntax, steps in declared order."""
    index = {step.key: i for i, step in enumerate(defn.steps)}
    lines = ["graph LR"]
    lines += [f"  {_node(i, step)}" for i, step in enumerate(defn.steps)]
    for i, step in enumerate(defn.steps):
        lines += [f"  s{index[need]} --> s{i}" for need in step.needs if need in index]
    return "\n".join(lines)


# Mermaid lays a graph out in the browser's main thread: a few hundred steps take it tens of seconds, and
# the page is frozen meanwhile. Larger workflows get their graph drawn when a person opens it.
INLINE_MAX_STEPS = 60


def dag(defn: WorkflowDef) -> ui.mermaid:
    return ui.mermaid(mermaid_source(defn)).classes("w-full overflow-x-auto sd-mermaid").mark(f"dag-{defn.name}")


def dag_or_opener(defn: WorkflowDef) -> None:
    """The workflow's graph; for a large workflow, a closed section that draws it when opened."""
    if len(defn.steps) <= INLINE_MAX_STEPS:
        dag(defn)
        return
    section = ui.expansion(f"Graph of {len(defn.steps)} steps", icon="account_tree").classes("w-full")
    section.mark(f"dag-opener-{defn.name}")

    def draw() -> None:
        if section.value and not section.default_slot.children:
            with section:
                dag(defn)

    section.on_value_change(draw)
