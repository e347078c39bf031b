"""The Notifications section of the Monitoring page: the configured targets (scheme and host only) and the
latest deliveries with their status, tries, last error and response code, re-read when they change."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from engine.db import current
from engine.notify import notifier
from engine.notify.notifier import DeliveryJson
from engine.notify.targets import env_targets
from engine.settings import Settings
from ui.components.columns import column
from ui.throttle import Throttle

REFRESH_INTERVAL_S = 1.0
SHOWN = 50
COLUMNS: list[dict[str, Any]] = [
    column("created_at", "Event at"),
    column("event", "Event"),
    column("run_id", "Run", "right"),
    column("target", "Target"),
    column("status", "Status"),
    column("attempts", "Tries", "right"),
    column("response_code", "Response", "right"),
    column("last_error", "Last error"),
    column("next_at", "Next try"),
]


def _row(d: DeliveryJson) -> dict[str, Any]:
    return {
        **d,
        "created_at": _short(d["created_at"]),
        "next_at": _short(d["next_at"]),
        "last_error": (d["last_error"] or "")[:200],
        "response_code": d["response_code"] or "",
    }


def _short(at: str | None) -> str:
    return (at or "")[:19].replace("T", " ")


async def notifications_section(settings: Settings) -> None:
    ui.label("Notifications").classes("text-h6")
    targets = env_targets(settings)
    names = ", ".join(f"{t.label} ({t.channel})" for t in targets) or "none"
    ui.label(
        f"Targets from the settings: {names}; workflows may add their own (notify:). "
        "Failed deliveries are tried again with backoff for up to a day."
    ).classes("text-sm text-grey-7")
    table = ui.table(columns=COLUMNS, rows=[], row_key="id").classes("w-full").props("dense flat")
    table.mark("deliveries")
    table.add_slot(
        "body-cell-status",
        "<q-td :props=\"props\"><q-badge :color=\"{delivered: 'green-6', failed: 'red-6'}[props.value]"
        ' || \'amber-8\'" :label="props.value" /></q-td>',
    )

    async def refresh() -> None:
        if table.is_deleted:
            throttle.close()
            return
        rows = [_row(d) for d in await notifier.list_deliveries(SHOWN)]
        if not table.is_deleted:
            table.rows = rows
            table.update()

    throttle = Throttle(refresh, REFRESH_INTERVAL_S, name="monitoring deliveries refresh")
    await refresh()
    # Deliveries made or tried by this process's engine refresh the table; the tab's listener goes with it.
    remove_listener = current().hub.deliveries.add(throttle.trigger)

    def gone() -> None:
        remove_listener()
        throttle.close()

    ui.context.client.on_delete(gone)
