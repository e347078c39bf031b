"""News without a payload (deliveries made or tried) goes to the listeners of one hub: a listener that
raises does not keep it from the others, a removed one hears nothing more, and a new hub (a database
opened anew, the next app of the process) starts with none of the old one's listeners."""

from __future__ import annotations

import logging

import pytest

from engine.hub import Hub


def test_a_signal_calls_every_listener_even_after_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[str] = []

    def broken() -> None:
        raise RuntimeError("listener broke")

    hub = Hub()
    hub.deliveries.add(broken)
    hub.deliveries.add(lambda: heard.append("second"))
    with caplog.at_level(logging.ERROR):
        hub.deliveries.emit()
    assert heard == ["second"]
    assert any("a listener of deliveries failed" in r.getMessage() for r in caplog.records)


def test_a_removed_listener_hears_nothing_and_removing_twice_is_harmless() -> None:
    heard: list[str] = []
    hub = Hub()
    remove = hub.deliveries.add(lambda: heard.append("x"))
    hub.deliveries.emit()
    remove()
    remove()
    hub.deliveries.emit()
    assert heard == ["x"]


def test_a_new_hub_has_none_of_the_listeners_of_the_one_before() -> None:
    heard: list[str] = []
    Hub().deliveries.add(lambda: heard.append("old"))
    Hub().deliveries.emit()
    assert heard == []
