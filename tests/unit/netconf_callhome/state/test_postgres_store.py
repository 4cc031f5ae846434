# SPDX-License-Identifier: GPL-3.0-or-later
"""What only the PostgreSQL store has: schema migrations (fresh, from version N-1, nodes starting
at once, a newer schema refused), the node column, a database that refuses writes and comes back,
and a URL whose password never reaches a log or an error. Against a real server (conftest.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time

import asyncpg
import pytest

from netconf_callhome.errors import ConfigError, StateStoreError
from netconf_callhome.state.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore, migrate, redact_url
from netconf_callhome.state.registry import CONNECTED, DISCONNECTED, Registry, RegistryWriteError
from netconf_callhome.state.stores import open_store, sqlite_path


def _rows(postgres, url: str, sql: str):
    return postgres.psql(sql, database=url.rsplit("/", 1)[1])


# -- migrations ----------------------------------------------------------------------------------


def test_a_fresh_database_gets_every_migration_once(postgres, pg_url, caplog):
    with caplog.at_level(logging.INFO, logger="netconf_callhome.registry"):
        store = PostgresStore(pg_url, node="n1")
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    rows = _rows(postgres, pg_url, "SELECT version, node FROM schema_version ORDER BY version")
    assert rows == [[str(migration[0]), "n1"] for migration in MIGRATIONS]
    assert "event=state.migrated" in caplog.text and "from_version=0 to_version=%d" % SCHEMA_VERSION in caplog.text
    store.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netconf_callhome.registry"):
        PostgresStore(pg_url, node="n1").close()  # a restart migrates nothing
    assert "event=state.migrated" not in caplog.text and "schema_version=%d" % SCHEMA_VERSION in caplog.text
    assert len(_rows(postgres, pg_url, "SELECT version FROM schema_version")) == len(MIGRATIONS)


def test_a_database_at_version_n_minus_1_is_migrated_and_keeps_its_rows(postgres, pg_url):
    async def old_node() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            assert await migrate(conn, node="old", target=SCHEMA_VERSION - 1) == (0, SCHEMA_VERSION - 1)
            await conn.execute(
                "INSERT INTO devices (name, status, doc) VALUES ('r1', 'disconnected',"
                " '{\"name\": \"r1\", \"status\": \"disconnected\", \"connect_count\": 5}')"
            )
        finally:
            await conn.close()

    asyncio.run(old_node())
    store = PostgresStore(pg_url, node="new")
    assert store.schema_version == SCHEMA_VERSION
    devices = store.load()[0]
    assert [(d.name, d.connect_count) for d in devices] == [("r1", 5)]
    assert _rows(postgres, pg_url, "SELECT name, coalesce(node, 'NULL') FROM devices") == [["r1", "NULL"]]
    reg = Registry(store)
    reg.load()
    reg.update("r1", status=CONNECTED)
    reg.close()  # the new table (events) and column (node) are written
    assert _rows(postgres, pg_url, "SELECT device, event, node FROM events") == [["r1", CONNECTED, "new"]]
    assert _rows(postgres, pg_url, "SELECT version, node FROM schema_version ORDER BY version")[-1] == [
        str(SCHEMA_VERSION),
        "new",
    ]


def test_nodes_starting_at_once_migrate_once(postgres, pg_url):
    """Several nodes open a fresh database at the same moment: the advisory lock serialises the
    migration; every node starts, and each migration is applied exactly once."""
    nodes = 5
    barrier = threading.Barrier(nodes)

    def start(i: int) -> int:
        barrier.wait()
        store = PostgresStore(pg_url, node="n%d" % i)
        try:
            return store.schema_version
        finally:
            store.close()

    with concurrent.futures.ThreadPoolExecutor(nodes) as pool:
        assert list(pool.map(start, range(nodes))) == [SCHEMA_VERSION] * nodes
    rows = _rows(postgres, pg_url, "SELECT version FROM schema_version ORDER BY version")
    assert rows == [[str(migration[0])] for migration in MIGRATIONS]


def test_a_schema_newer_than_the_listener_is_refused(postgres, pg_url):
    PostgresStore(pg_url, node="n1").close()
    _rows(postgres, pg_url, "INSERT INTO schema_version (version, description) VALUES (%d, 'future')" % (SCHEMA_VERSION + 1))
    with pytest.raises(StateStoreError, match="newer than this listener's %d" % SCHEMA_VERSION):
        PostgresStore(pg_url, node="n1")


# -- nodes ---------------------------------------------------------------------------------------


def test_the_node_column_names_who_holds_the_session_and_an_older_node_cannot_overwrite_it(postgres, pg_url):
    a, b = Registry(PostgresStore(pg_url, node="node-a")), Registry(PostgresStore(pg_url, node="node-b"))
    a.load()
    b.load()
    a.update("r1", status=CONNECTED, peer="192.0.2.1:1")
    a.update("r2", status=CONNECTED)
    a.flush()
    held = "SELECT name, status, coalesce(node, '') FROM devices ORDER BY name"
    assert _rows(postgres, pg_url, held) == [["r1", CONNECTED, "node-a"], ["r2", CONNECTED, "node-a"]]
    # r1 calls node-b now: the new connection wins
    b.update("r1", status=CONNECTED, peer="192.0.2.1:2")
    b.flush()
    # node-a's late news of the session it lost does not overwrite node-b's
    a.update("r1", status=DISCONNECTED, last_error="replaced")
    a.update("r2", status=DISCONNECTED)  # r2 is node-a's own: written, and held by nobody
    a.flush()
    assert not a.has_unsaved()
    assert _rows(postgres, pg_url, held) == [["r1", CONNECTED, "node-b"], ["r2", DISCONNECTED, ""]]
    devices = {d.name: d for d in b.store.load()[0]}
    assert devices["r1"].peer == "192.0.2.1:2"
    # both nodes' status changes are in the one history, each with its node
    assert [(e.node, e.event) for e in b.history("r1")] == [
        ("node-a", CONNECTED),
        ("node-b", CONNECTED),
        ("node-a", DISCONNECTED),
    ]
    a.close()
    b.close()


# -- failures ------------------------------------------------------------------------------------


def test_a_database_refusing_writes_loses_nothing_and_the_flush_succeeds_after(postgres, pg_url):
    database = pg_url.rsplit("/", 1)[1]
    reg = Registry(PostgresStore(pg_url, node="n1"))
    reg.load()
    reg.update("r1", status=CONNECTED)
    reg.flush()
    postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS false" % database)
    postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % database)
    reg.update("r1", status=DISCONNECTED, last_error="gone")
    reg.update("r2", connect_count=4)
    for _attempt in range(2):
        with pytest.raises(RegistryWriteError) as info:
            reg.flush()
        assert reg.unsaved_count() == 3  # r1, r2, r1's status change
        assert postgres.password not in info.value.message and "callhome:***@" in info.value.message
    postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % database)
    reg.flush()  # the pool connects again by itself
    assert not reg.has_unsaved()
    assert _rows(postgres, pg_url, "SELECT name, status FROM devices ORDER BY name") == [
        ["r1", DISCONNECTED],
        ["r2", DISCONNECTED],
    ]
    assert [e.event for e in reg.history("r1")] == [CONNECTED, DISCONNECTED]
    reg.close()


def test_a_flush_on_the_event_loop_thread_pool_leaves_the_loop_running(pg_url):
    """The store's I/O runs on its own loop thread: the service's loop, handing the flush to an
    executor as it does, keeps ticking while the write waits on a locked row."""
    store = PostgresStore(pg_url, node="n1")
    reg = Registry(store)
    reg.load()
    reg.update("r1", status=CONNECTED)
    reg.flush()

    async def main() -> float:
        locker = await asyncpg.connect(pg_url)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT * FROM devices WHERE name = 'r1' FOR UPDATE")
        reg.update("r1", connect_count=9)
        loop = asyncio.get_running_loop()
        flushing = loop.run_in_executor(None, reg.flush)
        ticks, started = 0, time.monotonic()
        while time.monotonic() - started < 0.5:  # the flush is blocked on the row lock meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        assert not flushing.done()
        await tx.rollback()
        await locker.close()
        await asyncio.wait_for(flushing, 10)
        return ticks

    assert asyncio.run(main()) >= 20
    assert not reg.has_unsaved()
    reg.close()


def test_an_unreachable_database_is_a_clear_error_without_the_password(postgres):
    url = postgres.url("nosuchdb")
    with pytest.raises(StateStoreError) as info:
        PostgresStore(url, node="n1", connect_timeout=5)
    assert "cannot open the state database postgresql://callhome:***@127.0.0.1" in info.value.message
    assert "nosuchdb" in info.value.message and postgres.password not in info.value.message
    wrong = url.replace(postgres.password, "not-the-password")
    with pytest.raises(StateStoreError, match="password authentication failed") as info:
        PostgresStore(wrong, node="n1", connect_timeout=5)
    assert "not-the-password" not in info.value.message


def test_the_opened_log_line_shows_the_redacted_url(pg_url, postgres, caplog):
    with caplog.at_level(logging.INFO, logger="netconf_callhome.registry"):
        PostgresStore(pg_url, node="n1").close()
    assert "event=state.opened url=postgresql://callhome:***@127.0.0.1:%d/" % postgres.port in caplog.text
    assert postgres.password not in caplog.text


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:s3cret@db.example:5432/callhome", "postgresql://u:***@db.example:5432/callhome"),
        ("postgresql://u@db/callhome?sslmode=verify-full", "postgresql://u@db/callhome?sslmode=verify-full"),
        ("postgres://u:p%40ss@[2001:db8::1]/x?password=s3cret&sslmode=require", "postgres://u:***@[2001:db8::1]/x?password=***&sslmode=require"),
        ("postgresql://db/x", "postgresql://db/x"),
        ("postgresql://u:s3cret@db:notaport/x", "postgresql://u:***@db:notaport/x"),
        ("postgresql://u:s3cret@[::1/x", "postgresql://***"),  # unparseable: only the scheme
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_sqlite_urls(tmp_path):
    home = str(tmp_path)
    assert sqlite_path("sqlite:///var/lib/r.sqlite", default="d", home=home) == "/var/lib/r.sqlite"
    assert sqlite_path("sqlite:state/r.sqlite", default="d", home=home) == str(tmp_path / "state/r.sqlite")
    assert sqlite_path("sqlite:", default="d.sqlite", home=home) == "d.sqlite"
    with pytest.raises(ConfigError, match="names a local file"):
        sqlite_path("sqlite://host/r.sqlite", default="d", home=home)
    with pytest.raises(ConfigError, match=r"unsupported scheme") as info:
        open_store("mysql://u:s3cret@h/x", sqlite_default="d", home=home, node="n")
    assert "s3cret" not in info.value.message


def test_config_refuses_an_unknown_scheme_without_echoing_the_url():
    from netconf_callhome.config import ListenerConfig

    with pytest.raises(ConfigError, match="state_url: unsupported scheme 'mysql'") as info:
        ListenerConfig(state_url="mysql://u:s3cret@h/x", ssh_binds=[], tls_binds=[]).validate()
    assert "s3cret" not in info.value.message
    assert ListenerConfig(state_url="postgresql://u@h/x", ssh_binds=[], tls_binds=[]).validate().state_url
