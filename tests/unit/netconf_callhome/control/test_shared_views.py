# SPDX-License-Identifier: GPL-3.0-or-later
"""What a node on a shared PostgreSQL store shows and writes (issue 12 items 1, 4, 5), through
the real control socket of a listener in a thread and a real PostgreSQL (tests/peers):

- ``pending`` lists every node's keys with the node that saw each, merged with this node's own
  entries (the newer one wins), ``scope: node`` this node's own; SQLite answers as before;
- ``status`` counts what ``pending`` lists by default (``pending``, ``pending_scope``), this
  node's own as ``pending_here``; this node's own only (``pending_scope: node``) with the
  database unreadable; SQLite as before;
- the ``secret`` op's ``dry_run`` and ``list`` on whatever store the listener uses;
- the ``shared-trust-store`` marker next to the control socket (redacted URL), removed on SQLite.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from netconf_callhome.control.client import SHARED_STORE_MARKER, ControlClient, parse_address, shared_store_of
from netconf_callhome.errors import ControlError
from netconf_callhome.errors import StateStoreError
from netconf_callhome.state.registry import PendingKey, Registry
from netconf_callhome.state.stores import open_store

pytestmark = pytest.mark.timeout(120)


def _other_node(url: str, tmp_path: Path, name: str) -> Registry:
    """Another node's registry on the same database (what it records is flushed there)."""
    registry = Registry(open_store(url, sqlite_default=str(tmp_path / "unused.sqlite"), home=str(tmp_path), node=name))
    registry.load()
    return registry


def _key(fingerprint: str, peer: str = "192.0.2.7:40000") -> PendingKey:
    return PendingKey(fingerprint=fingerprint, key_type="ssh-ed25519", transport="ssh", peer=peer)


