"""Ephemeral notices in PostgreSQL notifications: every payload fits the server's limit, in order, and
streamed text split across payloads joins up again at its offsets."""

from __future__ import annotations

import json

from engine.db.pg_feed import MAX_PAYLOAD, live_payloads
from engine.hub import Change, ChangeKind, TokenDelta


def _notices(payloads: list[str]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for payload in payloads:
        assert len(payload.encode()) <= MAX_PAYLOAD
        data = json.loads(payload)
        assert data["from"] == "me"
        out += data["notices"]
    return out


def test_many_notices_are_packed_into_payloads_under_the_limit_in_order() -> None:
    notices = [Change(7, ChangeKind.LOG, step_key="s", attempt=1, line=f"line {i} ü").to_json() for i in range(500)]
    payloads = live_payloads("me", notices)
    assert 1 < len(payloads) < 50  # packed, not one notification per line
    assert [n["line"] for n in _notices(payloads)] == [f"line {i} ü" for i in range(500)]


def test_long_streamed_text_is_split_at_offsets_and_long_lines_are_cut() -> None:
    text = "".join(chr(0x1F600 + i % 20) for i in range(25_000))  # four bytes each in UTF-8
    tokens = Change(7, ChangeKind.TOKENS, step_key="s", attempt=1, tokens=TokenDelta(2, 100, text, reset=True))
    line = Change(7, ChangeKind.LOG, step_key="s", attempt=1, line="\x01" * 50_000)  # 6 bytes each in JSON
    got = _notices(live_payloads("me", [tokens.to_json(), line.to_json()]))
    pieces = [Change.from_ephemeral_json(n) for n in got if n["kind"] == "tokens"]
    rebuilt = ""
    for piece in pieces:
        assert piece.tokens is not None and piece.remote
        assert piece.tokens.offset == 100 + len(rebuilt)
        rebuilt += piece.tokens.text
    assert rebuilt == text
    assert [p.tokens.reset for p in pieces if p.tokens] == [True] + [False] * (len(pieces) - 1)
    cut = next(n for n in got if n["kind"] == "log")
    assert isinstance(cut["line"], str) and cut["line"].endswith("…") and len(cut["line"]) < 50_000
