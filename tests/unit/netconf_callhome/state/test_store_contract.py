# SPDX-License-Identifier: GPL-3.0-or-later
"""The registry store contract: every case here runs against SQLite AND a real PostgreSQL
(``make_store`` in conftest.py is parametrized over both)."""

from __future__ import annotations

from netconf_callhome.state.registry import (
    CONNECTED,
    DISCONNECTED,
    KEY_MISMATCH,
    PendingKey,
    Registry,
    RegistryStore,
)


def _pending(fp: str, **kw: object) -> PendingKey:
    return PendingKey(fingerprint=fp, key_type="ssh-ed25519", transport="ssh", **kw)  # type: ignore[arg-type]


def test_store_satisfies_the_protocol(make_store):
    store: RegistryStore = make_store()  # mypy checks the assignment; at run time: the methods
    for name in ("load", "save", "history", "close"):
        assert callable(getattr(store, name))


def test_records_survive_a_restart_and_connected_becomes_disconnected(make_store):
    reg = Registry(make_store())
    reg.load()
    reg.update("r1", status=CONNECTED, peer="192.0.2.1:1000", transport="ssh", capabilities=["urn:a", "urn:b"])
    reg.update("r2", status=KEY_MISMATCH, last_error="key changed", connect_count=3)
    reg.record_pending(_pending("SHA256:a", peer="192.0.2.9:5", identities=["x"]))
    reg.record_pending(_pending("SHA256:gone"))
    reg.flush()
    reg.drop_pending("SHA256:gone")
    reg.close()

    again = Registry(make_store())
    again.load()
    r1, r2 = again.get("r1"), again.get("r2")
    assert r1 is not None and r2 is not None
    # the session died with the process that held it
    assert r1.status == DISCONNECTED and r1.last_disconnected is not None
    assert r1.capabilities == ["urn:a", "urn:b"] and r1.peer == "192.0.2.1:1000"
    assert r2.status == KEY_MISMATCH and r2.connect_count == 3 and r2.last_error == "key changed"
    assert [p.fingerprint for p in again.pending()] == ["SHA256:a"]
    assert again.pending()[0].identities == ["x"] and again.pending()[0].count == 1
    assert again.counts()[DISCONNECTED] == 1 and again.counts()[KEY_MISMATCH] == 1
    again.close()


def test_upsert_replaces_the_document(make_store):
    reg = Registry(make_store())
    reg.load()
    reg.update("r1", connect_count=1)
    reg.flush()
    reg.update("r1", connect_count=2, last_error="again")
    reg.record_pending(_pending("SHA256:a", reason="unknown-key"))
    reg.flush()
    reg.record_pending(_pending("SHA256:a", reason="key-mismatch", claimed_device="r1"))
    reg.close()
    devices, pending = make_store().load()
    assert [(d.name, d.connect_count, d.last_error) for d in devices] == [("r1", 2, "again")]
    assert [(p.fingerprint, p.reason, p.claimed_device, p.count) for p in pending] == [
        ("SHA256:a", "key-mismatch", "r1", 2)
    ]


def test_status_changes_go_to_the_event_history_in_order(make_store):
    store = make_store(node="node-a")
    reg = Registry(store)
    reg.load()
    reg.update("r1", status=CONNECTED, peer="192.0.2.1:1", transport="tls")
    reg.update("r1", connect_count=1)  # not a status change: no event
    reg.update("r2", status=CONNECTED, peer="192.0.2.2:1", transport="ssh")
    reg.flush()
    reg.update("r1", status=DISCONNECTED, last_error="keepalive missed")
    reg.flush()
    assert not reg.has_unsaved()

    history = reg.history()
    assert [(e.device, e.event, e.previous) for e in history] == [
        ("r1", CONNECTED, DISCONNECTED),
        ("r2", CONNECTED, DISCONNECTED),
        ("r1", DISCONNECTED, CONNECTED),
    ]
    assert {e.node for e in history} == {"node-a"}
    assert history[0].peer == "192.0.2.1:1" and history[0].transport == "tls"
    assert history[2].error == "keepalive missed"
    assert history[0].at <= history[1].at <= history[2].at
    assert [e.event for e in reg.history("r1")] == [CONNECTED, DISCONNECTED]
    assert [e.device for e in reg.history(limit=1)] == ["r1"]
    reg.close()
    # another process (node) reads the same history
    assert [e.event for e in make_store(node="node-b").history("r1")] == [CONNECTED, DISCONNECTED]


def test_events_written_once_even_when_more_arrive_during_a_write(make_store):
    store = make_store()
    reg = Registry(store)
    reg.load()
    real_save = store.save
    calls = []

    def save(devices, pending, dropped, events=()):
        calls.append(len(events))
        real_save(devices, pending, dropped, events)
        if len(calls) == 1:
            reg.update("r1", status=DISCONNECTED)  # the event loop, while the thread writes

    store.save = save
    reg.update("r1", status=CONNECTED)
    reg.flush()
    assert reg.has_unsaved()
    reg.flush()
    reg.flush()
    assert calls == [1, 1]
    assert [e.event for e in reg.history("r1")] == [CONNECTED, DISCONNECTED]
    reg.close()


def test_unwritten_events_are_bounded_and_the_drop_is_logged_once(make_store, monkeypatch, caplog):
    from netconf_callhome.state import registry as registry_module

    monkeypatch.setattr(registry_module, "MAX_UNSAVED_EVENTS", 5)
    reg = Registry(make_store())
    reg.load()
    with caplog.at_level("WARNING", logger="netconf_callhome.registry"):
        for i in range(8):
            reg.update("r1", status=CONNECTED if i % 2 == 0 else DISCONNECTED, connect_count=i)
    assert reg.events_dropped == 3 and caplog.text.count("event=registry.history_dropped max_unsaved=5") == 1
    reg.flush()
    # the five latest status changes are written, oldest first
    assert [e.event for e in reg.history("r1")] == [DISCONNECTED, CONNECTED, DISCONNECTED, CONNECTED, DISCONNECTED]
    reg.close()
