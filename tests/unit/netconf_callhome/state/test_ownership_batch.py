# SPDX-License-Identifier: GPL-3.0-or-later
"""Batched ownership claims (state.ownership): the claims queued while a batch is in flight go
together in one statement (one transaction), each keeping its own compare-and-set: a claim that
loses inside a batch gets its own outcome while the others win, the former owners are notified,
and a claim the statement refuses fails alone. Against a real server (tests/peers/postgres_peer.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, List, Optional, Tuple

import asyncpg
import pytest

from netconf_callhome.state.ownership import BATCH_MAX, Claim

from .ownership_nodes import Node
from .ownership_nodes import rows as _rows
from .ownership_nodes import wait_until as _wait


def _claim_many(node: Node, claims: List[Tuple[str, Optional[int]]], timeout: float = 20) -> List[Any]:
    """Make every claim on the store's loop in one go (each claim's own coroutine, as the service
    makes them), so that all but the first queue behind a batch; their outcomes or errors."""

    async def many() -> List[Any]:
        return list(
            await asyncio.gather(
                *(node.ownership.try_claim(device, expected) for device, expected in claims), return_exceptions=True
            )
        )

    return node.store._run(many(), timeout)


def _writers(postgres: Any, url: str, names: List[str]) -> int:
    """How many transactions wrote these devices' current owner rows (distinct xmin)."""
    listed = ", ".join("'%s'" % n for n in names)
    sql = "SELECT count(DISTINCT xmin::text) FROM device_owners WHERE name IN (%s)" % listed
    return int(_rows(postgres, url, sql)[0][0])


def test_claims_queued_together_are_one_transaction(postgres, pg_url, nodes):
    a = nodes("node-a")
    devices = ["d%02d" % i for i in range(20)]
    before = a.ownership.batches
    outcomes = _claim_many(a, [(d, None) for d in devices])
    assert outcomes == [Claim(d, True, "node-a", 1, "") for d in devices]
    # made in one turn of the store's loop: all queued before the first batch left, one statement
    assert a.ownership.batches - before == 1
    assert _writers(postgres, pg_url, devices) == 1
    assert _rows(postgres, pg_url, "SELECT count(*), min(epoch), max(epoch), min(node) FROM device_owners") == [
        ["20", "1", "1", "node-a"]
    ]
    assert all(a.ownership.claimed[d] == 1 for d in devices)


def test_claims_made_while_a_batch_is_in_flight_go_in_the_next(postgres, pg_url, nodes):
    a = nodes("node-a")
    a.claim("r0")
    other: Any = a.store._run(asyncpg.connect(pg_url))
    try:
        # r0's row locked: the next batch (r0 alone) waits in flight, the others queue behind it
        a.store._run(other.execute("BEGIN; SELECT * FROM device_owners WHERE name = 'r0' FOR UPDATE"))
        first = a.ownership.claim("r0")
        _wait(
            lambda: _rows(postgres, pg_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] != "0",
            10,
            "the first batch waiting for r0's row lock",
        )
        queued = [a.ownership.claim("q%d" % i) for i in range(5)]
        time.sleep(0.2)
        assert not any(f.done() for f in [first] + queued)  # not sent beside the one in flight
        a.store._run(other.execute("COMMIT"))
        assert first.result(10) == Claim("r0", True, "node-a", 2, "")
        assert [f.result(10) for f in queued] == [Claim("q%d" % i, True, "node-a", 1, "") for i in range(5)]
    finally:
        a.store._run(other.close())
    assert a.ownership.batches == 3  # r0 at start, r0 again, the five queued together
    assert _writers(postgres, pg_url, ["q%d" % i for i in range(5)]) == 1


def test_a_single_claim_is_sent_at_once(postgres, pg_url, nodes):
    a = nodes("node-a")
    a.claim("warm")  # the pool's connection and the statement are prepared
    started = time.monotonic()
    assert a.claim("r1") == Claim("r1", True, "node-a", 1, "")
    assert time.monotonic() - started < 1.0  # no batching window: one round trip (coarse: a loaded CI)


