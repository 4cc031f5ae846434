# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from netconf_callhome.state.registry import (
    STATUSES,
    CONNECTED,
    DISCONNECTED,
    PendingKey,
    Registry,
    SQLiteStore,
)


def test_write_behind_and_reload(tmp_path):
    path = str(tmp_path / "reg.sqlite")
    reg = Registry(SQLiteStore(path))
    reg.load()
    reg.update("r1", status=CONNECTED, peer="127.0.0.2:1000", capabilities=["a", "b"], connect_count=1)
    reg.update("r2", status=DISCONNECTED, last_error="boom")
    reg.record_pending(PendingKey(fingerprint="SHA256:x", key_type="ssh-ed25519", transport="ssh", peer="p"))
    reg.record_pending(PendingKey(fingerprint="SHA256:x", key_type="ssh-ed25519", transport="ssh", peer="p2"))
    reg.record_pending(PendingKey(fingerprint="SHA256:y", key_type="ssh-ed25519", transport="ssh"))
    reg.drop_pending("SHA256:y")
    reg.close()

    again = Registry(SQLiteStore(path))
    again.load()
    r1 = again.get("r1")
    # sessions do not survive a restart: connected becomes disconnected, the rest is intact
    assert r1.status == DISCONNECTED and r1.peer == "127.0.0.2:1000" and r1.capabilities == ["a", "b"]
    assert r1.last_disconnected is not None
    assert again.get("r2").last_error == "boom"
    pending = again.pending()
    assert [p.fingerprint for p in pending] == ["SHA256:x"]
    assert pending[0].count == 2 and pending[0].peer == "p2"
    assert again.counts()[DISCONNECTED] == 2
    again.close()


def test_flush_coalesces_and_is_idempotent(tmp_path):
    class CountingStore(SQLiteStore):
        calls = 0

        def save(self, devices, pending, dropped_pending, events=()):
            CountingStore.calls += 1
            devices = list(devices)
            assert len(devices) == 1
            super().save(devices, pending, dropped_pending, events)

    reg = Registry(CountingStore(str(tmp_path / "r.sqlite")))
    reg.load()
    for i in range(100):
        reg.update("r1", connect_count=i)
    reg.flush()
    reg.flush()
    assert CountingStore.calls == 1
    reg.close()


def test_status_counts_follow_every_change(tmp_path):
    path = str(tmp_path / "reg.sqlite")
    reg = Registry(SQLiteStore(path))
    reg.load()
    reg.update("r1", status=CONNECTED)
    reg.update("r2", last_error="x")  # created with the default status
    reg.update("r3", status=CONNECTED)
    reg.update("r3", status=CONNECTED, peer="p")  # no transition
    reg.update("r1", status=DISCONNECTED)
    expected = {s: 0 for s in STATUSES}
    for rec in reg.devices():
        expected[rec.status] += 1
    assert reg.counts() == expected == dict(expected, connected=1, disconnected=2)
    reg.close()
    again = Registry(SQLiteStore(path))
    again.load()  # connected records come back disconnected, and are counted so
    assert again.counts()[DISCONNECTED] == 3 and again.counts()[CONNECTED] == 0
    again.close()
