# SPDX-License-Identifier: GPL-3.0-or-later
"""The PostgreSQL store's pool releases connections without asyncpg's reset query (one round trip
saved per claim and per flush, bench/state_store.py); what the reset was for still holds: a
transaction left open is rolled back, and the pooled connections keep no session state."""

from __future__ import annotations

from netconf_callhome.state.postgres import PostgresStore, _session_kept
from netconf_callhome.state.registry import CONNECTED, DeviceRecord


def test_the_pool_skips_the_reset_query_and_still_rolls_back(pg_url):
    store = PostgresStore(pg_url, node="n1")
    try:
        assert store._pool._reset is _session_kept

        async def leave_a_transaction_open() -> None:
            conn = await store._pool.acquire()
            tr = conn.transaction()
            await tr.start()
            await conn.execute("CREATE TABLE scratch (x int)")
            await store._pool.release(conn)  # never committed: the pool rolls it back

        async def tables() -> int:
            async with store._pool.acquire() as conn:
                assert not conn.is_in_transaction()
                return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'"))

        store._run(leave_a_transaction_open())
        assert store._run(tables()) == 0
        for _round in range(3):  # writes go on over the reused connections
            store.save([DeviceRecord(name="r1", status=CONNECTED)], [], [])
        assert [d.name for d in store.load()[0]] == ["r1"]
    finally:
        store.close()
