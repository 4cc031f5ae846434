# SPDX-License-Identifier: GPL-3.0-or-later
"""The registry's store in PostgreSQL, shared by several listener nodes (``state_url:
postgresql://...``).

Same interface as ``SQLiteStore`` (:class:`~netconf_callhome.state.registry.RegistryStore`):
devices (with the ``node`` that holds each one's session), pending keys, and an event history.

The driver is asyncpg (asyncio). The registry calls its store from a writer thread, never on the
service's event loop (``run_in_executor``), so this store runs asyncpg on an event loop of its own,
in one daemon thread: the service's loop never waits on the database, and a database that hangs
holds only the writer thread (bounded by ``command_timeout``).

Schema: created and migrated by the listener itself. ``schema_version`` has one row per applied
migration; :data:`MIGRATIONS` are numbered and applied in order, all in one transaction under a
transaction-scoped advisory lock (:data:`MIGRATION_LOCK`), so that nodes starting at once do not
race: the second one waits for the first's transaction, then finds the schema current. A database
newer than this listener (a later version's node migrated it) is refused rather than written to.

Credentials in the URL are never logged or put in an error: :func:`redact_url` is what appears.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import threading
import time
import urllib.parse
from typing import Any, Coroutine, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Type, TypeVar

from netconf_callhome.errors import ConfigError, StateStoreError
from netconf_callhome.state.registry import (
    CONNECTED,
    HISTORY_MAX_AGE,
    DeviceRecord,
    PendingKey,
    RegistryEvent,
    RegistryWriteError,
    _event,
    _from_doc,
)

log = logging.getLogger("netconf_callhome.registry")

_T = TypeVar("_T")

# Key of the advisory lock held while migrating ("nchc" + 1: one number all nodes agree on).
MIGRATION_LOCK = 0x6E636863_0001

# (version, what it does, SQL). Append only: a released migration is never edited, a change is a
# new number. Version N-1 databases are migrated by the next node that starts.
MIGRATIONS: Tuple[Tuple[int, str, str], ...] = (
    (
        1,
        "devices and pending keys",
        """
        CREATE TABLE devices (
            name       text PRIMARY KEY,
            status     text NOT NULL,
            doc        jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE pending_keys (
            fingerprint text PRIMARY KEY,
            doc         jsonb NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        2,
        "the node holding each session; event history",
        """
        ALTER TABLE devices ADD COLUMN node text;
        CREATE INDEX devices_node ON devices (node) WHERE node IS NOT NULL;
        CREATE TABLE events (
            id     bigserial PRIMARY KEY,
            at     timestamptz NOT NULL,
            node   text NOT NULL,
            device text NOT NULL,
            event  text NOT NULL,
            doc    jsonb NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_device_at ON events (device, at);
        CREATE INDEX events_at ON events (at);
        """,
    ),
    (
        3,
        "the trust store: devices, their identities, outbound-ssh groups, a revision",
        """
        CREATE TABLE trust_devices (
            name       text PRIMARY KEY,
            doc        jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL DEFAULT ''
        );
        CREATE TABLE trust_identities (
            kind     text NOT NULL,
            identity text NOT NULL,
            device   text NOT NULL REFERENCES trust_devices (name) ON DELETE CASCADE,
            PRIMARY KEY (kind, identity)
        );
        CREATE INDEX trust_identities_device ON trust_identities (device);
        CREATE TABLE trust_groups (
            name       text PRIMARY KEY,
            doc        jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL DEFAULT ''
        );
        CREATE TABLE trust_revision (
            one        boolean PRIMARY KEY DEFAULT true CHECK (one),
            revision   bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO trust_revision (revision) VALUES (0);
        """,
    ),
    (
        4,
        "device ownership: the node owning each device's session and its epoch; rows fenced by it",
        """
        CREATE TABLE device_owners (
            name       text PRIMARY KEY,
            node       text NOT NULL,
            epoch      bigint NOT NULL,
            claimed_at timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE devices ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
        """,
    ),
    (
        5,
        "cluster nodes: the address each node's node-to-node channel answers on, a heartbeat",
        """
        CREATE TABLE nodes (
            name         text PRIMARY KEY,
            address      text NOT NULL,
            started_at   timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# A node writes the rows of the sessions it holds, fenced by the ownership epoch (migration 4,
# state.ownership): $6 is the epoch this node writes under (its own claim for a connected row).
# - "connected" is written only by the device's current owner: the row of device_owners names this
#   node at exactly that epoch (a node whose claim lost, or that was taken over, writes nothing);
#   a device nobody ever claimed (epoch 0, no owner row) is written as before.
# - anything else never overwrites a row another node holds now, nor a row of a newer epoch
#   (the former owner's late "disconnected" after the device moved).
_UPSERT_DEVICE = """
INSERT INTO devices (name, status, node, doc, epoch, updated_at)
SELECT $1::text, $2::text, $3::text, $4::jsonb, $6::bigint, now()
WHERE $2::text <> '%(connected)s' OR coalesce(
    (SELECT o.node = $5::text AND o.epoch = $6::bigint FROM device_owners o WHERE o.name = $1::text),
    $6::bigint = 0)
ON CONFLICT (name) DO UPDATE SET status = excluded.status, node = excluded.node, doc = excluded.doc,
    epoch = excluded.epoch, updated_at = now()
WHERE devices.epoch <= excluded.epoch
    AND (excluded.status = '%(connected)s' OR devices.node IS NULL OR devices.node = $5::text)
""" % {"connected": CONNECTED}
_UPSERT_PENDING = """
INSERT INTO pending_keys (fingerprint, doc, updated_at) VALUES ($1, $2::jsonb, now())
ON CONFLICT (fingerprint) DO UPDATE SET doc = excluded.doc, updated_at = now()
"""
_INSERT_EVENT = """
INSERT INTO events (at, node, device, event, doc) VALUES (to_timestamp($1::float8), $2, $3, $4, $5::jsonb)
"""


class EpochFence(Protocol):
    """The epoch a device row is written under (implemented by state.ownership.Ownership)."""

    def write_epoch(self, device: str, status: str) -> int: ...


def redact_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query parameter) replaced by ``***``:
    the only spelling of a state URL that may appear in a log line or an error."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _at, hostinfo = netloc.rpartition("@")
            netloc = "%s:***@%s" % (userinfo.split(":", 1)[0], hostinfo)
        query = urllib.parse.urlencode(
            [
                (k, "***" if k.lower() in ("password", "passfile", "sslpassword") else v)
                for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*/",
        )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        # Unparseable (a bad port, say): show only the scheme rather than risk the secret.
        return url.split(":", 1)[0] + "://***"


async def migrate(conn: Any, *, node: str = "", target: Optional[int] = None) -> Tuple[int, int]:
    """Bring the schema to ``target`` (default: the newest); returns (version before, after).

    One transaction under :data:`MIGRATION_LOCK`: a node that starts while another migrates waits
    for it, then sees the schema current. ``target`` below the newest is for tests (a database
    "from version N-1")."""
    want = SCHEMA_VERSION if target is None else target
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), node text NOT NULL DEFAULT '')"
        )
        current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if current > SCHEMA_VERSION:
            raise StateStoreError(
                "the state database's schema is at version %d, newer than this listener's %d: "
                "upgrade this node to the release the others run" % (current, SCHEMA_VERSION),
                details={"schema_version": current, "supported": SCHEMA_VERSION},
            )
        for version, description, sql in MIGRATIONS:
            if current < version <= want:
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, description, node) VALUES ($1, $2, $3)",
                    version,
                    description,
                    node,
                )
        after = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
    return current, after


async def _session_kept(conn: Any) -> None:
    """Nothing to reset: see :func:`_no_reset_round_trip`."""


def _no_reset_round_trip(asyncpg: Any) -> Dict[str, Any]:
    """Pool arguments that skip asyncpg's reset query on every release (``pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL``, one more round trip per claim and per flush: measured in
    bench/state_store.py). The pooled connections keep no session state (no SET, no session
    advisory lock: migrations use a transaction-scoped one; LISTEN has its own connection,
    state.pg_listen); an open transaction is still rolled back by the pool before the hook.
    asyncpg before 0.30 has no ``reset`` argument and keeps its default."""
    if "reset" in inspect.signature(asyncpg.create_pool).parameters:
        return {"reset": _session_kept}
    return {}


class PostgresConnection:
    """A pool of asyncpg connections on an event loop of its own thread, with the schema migrated.

    Opening connects, migrates the schema and raises :class:`StateStoreError` (with the redacted
    URL) when the database cannot be reached or used. The stores (registry, trust) build on it.
    """

    def __init__(
        self,
        url: str,
        *,
        node: str,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        self.url = redact_url(url)  # the only form kept in attributes, logs and errors
        self.node = node
        self._secret = urllib.parse.urlsplit(url).password or ""
        self._dsn = url  # for LISTEN connections (state.pg_listen); never logged, never in an error
        self.command_timeout = command_timeout
        self._pool: Any = None
        self.schema_version = 0
        try:
            import asyncpg  # the optional extra: pip install 'netconf-callhome[postgresql]'
        except ImportError:
            raise ConfigError(
                "state_url %s needs the asyncpg driver: pip install 'netconf-callhome[postgresql]'" % self.url
            ) from None
        self._asyncpg = asyncpg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="callhome-postgres", daemon=True)
        self._thread.start()
        try:
            before, self.schema_version = self._run(self._open(url, connect_timeout), connect_timeout * 2 + 60)
        except BaseException:
            self._stop_loop()
            raise
        if before != self.schema_version:
            log.info(
                "event=state.migrated url=%s node=%s from_version=%d to_version=%d",
                self.url,
                node,
                before,
                self.schema_version,
            )
        log.info("event=state.opened url=%s node=%s schema_version=%d", self.url, node, self.schema_version)

    # -- the private loop ----------------------------------------------------------------------

    def _run(self, coro: "Coroutine[Any, Any, _T]", timeout: Optional[float] = None) -> _T:
        """Run ``coro`` on the store's loop and wait for it (from a writer thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout if timeout is not None else self.command_timeout + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _scrub(self, exc: BaseException) -> str:
        """The driver's error text, never with the password in it."""
        text = str(exc) or type(exc).__name__
        return text.replace(self._secret, "***") if self._secret else text

    def _failures(self) -> Tuple[Type[BaseException], ...]:
        pg = self._asyncpg
        # InternalClientError: asyncpg on a connection the server has just closed (its own state
        # machine trips before it notices the close); the pool then replaces it (see _save).
        return (
            pg.PostgresError,
            pg.InterfaceError,
            pg.InternalClientError,
            OSError,
            asyncio.TimeoutError,
            concurrent.futures.TimeoutError,
        )

    async def _open(self, url: str, connect_timeout: float) -> Tuple[int, int]:
        try:
            self._pool = await self._asyncpg.create_pool(
                url,
                min_size=1,
                max_size=2,
                timeout=connect_timeout,
                command_timeout=self.command_timeout,
                server_settings={"application_name": ("callhome-listener %s" % self.node)[:63]},
                **_no_reset_round_trip(self._asyncpg),
            )
            async with self._pool.acquire() as conn:
                return await migrate(conn, node=self.node)
        except StateStoreError:
            raise
        except self._failures() as exc:
            if self._pool is not None:
                self._pool.terminate()
            raise StateStoreError(
                "cannot open the state database %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            if self._pool is not None:
                self._run(asyncio.wait_for(self._pool.close(), 10), 15)
        except Exception as exc:  # noqa: BLE001  stopping must not fail; say what happened
            log.warning("event=state.close_failed url=%s error=%r", self.url, self._scrub(exc))
            if self._pool is not None:
                self._loop.call_soon_threadsafe(self._pool.terminate)
        finally:
            self._stop_loop()


class PostgresStore(PostgresConnection):
    """:class:`~netconf_callhome.state.registry.RegistryStore` on PostgreSQL (asyncpg).

    A refused write raises :class:`RegistryWriteError`; the registry keeps the changes and
    retries (``FlushRetry``).
    """

    def __init__(
        self,
        url: str,
        *,
        node: str,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        self._pruned_at = 0.0
        # The ownership epochs this node writes under (state.ownership sets it: PostgreSQL only).
        self.fence: Optional[EpochFence] = None
        super().__init__(url, node=node, connect_timeout=connect_timeout, command_timeout=command_timeout)

    # -- RegistryStore -------------------------------------------------------------------------

    def load(self) -> "Tuple[List[DeviceRecord], List[PendingKey]]":
        return self._run(self._load())

    async def _load(self) -> "Tuple[List[DeviceRecord], List[PendingKey]]":
        try:
            async with self._pool.acquire() as conn:
                devices = await conn.fetch("SELECT doc::text FROM devices")
                pending = await conn.fetch("SELECT doc::text FROM pending_keys")
        except self._failures() as exc:
            raise StateStoreError(
                "cannot read the state database %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None
        return [_from_doc(DeviceRecord, r[0]) for r in devices], [_from_doc(PendingKey, r[0]) for r in pending]

    def save(
        self,
        devices: Iterable[DeviceRecord],
        pending: Iterable[PendingKey],
        dropped_pending: Iterable[str],
        events: Sequence[RegistryEvent] = (),
    ) -> None:
        try:
            self._run(self._save(list(devices), list(pending), list(dropped_pending), list(events)))
        except self._failures() as exc:
            raise RegistryWriteError(
                "cannot write the registry %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None

    async def _save(
        self,
        devices: List[DeviceRecord],
        pending: List[PendingKey],
        dropped: List[str],
        events: List[RegistryEvent],
    ) -> None:
        try:
            await self._write(devices, pending, dropped, events)
        except self._failures():
            # The database restarted or dropped us: connections the pool holds may be dead
            # without knowing it yet. Replace them all on the next acquire (the retry's).
            await self._pool.expire_connections()
            raise

    async def _write(
        self,
        devices: List[DeviceRecord],
        pending: List[PendingKey],
        dropped: List[str],
        events: List[RegistryEvent],
    ) -> None:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                if devices:
                    await conn.executemany(
                        _UPSERT_DEVICE,
                        [
                            (
                                d.name,
                                d.status,
                                self.node if d.status == CONNECTED else None,
                                json.dumps(d.to_dict()),
                                self.node,
                                self.fence.write_epoch(d.name, d.status) if self.fence is not None else 0,
                            )
                            for d in devices
                        ],
                    )
                if pending:
                    # the node that saw the key, for ``pending`` on any node (list_pending)
                    await conn.executemany(
                        _UPSERT_PENDING, [(p.fingerprint, json.dumps(dict(p.to_dict(), node=self.node))) for p in pending]
                    )
                if dropped:
                    await conn.execute("DELETE FROM pending_keys WHERE fingerprint = ANY($1::text[])", dropped)
                if events:
                    await conn.executemany(
                        _INSERT_EVENT, [(e.at, self.node, e.device, e.event, json.dumps(e.detail())) for e in events]
                    )
                now = time.time()
                if now - self._pruned_at > 3600:
                    await conn.execute("DELETE FROM events WHERE at < to_timestamp($1::float8)", now - HISTORY_MAX_AGE)
                    self._pruned_at = now

    def find_pending(self, fingerprints: Sequence[str]) -> Optional[PendingKey]:
        """A pending key any node recorded (the first of ``fingerprints``, spellings of one key,
        found): a key refused on node A can be approved on node B."""
        try:
            return self._run(self._find_pending(list(fingerprints)))
        except self._failures() as exc:
            raise StateStoreError(
                "cannot read the pending keys from %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None

    async def _find_pending(self, fingerprints: List[str]) -> Optional[PendingKey]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT fingerprint, doc::text FROM pending_keys WHERE fingerprint = ANY($1::text[])", fingerprints
            )
        found = {r[0]: r[1] for r in rows}
        for fingerprint in fingerprints:
            if fingerprint in found:
                return _from_doc(PendingKey, found[fingerprint])  # type: ignore[no-any-return]
        return None

    def list_pending(self) -> List[Dict[str, Any]]:
        """Every node's pending keys, as their documents with the ``node`` that recorded each
        (None for a row written before nodes were recorded): ``pending`` on any node."""
        try:
            return self._run(self._list_pending())
        except self._failures() as exc:
            raise StateStoreError(
                "cannot read the pending keys from %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None

    async def _list_pending(self) -> List[Dict[str, Any]]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT doc::text FROM pending_keys")
        docs = [json.loads(r[0]) for r in rows]
        for doc in docs:
            doc.setdefault("node", None)
        return docs

    def history(self, device: Optional[str] = None, limit: int = 100) -> List[RegistryEvent]:
        try:
            return self._run(self._history(device, limit))
        except self._failures() as exc:
            raise StateStoreError(
                "cannot read the event history from %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None

    async def _history(self, device: Optional[str], limit: int) -> List[RegistryEvent]:
        query = (
            "SELECT extract(epoch FROM at)::float8, node, device, event, doc::text FROM events"
            + (" WHERE device = $2" if device is not None else "")
            + " ORDER BY id DESC LIMIT $1"
        )
        args: List[Any] = [limit] + ([device] if device is not None else [])
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(query, *args)
        return [_event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in reversed(rows)]
