"""What a notification says: the JSON body of a webhook, its signature, and the short text for chat."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SIGNATURE_HEADER = "X-Stepdeck-Signature"
TIMESTAMP_HEADER = "X-Stepdeck-Timestamp"
EVENT_HEADER = "X-Stepdeck-Event"
DELIVERY_HEADER = "X-Stepdeck-Delivery"  # the same for every try of one delivery: receivers can drop repeats


def body(row: dict[str, Any], base_url: str) -> dict[str, Any]:
    """`{"event", "at", "run": {"id", "workflow", "status", "error"}, "step": {...} or null, "url"}` from a
    notification row joined with its run and step (`detail` is added for events that carry one)."""
    step = None
    if row["step_key"] is not None:
        step = {"key": row["step_key"], "label": row["step_label"] or row["step_key"], "status": row["step_status"]}
    data: dict[str, Any] = {
        "event": row["event"],
        "at": row["created_at"],
        "run": {"id": row["run_id"], "workflow": row["workflow"], "status": row["run_status"], "error": row["error"]},
        "step": step,
        "url": run_url(base_url, row["run_id"], row["step_key"]),
    }
    if row["detail"] is not None:
        data["detail"] = row["detail"]
    return data


def run_url(base_url: str, run_id: int, step_key: str | None = None) -> str:
    return f"{base_url.rstrip('/')}/runs/{run_id}" + (f"?step={step_key}" if step_key else "")


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, timestamp: str, raw: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with the secret over `<timestamp>.<body>` (the timestamp header's value)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, raw: bytes, header: str) -> bool:
    """What a receiver does (see the README): recompute the signature and compare in constant time."""
    return hmac.compare_digest(signature(secret, timestamp, raw), header)


TITLES = {
    "run.failed": "failed",
    "run.waiting": "waits for a choice",
    "run.completed": "completed",
    "run.cancelled": "was cancelled",
    "step.truncated": "has an output cut off at the token limit",
    "budget.reached": "reached its budget",
}


def text(data: dict[str, Any]) -> tuple[str, str]:
    """A short title and message for chat and email targets."""
    run = data["run"]
    title = f"Stepdeck: run {run['id']} of {run['workflow']} {TITLES.get(data['event'], data['event'])}"
    lines = []
    if data["step"]:
        lines.append(f"Step: {data['step']['label']} ({data['step']['status']})")
    if run["error"]:
        lines.append(f"Error: {run['error'][:500]}")
    if data.get("detail"):
        lines.append(str(data["detail"])[:500])
    lines.append(data["url"])
    return title, "\n".join(lines)
