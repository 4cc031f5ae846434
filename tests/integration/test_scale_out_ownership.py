# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale-out, issue 12 items 3 and 5, with listener processes on one real PostgreSQL
(tests/peers/postgres_peer.py) and simulated devices:

- takeover: a device that calls another node moves there, the former owner closes its session
  ("moved to node ..."), and no device is reported connected on two nodes (registry rows and
  every node's own ``devices``);
- trust propagation: a revoke on node A closes the session node B holds within a second; an
  approval on node B lets a device pending on node A in;
- the database down: an enrollment is refused with a clear error, sessions are kept.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from harness import running, wait_until

from netconf_callhome.errors import CallHomeError


def _cluster(listener_factory: Any, postgres: Any, tmp_path: Path, database: str, names: List[str], fleet: Any,
             enrolled: List[str]) -> Dict[str, Any]:
    """Nodes ``names`` on one fresh database; the first brings ``enrolled`` (its trust.json
    seeds the shared trust store), the others start with no trust file of their own."""
    url = postgres.create_database(database)
    nodes: Dict[str, Any] = {}
    for i, name in enumerate(names):
        home = tmp_path / name
        config = tmp_path / ("%s.yml" % name)
        config.write_text("state_url: %s\nnode_name: %s\n" % (url, name))
        os.chmod(config, 0o600)
        if i == 0 and enrolled:
            fleet.enroll(home / "trust.json", enrolled)
        nodes[name] = listener_factory("--config", str(config), home=home).start()
    return nodes


def _status(node: Any, device: str) -> str:
    try:
        # this node's own view (scope node): by default every node shows the shared one (item 4)
        return str(node.call("device", device=device, scope="node").get("status"))
    except CallHomeError:
        return "unknown"


def _connected_on(nodes: Dict[str, Any], device: str) -> List[str]:
    return [name for name, node in nodes.items() if _status(node, device) == "connected"]


def test_a_device_that_calls_another_node_moves_there(listener_factory, fleet, postgres, tmp_path):
    """mv0001 holds a session with node-a, then calls node-b (its address moved, HAProxy picked
    another node): node-b claims it (epoch 2), node-a closes its session with "moved to node
    node-b", and at no sampled moment is it connected on two nodes, in the database or in the
    nodes' own views."""
    database = "takeover_%d" % os.getpid()
    nodes = _cluster(listener_factory, postgres, tmp_path, database, ["node-a", "node-b", "node-c"], fleet, ["mv0001"])
    a, b = nodes["node-a"], nodes["node-b"]
    owner = "SELECT node, epoch FROM device_owners WHERE name = 'mv0001'"
    row = "SELECT status, coalesce(node, '-') FROM devices WHERE name = 'mv0001'"
    # dials once: when node-a closes the session this device does not come back to node-a
    with running(fleet.simulator(a.ssh_port, 1, "--name-prefix", "mv", "--no-reconnect", wait_connected=1)):
        a.wait_device("mv0001", "connected")
        wait_until(lambda: postgres.psql(owner, database) == [["node-a", "1"]], 10, "node-a owns mv0001 (epoch 1)")
        wait_until(lambda: postgres.psql(row, database) == [["connected", "node-a"]], 10, "row connected on node-a")
        with running(fleet.simulator(b.ssh_port, 1, "--name-prefix", "mv", wait_connected=1)):
            samples = 0
            moved_at = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                views = _connected_on(nodes, "mv0001")
                owners = postgres.psql(owner, database)
                if owners == [["node-b", "2"]] and moved_at is None:
                    moved_at = time.monotonic()
                if moved_at is not None and time.monotonic() - moved_at > 1.0:
                    # one second after node-b's claim, node-a has long closed its session
                    assert views == ["node-b"], views
                if views == ["node-b"] and postgres.psql(row, database) == [["connected", "node-b"]]:
                    if moved_at is not None:
                        print("node-b's claim seen -> only node-b connected: %.3f s" % (time.monotonic() - moved_at))
                    break
                samples += 1
            else:
                raise AssertionError("mv0001 did not move to node-b: views %s owner %s row %s\nnode-a log:\n%s" % (
                    _connected_on(nodes, "mv0001"), postgres.psql(owner, database), postgres.psql(row, database),
                    a.log()[-3000:]))
            assert postgres.psql(owner, database) == [["node-b", "2"]]
            rec = a.call("device", device="mv0001", scope="node")
            assert rec["status"] == "disconnected" and rec["last_error"] == "moved to node node-b", rec
            log = a.wait_log("event=device.moved device=mv0001 to_node=node-b epoch=2")
            assert "event=device.owned device=mv0001 epoch=2 previous_node=node-a" in b.wait_log("event=device.owned")
            # node-a's late news (its session's end, written by its registry flush) has landed:
            # it is in the history, and it did not overwrite node-b's row
            events = "SELECT node, event FROM events WHERE device = 'mv0001' ORDER BY id"

            def landed() -> "List[List[str]] | None":
                history = postgres.psql(events, database)
                return history if ["node-a", "disconnected"] in history else None

            history = wait_until(landed, 10, "node-a's disconnected event in the history",
                                 detail=lambda: str(postgres.psql(events, database)))
            assert postgres.psql(row, database) == [["connected", "node-b"]]
            assert _connected_on(nodes, "mv0001") == ["node-b"]
            assert history.count(["node-b", "connected"]) == 1, history
            assert "event=device.replaced" not in log


def test_a_revoke_on_one_node_closes_the_session_held_by_another_within_a_second(
    listener_factory, fleet, postgres, tmp_path
):
    database = "revoke_%d" % os.getpid()
    nodes = _cluster(listener_factory, postgres, tmp_path, database, ["node-a", "node-b"], fleet, ["rv0001"])
    a, b = nodes["node-a"], nodes["node-b"]
    with running(fleet.simulator(b.ssh_port, 1, "--name-prefix", "rv", wait_connected=1)):
        b.wait_device("rv0001", "connected")
        started = time.monotonic()
        assert a.call("revoke", device="rv0001")["changed"] is True
        wait_until(lambda: _status(b, "rv0001") != "connected", 1.0, "node-b closing rv0001's session",
                   detail=lambda: b.log()[-3000:])
        elapsed = time.monotonic() - started
        assert elapsed < 1.0
        log = b.wait_log("event=device.untrusted device=rv0001")
        assert "identity no longer enrolled (trust store changed)" in log
        # its redial is refused on node-b now: the key is pending there
        wait_until(lambda: len(b.call("pending")) == 1, 10, "rv0001's key pending on node-b")
        assert _status(b, "rv0001") != "connected"
        print("revoke on node-a -> session closed on node-b: %.3f s" % elapsed)


def test_an_approval_on_one_node_lets_a_device_pending_on_another_in(listener_factory, fleet, postgres, tmp_path):
    database = "approve_%d" % os.getpid()
    nodes = _cluster(listener_factory, postgres, tmp_path, database, ["node-a", "node-b"], fleet, [])
    a, b = nodes["node-a"], nodes["node-b"]
    fleet.keys(["ap0001"])
    with running(fleet.simulator(a.ssh_port, 1, "--name-prefix", "ap")):
        pending = wait_until(lambda: a.call("pending"), 20, "ap0001's key pending on node-a")
        fingerprint = pending[0]["fingerprint"]
        # node-b never saw the key: its own view has no entry (its default view lists every
        # node's keys once node-a's row is written, which is a race with this line)
        assert b.call("pending", scope="node") == []
        wait_until(
            lambda: postgres.psql("SELECT count(*) FROM pending_keys", database) == [["1"]], 10, "pending in PostgreSQL"
        )
        started = time.monotonic()
        change = b.call("approve", fingerprint=fingerprint, device="ap0001")
        assert change["device"] == "ap0001"
        a.wait_device("ap0001", "connected", timeout=10)
        print("approve on node-b -> ap0001 connected on node-a: %.3f s" % (time.monotonic() - started))
        wait_until(lambda: a.call("pending") == [], 5, "the pending entry dropped on node-a")
        assert "event=pending.enrolled fingerprint=%s" % fingerprint in a.log()
        assert _connected_on(nodes, "ap0001") == ["node-a"]


def test_an_enrollment_the_database_cannot_keep_is_refused_and_sessions_stay(
    listener_factory, fleet, postgres, tmp_path
):
    database = "down_%d" % os.getpid()
    nodes = _cluster(listener_factory, postgres, tmp_path, database, ["node-a"], fleet, ["dn0001"])
    a = nodes["node-a"]
    key = fleet.keys(["dn0002"])["dn0002"].export_public_key().decode().strip()
    with running(fleet.simulator(a.ssh_port, 1, "--name-prefix", "dn", wait_connected=1)):
        a.wait_device("dn0001", "connected")
        postgres.halt()
        try:
            with pytest.raises(CallHomeError) as info:
                a.call("enroll", device="dn0002", kind="ssh_host_keys", value=key)
            message = str(info.value)
            assert "cannot change the trust store postgresql://callhome:***@" in message, message
            assert "(nothing was changed)" in message
            assert postgres.password not in message
            # node-a's own poll of the trust store has failed too (it serves the trust as last
            # read): neither failure may end the session
            a.wait_log("event=trust.poll_failed", timeout=10)
            assert _status(a, "dn0001") == "connected"  # the session goes on
        finally:
            postgres.resume()
        # once the database is back the same enrollment is accepted, and is in the database
        wait_until(lambda: _try_enroll(a, key), 30, "the enrollment accepted again")
        assert postgres.psql("SELECT name FROM trust_devices ORDER BY name", database) == [["dn0001"], ["dn0002"]]
        assert _status(a, "dn0001") == "connected"


def _try_enroll(node: Any, key: str) -> bool:
    try:
        return bool(node.call("enroll", device="dn0002", kind="ssh_host_keys", value=key)["changed"])
    except CallHomeError:
        return False


def test_the_cli_sets_a_secret_reference_in_the_shared_store(listener_factory, fleet, postgres, tmp_path):
    """``callhome-listener secret`` goes through the running listener's control socket, so with
    a shared trust store the reference is in the database (no node reads a trust.json then)."""
    database = "secret_%d" % os.getpid()
    nodes = _cluster(listener_factory, postgres, tmp_path, database, ["node-a", "node-b"], fleet, ["zt0000"])
    status = nodes["node-b"].call("status")
    assert status["trust_store"] == "postgresql://callhome:***@127.0.0.1:%d/%s" % (postgres.port, database)
    assert "trust_store=postgresql://callhome:***@" in nodes["node-b"].log()  # event=listener.started
    res = nodes["node-b"].cli("secret", "set", "zt0001", "env:ZT_SECRET", "--allow-rotation")
    assert '"written_via": "listener"' in res.stdout, res.stdout
    row = "SELECT doc->'outbound_ssh'->>'secret', updated_by FROM trust_devices WHERE name = 'zt0001'"
    assert postgres.psql(row, database) == [["env:ZT_SECRET", "node-b"]]
    assert not (tmp_path / "node-b" / "trust.json").exists()
    nodes["node-a"].cli("secret", "unset", "zt0001")
    assert postgres.psql(row, database) == [], postgres.psql(row, database)  # a device with nothing else goes
