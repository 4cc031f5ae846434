# SPDX-License-Identifier: GPL-3.0-or-later
"""Admission: an address over the failure limit is rate-limited, not cut off (issue 10, defect
12), and logged once per state change, not per connection (defect 13)."""

from __future__ import annotations

import logging
from typing import List

import pytest

from netconf_callhome.policy.admission import Admission

LOGGER = "netconf_callhome.admission"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, limits: List[str], **kw: float) -> Admission:
    opts = dict(max_handshakes=10, block_failures=3, block_window=60.0, block_seconds=60.0, admit_rate=1.0)
    opts.update(kw)
    return Admission(on_limit=limits.append, clock=clock, **opts)  # type: ignore[arg-type]


def trip(adm: Admission, ip: str = "127.0.0.1", n: int = 3) -> None:
    for _i in range(n):
        adm.failed("protocol", ip)


def events(caplog: pytest.LogCaptureFixture, name: str) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=%s " % name)]


def test_a_limited_address_still_admits_a_trickle() -> None:
    """Before: a blocked address turned every connection away for block_seconds, so an enrolled
    device behind it got no session. Now one handshake per 1/admit_rate s still starts."""
    clock, limits = Clock(), []
    adm = make(clock, limits)
    trip(adm)
    assert "127.0.0.1" in adm.limited
    # the failure that tripped the limit does not buy a handshake at once
    assert adm.is_blocked("127.0.0.1")
    clock.now += 1.0
    assert not adm.is_blocked("127.0.0.1")  # the trickle: a device calling now gets in
    assert adm.is_blocked("127.0.0.1")  # ...but not a burst
    assert adm.is_blocked("127.0.0.1")
    clock.now += 0.5
    assert adm.is_blocked("127.0.0.1")
    clock.now += 0.5
    assert not adm.is_blocked("127.0.0.1")
    # a long quiet spell does not save up a burst either
    clock.now += 30.0
    assert not adm.is_blocked("127.0.0.1")
    assert adm.is_blocked("127.0.0.1")
    assert limits == ["address-limited"] * 5
    assert not adm.is_blocked("127.0.0.9")  # other addresses are untouched


def test_admitted_per_second_is_bounded_under_a_flood() -> None:
    clock, limits = Clock(), []
    adm = make(clock, limits, admit_rate=2.0)
    trip(adm)
    admitted = 0
    for _tick in range(1000):  # 10 s of a 100 connections/s flood
        clock.now += 0.01
        admitted += not adm.is_blocked("127.0.0.1")
    assert 19 <= admitted <= 21


def test_admit_rate_zero_is_a_hard_block() -> None:
    clock, limits = Clock(), []
    adm = make(clock, limits, admit_rate=0.0)
    trip(adm)
    for _tick in range(100):
        clock.now += 0.5
        assert adm.is_blocked("127.0.0.1")


def test_failures_while_limited_keep_it_limited_without_logging_again(caplog: pytest.LogCaptureFixture) -> None:
    """Before: every block_failures more failures (handshakes already in progress, the trickle)
    logged peer.blocked again: dozens of lines for one address."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, limits = Clock(), []
    adm = make(clock, limits)
    trip(adm)
    for _i in range(100):
        clock.now += 1.0
        adm.is_blocked("127.0.0.1")
        adm.failed("protocol", "127.0.0.1")
    assert len(events(caplog, "peer.blocked")) == 1
    assert "127.0.0.1" in adm.limited  # each failure extended the limit
    # quiet for block_seconds: recovered, logged once with the totals
    clock.now += 61.0
    assert not adm.is_blocked("127.0.0.1")
    assert "127.0.0.1" not in adm.limited
    unblocked = events(caplog, "peer.unblocked")
    assert len(unblocked) == 1
    assert "peer_ip=127.0.0.1" in unblocked[0] and "admitted=100" in unblocked[0] and "failures=103" in unblocked[0]
    assert len(events(caplog, "peer.blocked")) == 1


def test_turned_away_connections_are_reported_periodically_not_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, limits = Clock(), []
    adm = make(clock, limits, admit_rate=0.0, block_seconds=300.0, report_interval=60.0)
    trip(adm)
    for _i in range(1200):  # 120 s, 10 connections a second
        clock.now += 0.1
        assert adm.is_blocked("127.0.0.1")
    reports = events(caplog, "peer.block_report")
    assert 1 <= len(reports) <= 2
    assert "turned_away=" in reports[0]
    assert len(limits) == 1200  # the metric still counts each one


def test_sweep_logs_recovery_without_new_traffic(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, limits = Clock(), []
    adm = make(clock, limits)
    trip(adm)
    adm.is_blocked("127.0.0.1")
    clock.now += 61.0
    adm.sweep()
    assert not adm.limited
    assert "turned_away=1" in events(caplog, "peer.unblocked")[0]


def test_uncounted_reasons_never_limit() -> None:
    clock, limits = Clock(), []
    adm = make(clock, limits)
    for reason in ("host-key", "auth-failed", "timeout-after-banner", "connection-lost-after-banner") * 5:
        adm.failed(reason, "127.0.0.1")
    assert not adm.limited
    assert not adm.is_blocked("127.0.0.1")


def test_failures_outside_the_window_do_not_add_up_and_stale_windows_go() -> None:
    clock, limits = Clock(), []
    adm = make(clock, limits)
    for _i in range(10):
        adm.failed("protocol", "127.0.0.1")
        clock.now += 40.0
    assert not adm.limited
    for n in range(1000):
        adm.failed("protocol", "10.0.%d.%d" % (n // 256, n % 256))
    clock.now += 61.0
    adm.sweep()
    assert not adm._failures  # pylint: disable=protected-access


def test_handshake_slots() -> None:
    clock, limits = Clock(), []
    adm = make(clock, limits, max_handshakes=2)
    assert adm.acquire("a:1") and adm.acquire("a:2")
    assert not adm.acquire("a:3")
    adm.release()
    assert adm.acquire("a:4")
    assert limits == ["handshake-limit"]


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        make(Clock(), [], admit_rate=-1.0)
