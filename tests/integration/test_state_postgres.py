# SPDX-License-Identifier: GPL-3.0-or-later
"""The listener process with ``state_url: postgresql://...``: simulated devices call home, their
registry rows (with the node holding each session) and status changes appear in a real
PostgreSQL (tests/peers/postgres_peer.py), and a restarted listener reads them back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import running, wait_until

NODE = "node-a"


def _config(path: Path, url: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("state_url: %s\nnode_name: %s\n" % (url, NODE))
    os.chmod(path, 0o600)  # it holds the database password
    return path


def test_a_listener_on_postgresql_records_devices_there(listener_factory, fleet, postgres, tmp_path):
    database = "listener_%d" % os.getpid()
    url = postgres.create_database(database)
    home = tmp_path / "home"
    config = _config(tmp_path / "listener.yml", url)
    names = ["sim0001", "sim0002"]
    fleet.enroll(home / "trust.json", names)
    lst = listener_factory("--config", str(config), home=home).start()
    log = lst.wait_log("event=state.opened")
    assert "url=postgresql://callhome:***@127.0.0.1:%d/%s node=%s schema_version=" % (postgres.port, database, NODE) in log
    assert postgres.password not in log
    assert not (home / "registry.sqlite").exists()  # nothing went to the embedded store

    rows = "SELECT name, status, coalesce(node, '-'), doc->>'transport' FROM devices ORDER BY name"
    with running(fleet.simulator(lst.ssh_port, 2, wait_connected=2)):
        for name in names:
            lst.wait_device(name, "connected")
        wait_until(
            lambda: postgres.psql(rows, database) == [[n, "connected", NODE, "ssh"] for n in names],
            20,
            "both devices connected on %s in PostgreSQL" % NODE,
            detail=lambda: "rows %s" % postgres.psql(rows, database),
        )
        events = postgres.psql("SELECT device, event, node, doc->>'previous' FROM events ORDER BY id", database)
        assert sorted(events) == [[n, "connected", NODE, "disconnected"] for n in names]
        status = lst.call("status")
        assert status["devices"]["connected"] == 2
    # the devices went away: no node holds their sessions any more
    wait_until(
        lambda: [r[1:3] for r in postgres.psql(rows, database)] == [["disconnected", "-"]] * 2,
        30,
        "both devices disconnected in PostgreSQL",
        detail=lambda: "rows %s\nlog:\n%s" % (postgres.psql(rows, database), lst.log()[-2000:]),
    )
    history = "SELECT device, event FROM events ORDER BY id"
    wait_until(lambda: len(postgres.psql(history, database)) == 4, 10, "the disconnections in the history")
    lst.stop()

    # another start (this node restarted) reads the registry back from the database
    again = listener_factory("--config", str(config), home=home).start()
    assert {d["name"]: d["status"] for d in again.call("devices")} == {n: "disconnected" for n in names}
    assert postgres.psql("SELECT count(*) FROM schema_version", database)[0][0] != "0"


def test_two_nodes_share_the_database_and_the_holder_of_a_session_wins(listener_factory, fleet, postgres, tmp_path):
    """Two listener processes (node-a, node-b) on one database. sim0001 calls node-a, then (a
    second connection, as after a network change) node-b: the row follows to node-b. node-a's
    session ends (the device moved), and node-a's news does not overwrite node-b's connected row."""
    database = "nodes_%d" % os.getpid()
    url = postgres.create_database(database)
    nodes = {}
    for name in ("node-a", "node-b"):
        home = tmp_path / name
        config = tmp_path / ("%s.yml" % name)
        config.write_text("state_url: %s\nnode_name: %s\n" % (url, name))
        os.chmod(config, 0o600)
        fleet.enroll(home / "trust.json", ["sim0001"])
        nodes[name] = listener_factory("--config", str(config), home=home).start()
    row = "SELECT status, coalesce(node, '-') FROM devices WHERE name = 'sim0001'"
    # Dials once: node-a closes its session when node-b claims sim0001 (test_scale_out_ownership),
    # and a device redialling both nodes would move back and forth.
    on_a = fleet.simulator(nodes["node-a"].ssh_port, 1, "--no-reconnect", wait_connected=1)
    try:
        wait_until(lambda: postgres.psql(row, database) == [["connected", "node-a"]], 20, "sim0001 held by node-a")
        with running(fleet.simulator(nodes["node-b"].ssh_port, 1, wait_connected=1)):
            wait_until(lambda: postgres.psql(row, database) == [["connected", "node-b"]], 20, "sim0001 held by node-b")
            on_a.stop()
            wait_until(  # node-a's own view; by default every node shows the shared one (node-b's)
                lambda: nodes["node-a"].call("device", device="sim0001", scope="node")["status"] == "disconnected",
                20,
                "node-a's session with sim0001 ended",
            )
            # node-a has flushed its news (its history row is there) and the row is still node-b's
            history = "SELECT node, event FROM events WHERE device = 'sim0001' ORDER BY id"
            wait_until(
                # in the history, not necessarily last: node-b's connected row may be flushed after it
                lambda: ["node-a", "disconnected"] in postgres.psql(history, database),
                20,
                "node-a's disconnection in the history",
                detail=lambda: str(postgres.psql(history, database)),
            )
            assert postgres.psql(row, database) == [["connected", "node-b"]]
    finally:
        on_a.stop()


def test_postgresql_down_mid_run_loses_no_registry_write(listener_factory, fleet, postgres, tmp_path):
    """The database stops while the listener runs: sessions go on, the device's disconnection is
    kept in memory (event=registry.flush_failed, once), and written when the database is back
    (event=registry.flush_recovered)."""
    database = "restart_%d" % os.getpid()
    url = postgres.create_database(database)
    home = tmp_path / "home"
    fleet.enroll(home / "trust.json", ["sim0001", "sim0002"])
    lst = listener_factory("--config", str(_config(tmp_path / "listener.yml", url)), home=home).start()
    rows = "SELECT name, status FROM devices ORDER BY name"
    sim1 = fleet.simulator(lst.ssh_port, 1, wait_connected=1)
    try:
        wait_until(lambda: postgres.psql(rows, database) == [["sim0001", "connected"]], 20, "sim0001 in PostgreSQL")
        postgres.halt()
        try:
            sim1.stop()
            lst.wait_device("sim0001", "disconnected")
            # a device calling while the database is away gets its session all the same
            with running(fleet.simulator(lst.ssh_port, 2, wait_connected=2)):
                lst.wait_device("sim0002", "connected")
                log = lst.wait_log("event=registry.flush_failed", timeout=20)
                assert "cannot write the registry postgresql://callhome:***@" in log
                assert postgres.password not in log
        finally:
            postgres.resume()
        lst.wait_log("event=registry.flush_recovered", timeout=60)
        wait_until(
            lambda: postgres.psql(rows, database) == [["sim0001", "disconnected"], ["sim0002", "disconnected"]],
            30,
            "the writes made while PostgreSQL was down",
            detail=lambda: "rows %s\nlog:\n%s" % (postgres.psql(rows, database), lst.log()[-3000:]),
        )
        assert lst.log().count("event=registry.flush_failed") == 1  # one line per failure streak
        history = postgres.psql("SELECT device, event FROM events ORDER BY id", database)
        # every status change made while the database was away is there, in order (sim0001
        # called again with the second simulator)
        assert [e[1] for e in history if e[0] == "sim0001"] == ["connected", "disconnected"] * 2
        assert [e[1] for e in history if e[0] == "sim0002"] == ["connected", "disconnected"]
    finally:
        sim1.stop()


def test_a_listener_refuses_to_start_when_the_database_is_unreachable(listener_factory, postgres, tmp_path):
    url = postgres.url("no_such_database")
    lst = listener_factory("--config", str(_config(tmp_path / "listener.yml", url)), home=tmp_path / "home")
    with pytest.raises(RuntimeError, match="listener exited"):
        lst.start(timeout=30)
    log = lst.log()
    assert "cannot open the state database postgresql://callhome:***@127.0.0.1:%d/no_such_database" % postgres.port in log
    assert postgres.password not in log