def test_a_claim_losing_its_compare_and_set_in_a_batch_gets_its_own_outcome(postgres, pg_url, nodes):
    a, b = nodes("node-a"), nodes("node-b")
    for device in ("r1", "r2", "r3", "r4"):
        assert a.claim(device).epoch == 1
    assert b.claim("r3") == Claim("r3", True, "node-b", 2, "node-a")
    # node-a's claim on r3 is based on the epoch it had (1): stale; the others are current
    outcomes = _claim_many(a, [("first", None), ("r1", None), ("r2", 1), ("r3", 1), ("r4", None), ("new", None)])
    assert outcomes == [
        Claim("first", True, "node-a", 1, ""),
        Claim("r1", True, "node-a", 2, ""),
        Claim("r2", True, "node-a", 2, ""),
        Claim("r3", False, "node-b", 2),
        Claim("r4", True, "node-a", 2, ""),
        Claim("new", True, "node-a", 1, ""),
    ]
    assert _rows(postgres, pg_url, "SELECT name, node, epoch FROM device_owners ORDER BY name") == [
        ["first", "node-a", "1"],
        ["new", "node-a", "1"],
        ["r1", "node-a", "2"],
        ["r2", "node-a", "2"],
        ["r3", "node-b", "2"],
        ["r4", "node-a", "2"],
    ]
    assert a.ownership.heard["r3"] == 2 and a.ownership.claimed["r3"] == 1
    assert "r3" in b.ownership.owning and b.moved == []  # the loser's claim told nobody anything


def test_a_batch_losing_a_race_to_a_concurrent_claim(postgres, pg_url, nodes):
    """The compare-and-set against a claim committed while the batch waited for its row lock:
    the batch's statement re-checks the epoch of the row that claim committed and loses it."""
    a = nodes("node-a")
    for device in ("r1", "r2"):
        a.claim(device)
    other: Any = a.store._run(asyncpg.connect(pg_url))
    try:
        a.store._run(
            other.execute("BEGIN; UPDATE device_owners SET node = 'node-x', epoch = epoch + 1 WHERE name = 'r2'")
        )

        async def batch() -> List[Any]:
            return list(await asyncio.gather(a.ownership.try_claim("r1"), a.ownership.try_claim("r2")))

        pending = asyncio.run_coroutine_threadsafe(batch(), a.store._loop)
        _wait(
            lambda: _rows(postgres, pg_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] != "0",
            10,
            "the batch waiting for r2's row lock",
        )
        assert not pending.done()
        a.store._run(other.execute("COMMIT"))
        outcomes = pending.result(10)
    finally:
        a.store._run(other.close())
    assert outcomes == [Claim("r1", True, "node-a", 2, ""), Claim("r2", False, "node-x", 2)]
    assert _rows(postgres, pg_url, "SELECT name, node, epoch FROM device_owners ORDER BY name") == [
        ["r1", "node-a", "2"],
        ["r2", "node-x", "2"],
    ]


def test_the_former_owners_are_notified_by_a_batch(postgres, pg_url, nodes):
    a, b, c = nodes("node-a"), nodes("node-b"), nodes("node-c")
    b.claim("r1")
    c.claim("r2")
    started = time.monotonic()
    outcomes = _claim_many(a, [("r0", None), ("r1", None), ("r2", None)])
    assert outcomes == [
        Claim("r0", True, "node-a", 1, ""),
        Claim("r1", True, "node-a", 2, "node-b"),
        Claim("r2", True, "node-a", 2, "node-c"),
    ]
    _wait(lambda: b.moved and c.moved, 2.0, "node-b and node-c told that their devices moved")
    assert [m[:3] for m in b.moved] == [("r1", "node-a", 2)]
    assert [m[:3] for m in c.moved] == [("r2", "node-a", 2)]
    assert max(b.moved[0][3], c.moved[0][3]) - started < 2.0
    assert "r1" not in b.ownership.owning and "r2" not in c.ownership.owning
    assert a.moved == []


def test_a_claim_the_statement_refuses_fails_alone(postgres, pg_url, nodes):
    """A value PostgreSQL refuses (a NUL in text) fails that claim with the database's error; the
    claims batched with it are sent again one by one and win."""
    a = nodes("node-a")
    outcomes = _claim_many(a, [("first", None), ("ok1", None), ("bad\x00name", None), ("ok2", None)])
    assert outcomes[0] == Claim("first", True, "node-a", 1, "")
    assert outcomes[1] == Claim("ok1", True, "node-a", 1, "")
    assert isinstance(outcomes[2], asyncpg.PostgresError)
    assert outcomes[3] == Claim("ok2", True, "node-a", 1, "")
    assert _rows(postgres, pg_url, "SELECT name FROM device_owners ORDER BY name") == [["first"], ["ok1"], ["ok2"]]


