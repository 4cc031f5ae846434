# SPDX-License-Identifier: GPL-3.0-or-later
"""Device ownership on PostgreSQL (state.ownership): claims are a compare-and-set on an epoch,
the former owner hears of a takeover through LISTEN/NOTIFY, a claim on a stale epoch loses, and
the registry's rows are fenced by the epoch (a node that lost a device never writes it as
connected, nor overwrites the new owner's row with older news). Against a real server."""

from __future__ import annotations

import concurrent.futures
import logging
import time

from netconf_callhome.state.ownership import Claim
from netconf_callhome.state.postgres import SCHEMA_VERSION
from netconf_callhome.state.registry import CONNECTED, DISCONNECTED, KEY_MISMATCH, DeviceRecord

from .ownership_nodes import rows as _rows
from .ownership_nodes import wait_until as _wait


def test_the_schema_has_the_ownership_migration(postgres, pg_url, nodes):
    nodes("a")
    assert SCHEMA_VERSION >= 4
    assert _rows(postgres, pg_url, "SELECT description FROM schema_version WHERE version = 4")[0][0].startswith(
        "device ownership"
    )


def test_claims_increment_the_epoch_and_the_former_owner_hears_of_it(postgres, pg_url, nodes):
    a, b = nodes("node-a"), nodes("node-b")
    first = a.claim("r1")
    assert first == Claim("r1", True, "node-a", 1, "")
    assert _rows(postgres, pg_url, "SELECT node, epoch FROM device_owners WHERE name = 'r1'") == [["node-a", "1"]]

    started = time.monotonic()
    second = b.claim("r1")
    assert second == Claim("r1", True, "node-b", 2, "node-a")
    _wait(lambda: a.moved, 1.0, "node-a told that r1 moved")  # LISTEN/NOTIFY, not the reconcile poll
    device, node, epoch, at = a.moved[0]
    assert (device, node, epoch) == ("r1", "node-b", 2)
    assert at - started < 1.0
    assert "r1" not in a.ownership.owning and "r1" in b.ownership.owning
    assert b.moved == []  # the winner is not told to close its own session

    # and back: node-a claims again (the device redialled there), node-b hears of it
    assert a.claim("r1").epoch == 3
    _wait(lambda: b.moved, 1.0, "node-b told that r1 moved back")
    assert b.moved[0][:3] == ("r1", "node-a", 3)


def test_a_claim_on_a_stale_epoch_loses_to_the_current_owner(postgres, pg_url, nodes):
    a, b = nodes("node-a"), nodes("node-b")
    assert a.claim("r1").epoch == 1
    assert b.claim("r1").epoch == 2
    # node-a's claim based on the epoch it read before node-b's (1): the compare-and-set fails
    lost = a.store._run(a.ownership.try_claim("r1", expected=1))
    assert lost == Claim("r1", False, "node-b", 2)
    assert _rows(postgres, pg_url, "SELECT node, epoch FROM device_owners WHERE name = 'r1'") == [["node-b", "2"]]
    # reported through on_claimed like any claim, so the service closes its own session
    a.ownership.claimed.pop("r1", None)
    outcome = a.store._run(a.ownership._claim_reported("r1", expected=1))
    assert outcome is not None and not outcome.won and a.claims[-1] == outcome
    assert "r1" not in a.ownership.owning


def test_claims_racing_on_one_epoch_have_one_winner(postgres, pg_url, nodes):
    racers = [nodes("node-%d" % i) for i in range(3)]
    racers[0].claim("r1")  # epoch 1: every racer now claims on it
    for _round in range(5):
        base = int(_rows(postgres, pg_url, "SELECT epoch FROM device_owners WHERE name = 'r1'")[0][0])
        with concurrent.futures.ThreadPoolExecutor(len(racers)) as pool:
            outcomes = list(
                pool.map(lambda n: n.store._run(n.ownership.try_claim("r1", expected=base)), racers)
            )
        winners = [c for c in outcomes if c.won]
        assert len(winners) == 1, outcomes
        assert all(c.node == winners[0].node and c.epoch == base + 1 for c in outcomes)


