# SPDX-License-Identifier: GPL-3.0-or-later
"""The registry while another process holds the SQLite lock (issue 10, defect 4), and the
pending entry's consistency (defect 13)."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from netconf_callhome.state.registry import (
    CONNECTED,
    FlushRetry,
    PendingKey,
    Registry,
    RegistryWriteError,
    SQLiteStore,
)


def _locker(path: str) -> sqlite3.Connection:
    """Another connection holding the database's write lock (what a backup tool or a second
    process does), until it commits."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def _rows(path: str, table: str) -> dict:
    with sqlite3.connect(path) as db:
        key = "name" if table == "devices" else "fingerprint"
        return dict(db.execute("SELECT %s, doc FROM %s" % (key, table)).fetchall())


def test_locked_database_loses_nothing_and_the_flush_succeeds_after(tmp_path):
    path = str(tmp_path / "reg.sqlite")
    reg = Registry(SQLiteStore(path, busy_timeout=0.05))
    reg.load()
    reg.update("r1", status=CONNECTED, peer="192.0.2.1:1000")
    reg.record_pending(PendingKey(fingerprint="SHA256:a", key_type="ssh-ed25519", transport="ssh"))
    reg.record_pending(PendingKey(fingerprint="SHA256:gone", key_type="ssh-ed25519", transport="ssh"))
    reg.flush()
    reg.drop_pending("SHA256:gone")
    reg.update("r1", connect_count=7)
    reg.update("r2", last_error="x")
    reg.record_pending(PendingKey(fingerprint="SHA256:b", key_type="ssh-ed25519", transport="ssh"))

    other = _locker(path)
    for attempt in range(3):  # every attempt fails, and every attempt still has everything to write
        with pytest.raises(RegistryWriteError, match="locked"):
            reg.flush()
        assert reg.has_unsaved() and reg.unsaved_count() == 4, attempt  # r1, r2, SHA256:b, the drop
    # a change made while the database is locked joins the unsaved ones
    reg.update("r3", status=CONNECTED)
    assert reg.unsaved_count() == 6  # r3 and its status change in the event history
    other.rollback()
    other.close()

    reg.flush()
    assert not reg.has_unsaved()
    assert set(_rows(path, "devices")) == {"r1", "r2", "r3"}
    assert '"connect_count": 7' in _rows(path, "devices")["r1"]
    assert set(_rows(path, "pending")) == {"SHA256:a", "SHA256:b"}
    reg.close()


def test_a_change_during_a_write_stays_unsaved(tmp_path):
    """Only what a successful write contained is marked saved: a record changed while the
    write ran is written by the next flush (the old flush forgot it)."""
    path = str(tmp_path / "reg.sqlite")

    class ChangingStore(SQLiteStore):
        def save(self, devices, pending, dropped_pending, events=()):
            devices = list(devices)
            super().save(devices, pending, dropped_pending, events)
            if devices and devices[0].connect_count == 1:
                reg.update("r1", connect_count=2)  # the event loop, while the thread writes

    reg = Registry(ChangingStore(path))
    reg.load()
    reg.update("r1", connect_count=1)
    reg.flush()
    assert reg.has_unsaved()
    reg.flush()
    assert not reg.has_unsaved()
    assert '"connect_count": 2' in _rows(path, "devices")["r1"]
    reg.close()


def test_close_with_a_locked_database_logs_instead_of_raising(tmp_path, caplog):
    path = str(tmp_path / "reg.sqlite")
    reg = Registry(SQLiteStore(path, busy_timeout=0.05))
    reg.load()
    reg.update("r1", status=CONNECTED)
    other = _locker(path)
    with caplog.at_level(logging.ERROR, logger="netconf_callhome.registry"):
        reg.close()
    other.rollback()
    other.close()
    # r1 and its status change (the event history)
    assert "event=registry.flush_failed at_stop=true unsaved=2" in caplog.text


def test_flush_retry_backs_off_to_the_cap_and_logs_once_per_streak(caplog):
    retry = FlushRetry(0.5, cap=30.0)
    now = 1000.0
    assert retry.due(now)
    delays = []
    with caplog.at_level(logging.DEBUG, logger="netconf_callhome.registry"):
        for attempt in range(10):
            delays.append(retry.failed(now, "database is locked", unsaved=3))
            assert not retry.due(now) and retry.due(now + delays[-1]), attempt
        retry.succeeded(now + 100)
        retry.failed(now + 200, "database is locked", unsaved=1)  # a new streak
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0] and max(delays) == 30.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # one per streak, not one per attempt
    assert "event=registry.flush_failed attempts=1 unsaved=3 retry_in=1.0 retry_max=30.0" in errors[0]
    assert "event=registry.flush_recovered attempts=11 failed_for=100.0" in caplog.text
    assert retry.failures == 1


def test_a_repeated_pending_entry_describes_the_latest_presentation(tmp_path):
    reg = Registry(SQLiteStore(str(tmp_path / "reg.sqlite")))
    reg.load()
    first = reg.record_pending(
        PendingKey(
            fingerprint="SHA256:k",
            key_type="ssh-ed25519",
            transport="ssh",
            peer="192.0.2.1:1",
            reason="key-mismatch",
            claimed_device="r1",
            claim_source="address",
        )
    )
    first_seen = first.first_seen
    again = reg.record_pending(
        PendingKey(fingerprint="SHA256:k", key_type="ssh-ed25519", transport="ssh", peer="192.0.2.9:2")
    )
    # the latest claim and its reason together (before: claimed r1 by address, reason unknown-key)
    assert (again.reason, again.claimed_device, again.claim_source, again.peer) == (
        "unknown-key",
        "",
        "",
        "192.0.2.9:2",
    )
    assert again.count == 2 and again.first_seen == first_seen and again.last_seen >= first_seen
    third = reg.record_pending(
        PendingKey(
            fingerprint="SHA256:k",
            key_type="ssh-ed25519",
            transport="ssh",
            reason="key-mismatch",
            claimed_device="r2",
            claim_source="device-id",
        )
    )
    assert (third.reason, third.claimed_device, third.claim_source) == ("key-mismatch", "r2", "device-id")
    assert third.count == 3
    reg.close()