def _by_fp(entries: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {e["fingerprint"]: e for e in entries}


def test_pending_on_a_shared_store_lists_every_nodes_keys_with_their_node(postgres, listener_in_thread, tmp_path, wait_until):
    url = postgres.create_database("pending_views_%d" % os.getpid())
    other = _other_node(url, tmp_path, "node-a")
    try:
        other.record_pending(_key("SHA256:seen-on-a"))
        other.flush()
        lst = listener_in_thread(state_url=url, node_name="node-b")
        # node-b loaded the row at start: its own entry, the row's node kept (same last_seen)
        listed = _by_fp(lst.call("pending"))
        assert listed["SHA256:seen-on-a"]["node"] == "node-a"
        other.record_pending(_key("SHA256:after-b-started"))
        other.flush()
        listed = _by_fp(lst.call("pending"))
        assert listed["SHA256:after-b-started"]["node"] == "node-a" and listed["SHA256:after-b-started"]["count"] == 1
        assert "SHA256:after-b-started" not in _by_fp(lst.call("pending", scope="node"))  # node-b never saw it

        # node-b sees the key itself (newer than the row): its entry, with its node
        lst.run(_record(lst, _key("SHA256:after-b-started", peer="192.0.2.8:1")))
        entry = _by_fp(lst.call("pending"))["SHA256:after-b-started"]
        assert entry["node"] == "node-b" and entry["peer"] == "192.0.2.8:1"
        # only node-b has seen this one (written or not yet): node-b
        lst.run(_record(lst, _key("SHA256:only-b")))
        assert _by_fp(lst.call("pending"))["SHA256:only-b"]["node"] == "node-b"
        wait_until(lambda: _by_fp(other.store.list_pending()).get("SHA256:only-b", {}).get("node") == "node-b",
                   10, "node-b's entry written with its node")

        # node-a sees the first key again later: its row is the newer, node-a shown again
        time.sleep(0.01)
        other.record_pending(_key("SHA256:after-b-started", peer="192.0.2.9:2"))
        other.flush()
        entry = _by_fp(lst.call("pending"))["SHA256:after-b-started"]
        assert entry["node"] == "node-a" and entry["peer"] == "192.0.2.9:2"
        listed_all = lst.call("pending")
        assert [e["first_seen"] for e in listed_all] == sorted(e["first_seen"] for e in listed_all)
        with pytest.raises(ControlError, match="'scope' must be"):
            lst.call("pending", scope="everywhere")
    finally:
        other.close()


async def _record(lst: Any, key: PendingKey) -> None:
    lst.listener.registry.record_pending(key)


def test_pending_on_sqlite_is_this_nodes_own_as_before(listener_in_thread) -> None:
    lst = listener_in_thread()
    lst.run(_record(lst, _key("SHA256:local")))
    assert [set(e) for e in lst.call("pending")] == [set(_key("x").to_dict())]  # no node field
    assert lst.call("pending", scope="node") == lst.call("pending")


def test_status_counts_pending_keys_as_pending_lists_them(postgres, listener_in_thread, tmp_path) -> None:
    url = postgres.create_database("pending_status_%d" % os.getpid())
    other = _other_node(url, tmp_path, "node-a")
    try:
        other.record_pending(_key("SHA256:on-a-1"))
        other.record_pending(_key("SHA256:on-a-2"))
        other.flush()
        lst = listener_in_thread(state_url=url, node_name="node-b")
        lst.run(_record(lst, _key("SHA256:on-b")))  # not written yet: counted from this node's entry
        status = lst.call("status")
        # node-b loaded node-a's two rows at its start: its own entries are those two and its own
        here = len(lst.call("pending", scope="node"))
        assert status["pending"] == len(lst.call("pending")) == 3
        assert status["pending_here"] == here and status["pending_scope"] == "cluster"
        other.record_pending(_key("SHA256:on-a-3"))  # after node-b started: only the row has it
        other.flush()
        status = lst.call("status")
        assert status["pending"] == 4 and status["pending_here"] == here

        # the database unreadable: this node's own count, and the scope says so
        store = lst.listener.control._pending_store()
        assert store is not None

        def refuse() -> List[Dict[str, Any]]:
            raise StateStoreError("cannot read the pending keys from the test's database")

        store.list_pending = refuse
        try:
            status = lst.call("status")
            assert status["pending"] == status["pending_here"] == here and status["pending_scope"] == "node"
        finally:
            del store.list_pending
        assert lst.call("status")["pending_scope"] == "cluster"
    finally:
        other.close()


def test_status_on_sqlite_counts_this_nodes_own_as_before(listener_in_thread) -> None:
    lst = listener_in_thread()
    lst.run(_record(lst, _key("SHA256:local")))
    status = lst.call("status")
    assert status["pending"] == 1
    assert "pending_here" not in status and "pending_scope" not in status


def test_secret_dry_run_and_list_on_the_file_store(listener_in_thread) -> None:
    lst = listener_in_thread()
    args = dict(action="set", name="r1", reference="env:R1_SECRET")
    preview = lst.call("secret", dry_run=True, **args)
    assert preview["changed"] is True and preview["dry_run"] is True and preview["outbound_ssh_before"] is None
    assert lst.call("secret", action="list")["devices"] == {}  # nothing written
    done = lst.call("secret", **args)
    assert done["changed"] is True and done["outbound_ssh"] == {"secret": "env:R1_SECRET", "allow_rotation": False}
    assert done["identities"] == [] and done["trust_store"] == lst.config.trust_store
    assert lst.call("secret", **args)["changed"] is False
    assert lst.call("secret", dry_run=True, **args)["changed"] is False
    rotated = lst.call("secret", dry_run=True, allow_rotation=True, **args)
    assert rotated["changed"] is True and rotated["outbound_ssh_before"] == {"secret": "env:R1_SECRET", "allow_rotation": False}
    assert lst.call("secret", action="list")["devices"] == {"r1": {"secret": "env:R1_SECRET", "allow_rotation": False}}
    with pytest.raises(ControlError, match="'action' must be"):
        lst.call("secret", action="show")


def test_secret_through_a_node_on_the_shared_store(postgres, listener_in_thread) -> None:
    url = postgres.create_database("secret_views_%d" % os.getpid())
    lst = listener_in_thread(state_url=url, node_name="node-b")
    args = dict(action="set", name="r2", reference="file:/etc/callhome/r2.secret")
    assert lst.call("secret", dry_run=True, **args)["changed"] is True
    query = "SELECT doc->'outbound_ssh'->>'secret' FROM trust_devices WHERE name = 'r2'"
    assert postgres.psql(query, url.rsplit("/", 1)[1]) == []
    done = lst.call("secret", **args)
    assert done["changed"] is True and done["trust_store"].startswith("postgresql://")
    assert postgres.psql(query, url.rsplit("/", 1)[1]) == [["file:/etc/callhome/r2.secret"]]
    assert lst.call("secret", action="list")["devices"]["r2"]["secret"] == "file:/etc/callhome/r2.secret"


def test_the_shared_store_marker_next_to_the_control_socket(postgres, listener_in_thread, tmp_path) -> None:
    url = postgres.create_database("marker_%d" % os.getpid())
    home = tmp_path / "node"
    lst = listener_in_thread(home=home, state_url=url, node_name="node-m")
    address = parse_address(lst.address)
    marker = shared_store_of(address)
    assert marker is not None and marker.startswith("postgresql://") and "marker_" in marker
    password = url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    assert not password or password not in (home / SHARED_STORE_MARKER).read_text()  # redacted
    lst.stop()
    assert shared_store_of(address) == marker  # stays: a stopped node's store is still the database
    single = listener_in_thread(home=home)  # the same home, now a single node on SQLite
    assert shared_store_of(parse_address(single.address)) is None
    assert not (home / SHARED_STORE_MARKER).exists()
    assert shared_store_of(parse_address("tls://127.0.0.1:1")) is None
    assert ControlClient(single.address).call("ping")["pid"] == os.getpid()
