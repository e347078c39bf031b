"""The local side of leases: when a holder stops acting on a lease it could not renew."""

from __future__ import annotations

import time

import pytest

from engine.leases import LocalDeadline, fencing_margin_s, identity


def test_the_margin_covers_three_renewals_and_at_most_half_the_lease() -> None:
    assert fencing_margin_s(120, 5) == 15
    assert fencing_margin_s(6, 1) == 3
    assert fencing_margin_s(4, 2) == 2  # a lease of two beats: acted on for half of it


def test_a_lease_holds_from_the_renewal_sent_until_its_length_less_the_margin() -> None:
    lease = LocalDeadline(ttl_s=60, margin_s=10)
    assert not lease.holds()  # never renewed
    sent = time.monotonic()
    lease.renewed(sent)
    assert lease.holds()
    assert lease.until == pytest.approx(sent + 50)
    lease.renewed(sent - 51)  # the last renewal that succeeded was sent 51 s ago
    assert not lease.holds()


def test_a_lapsed_lease_no_longer_holds() -> None:
    lease = LocalDeadline(ttl_s=60, margin_s=10)
    lease.renewed(time.monotonic())
    lease.lapse()
    assert not lease.holds()


def test_the_recorded_host_and_pid_can_be_made_alike_to_simulate_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPDECK_SIMULATE_HOST_PID", "box:1")
    assert identity() == ("box", 1)
    monkeypatch.delenv("STEPDECK_SIMULATE_HOST_PID")
    assert identity()[1] > 1
