"""Columns of the dashboard's tables (NiceGUI's `ui.table`, a Quasar table)."""

from __future__ import annotations

from typing import Any


def column(field: str, label: str, align: str = "left", **more: Any) -> dict[str, Any]:
    """A table column showing a row's `field` under `label` (the column is named after its field, as every
    table here names them); `more` adds Quasar's other column options (`sortable`, `:format`, classes)."""
    return {"name": field, "label": label, "field": field, "align": align, **more}
