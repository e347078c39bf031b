"""Bounds on what a definition file may ask of the YAML loader: its size, its depth, and its number of
nodes once aliases are expanded (an alias is a reference when loaded, but a copy for every consumer
that walks the value, such as a JSON encoder: a few lines of nested aliases expand to billions)."""

from __future__ import annotations

from collections.abc import Iterator

import yaml

from models.errors import StepdeckError

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 100_000  # counted with every alias expanded


class YamlLimitError(StepdeckError, yaml.MarkedYAMLError):
    """A file over one of the bounds; its mark points at the node where the bound was crossed."""


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


def check_expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> None:
    """Raise YamlLimitError when the document, aliases expanded, holds more than `limit` nodes or an
    alias that contains itself. Visits each distinct node once (no recursion, no expansion)."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()  # the nodes being expanded above the one on top of the stack
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        node_id = id(node)
        if expanded:
            ancestors.discard(node_id)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > limit:
                raise YamlLimitError(
                    None, None, f"too large: more than {limit:,} values once aliases are expanded", node.start_mark
                )
            sizes[node_id] = size
            continue
        if node_id in sizes:
            continue
        if node_id in ancestors:
            raise YamlLimitError(None, None, "an alias refers to a value that contains it", node.start_mark)
        ancestors.add(node_id)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