def test_a_device_claimed_twice_before_a_batch_left_is_claimed_in_order(postgres, pg_url, nodes):
    a = nodes("node-a")
    outcomes = _claim_many(a, [("first", None), ("r1", None), ("r1", None), ("r1", 1)])
    # the second claim of r1 goes in the next batch, after the first's; the third is based on
    # epoch 1, which the second moved: it loses to this node's own newer claim
    assert outcomes[1:] == [
        Claim("r1", True, "node-a", 1, ""),
        Claim("r1", True, "node-a", 2, ""),
        Claim("r1", False, "node-a", 2),
    ]


def test_a_storm_is_sent_in_slices(postgres, pg_url, nodes):
    a = nodes("node-a")
    devices = ["s%04d" % i for i in range(BATCH_MAX + 10)]
    before = a.ownership.batches
    outcomes = _claim_many(a, [(d, None) for d in devices], timeout=60)
    assert all(isinstance(c, Claim) and c.won and c.epoch == 1 for c in outcomes)
    assert a.ownership.batches - before == 2  # BATCH_MAX, then the rest
    assert _rows(postgres, pg_url, "SELECT count(*) FROM device_owners") == [[str(len(devices))]]


def test_a_batch_the_database_refuses_fails_every_claim_of_it(postgres, pg_url, nodes, caplog):
    database = pg_url.rsplit("/", 1)[1]
    a = nodes("node-a", reconcile_interval=60)
    try:
        postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS false" % database)
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % database)
        before = a.ownership.batches
        outcomes = _claim_many(a, [("r1", None), ("r2", None), ("r3", None)], timeout=60)
        # one attempt for the batch: a database refusing connections is not asked once per claim
        assert a.ownership.batches - before == 1
    finally:
        postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % database)
    assert all(isinstance(o, a.store._failures()) for o in outcomes), outcomes
    assert len({str(o) for o in outcomes}) == 1  # the same error for each claim of the batch
    assert _rows(postgres, pg_url, "SELECT count(*) FROM device_owners") == [["0"]]


def test_claims_retried_after_an_outage_go_in_one_batch(postgres, pg_url, nodes):
    database = pg_url.rsplit("/", 1)[1]
    a = nodes("node-a", reconcile_interval=0.3)
    devices = ["r%d" % i for i in range(5)]
    try:
        postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS false" % database)
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % database)
        assert [f.result(40) for f in [a.ownership.claim(d) for d in devices]] == [None] * 5  # kept, retried
        failed = a.ownership.batches
    finally:
        postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % database)
    _wait(lambda: len(a.claims) == 5, 20, "the five claims retried once the database is back")
    assert sorted(a.claims, key=lambda c: c.device) == [Claim(d, True, "node-a", 1, "") for d in devices]
    # the retries of one reconcile tick together (a tick that found the database still away
    # would add one attempt for all five, not five)
    assert a.ownership.batches - failed <= 3
    assert _writers(postgres, pg_url, devices) == 1


@pytest.mark.parametrize("count", [1, 3])
def test_claims_through_the_service_path_report_each_outcome(postgres, pg_url, nodes, count):
    """``claim()`` (the service's call) reports every outcome through on_claimed, batched or not."""
    a, b = nodes("node-a"), nodes("node-b")
    b.claim("taken")
    futures = [a.ownership.claim("c%d" % i) for i in range(count)]
    futures.append(a.ownership.claim("taken"))
    outcomes = [f.result(10) for f in futures]
    assert [c.won for c in outcomes] == [True] * (count + 1)
    _wait(lambda: len(a.claims) == count + 1, 5, "every outcome reported")
    assert sorted(c.device for c in a.claims) == sorted(["c%d" % i for i in range(count)] + ["taken"])
    _wait(lambda: b.moved, 2.0, "node-b told that 'taken' moved")