def test_registry_rows_are_fenced_by_the_epoch(postgres, pg_url, nodes):
    a, b = nodes("node-a"), nodes("node-b")
    row = "SELECT status, coalesce(node, '-'), epoch, doc->>'peer' FROM devices WHERE name = 'r1'"
    a.claim("r1")  # epoch 1
    a.save(DeviceRecord("r1", status=CONNECTED, peer="10.0.0.1"))
    assert _rows(postgres, pg_url, row) == [["connected", "node-a", "1", "10.0.0.1"]]

    b.claim("r1")  # epoch 2: r1 moved to node-b
    # node-a's flush still says connected (it has not closed yet): not written
    a.save(DeviceRecord("r1", status=CONNECTED, peer="10.0.0.1"))
    assert _rows(postgres, pg_url, row) == [["connected", "node-a", "1", "10.0.0.1"]]
    b.save(DeviceRecord("r1", status=CONNECTED, peer="10.0.0.2"))
    assert _rows(postgres, pg_url, row) == [["connected", "node-b", "2", "10.0.0.2"]]
    # node-a's news of its ended session is older: not written
    a.save(DeviceRecord("r1", status=DISCONNECTED, peer="10.0.0.1"))
    assert _rows(postgres, pg_url, row) == [["connected", "node-b", "2", "10.0.0.2"]]
    # node-b's session ends: its own news is written
    b.save(DeviceRecord("r1", status=DISCONNECTED, peer="10.0.0.2"))
    assert _rows(postgres, pg_url, row) == [["disconnected", "-", "2", "10.0.0.2"]]
    # still older news from node-a (epoch 1) does not overwrite the newer epoch's row
    a.save(DeviceRecord("r1", status=DISCONNECTED, peer="10.0.0.1"))
    assert _rows(postgres, pg_url, row) == [["disconnected", "-", "2", "10.0.0.2"]]
    # a node that never held r1 records a refusal under the newest epoch it heard of
    c = nodes("node-c")
    c.save(DeviceRecord("r1", status=KEY_MISMATCH, peer="10.0.0.3"))
    assert _rows(postgres, pg_url, row) == [["key-mismatch", "-", "2", "10.0.0.3"]]


def test_a_device_nobody_claimed_is_written_as_before(postgres, pg_url, nodes):
    a = nodes("node-a")
    a.save(DeviceRecord("r9", status=CONNECTED))
    assert _rows(postgres, pg_url, "SELECT status, node, epoch FROM devices WHERE name = 'r9'") == [
        ["connected", "node-a", "0"]
    ]


def test_a_restarted_node_clears_its_own_connected_rows(postgres, pg_url, nodes):
    a = nodes("node-a")
    a.claim("r1")
    a.save(DeviceRecord("r1", status=CONNECTED))
    a.close()  # "killed": its row still says connected
    again = nodes("node-a")
    assert again.ownership.claimed == {"r1": 1}
    again.save(DeviceRecord("r1", status=DISCONNECTED))
    assert _rows(postgres, pg_url, "SELECT status FROM devices WHERE name = 'r1'") == [["disconnected"]]


def test_a_missed_notification_is_caught_by_the_reconcile(postgres, pg_url, nodes):
    a = nodes("node-a", reconcile_interval=0.3)
    a.claim("r1")
    # another node's claim made behind node-a's back, with no NOTIFY (as if node-a's listening
    # connection had been down when it was sent)
    _rows(postgres, pg_url, "UPDATE device_owners SET node = 'node-z', epoch = epoch + 1 WHERE name = 'r1'")
    _wait(lambda: a.moved, 3.0, "node-a's reconcile noticing r1 moved")
    assert a.moved[0][:3] == ("r1", "node-z", 2)


def test_a_released_device_is_not_closed_when_claimed_elsewhere(postgres, pg_url, nodes):
    a, b = nodes("node-a"), nodes("node-b")
    a.claim("r1")
    a.ownership.release("r1")  # its session ended on node-a
    _wait(lambda: "r1" not in a.ownership.owning, 2, "released")
    b.claim("r1")
    time.sleep(0.3)  # a notification would arrive within milliseconds
    assert a.moved == []


def test_a_claim_the_database_refuses_is_retried_when_it_is_back(postgres, pg_url, nodes, caplog):
    database = pg_url.rsplit("/", 1)[1]
    a = nodes("node-a", reconcile_interval=0.3)
    with caplog.at_level(logging.INFO, logger="netconf_callhome.registry"):
        try:
            postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS false" % database)
            postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % database)
            assert a.ownership.claim("r1").result(40) is None  # refused: no outcome, the session is kept
            assert "event=ownership.claim_failed device=r1" in caplog.text
            assert "(the session is kept; the claim is retried" in caplog.text
            assert postgres.password not in caplog.text
            assert a.claims == [] and "r1" in a.ownership.owning
        finally:
            postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % database)
        _wait(lambda: a.claims, 20, "the claim retried once the database is back")
    assert a.claims == [Claim("r1", True, "node-a", 1, "")]
    assert caplog.text.count("event=ownership.claim_failed") == 1  # once per outage
    assert "event=ownership.claim_recovered" in caplog.text
    assert _rows(postgres, pg_url, "SELECT node, epoch FROM device_owners") == [["node-a", "1"]]
