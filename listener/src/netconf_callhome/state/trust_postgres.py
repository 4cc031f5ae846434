# SPDX-License-Identifier: GPL-3.0-or-later
"""The trust store in PostgreSQL, shared by several listener nodes.

The same interface as the file store :class:`~netconf_callhome.policy.trust_store.TrustStore`
(``path``, ``load``, ``update``, ``stat_signature``), so :mod:`~netconf_callhome.policy.trust_ops`
(approve, enroll, revoke, outbound-ssh secrets) and :class:`~netconf_callhome.policy.verdicts.TrustPolicy`
work on it unchanged: one set of trust rules whatever the storage.

Tables (migration 3 of :mod:`~netconf_callhome.state.postgres`):

``trust_devices``     one row per device: its ``trust.json`` entry as JSONB (identities, credential
                      *references*, its outbound-ssh secret *reference*; never a secret: the
                      store's own validation refuses passwords)
``trust_identities``  one row per identity, canonical (``SHA256:...`` key fingerprint, certificate
                      fingerprint, ``cn:``/``serial:``... identity), primary key (kind, identity):
                      the database itself refuses one key enrolled for two devices
``trust_groups``      outbound-ssh groups
``trust_revision``    one row, incremented by every change

``update`` is the file store's read-modify-write under a lock: one transaction that locks the
revision row (``FOR UPDATE``: writers on every node queue there, as on the file's ``flock``),
reads the document, applies the mutation, validates, writes only the rows that changed and bumps
the revision. A mutation that raises rolls everything back.

Reads never wait on the database: a poller on the store's own loop reloads the document (one
repeatable-read transaction) when the revision moved; every change sends ``NOTIFY callhome_trust``
at commit, which wakes the poller at once on every node (``state.pg_listen``: the store's
``listener``, the node's one LISTEN connection, which the ownership fence shares; every
reconnection wakes the poller, which re-reads what was missed), and the poller also
checks every ``poll_interval`` (0.5 s) as the fallback. ``load`` returns a copy of the document,
``stat_signature`` its revision, and ``subscribe`` callbacks hear of every newer revision written
elsewhere (the listener reloads its policy then). While the database is unreachable the last
document read keeps being served (logged once, ``event=trust.poll_failed``), and ``update``
fails with :class:`TrustStoreError`: a trust change that cannot be made durable is refused.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from netconf_callhome.errors import ConfigError, TrustStoreError
from netconf_callhome.policy.trust_store import CANONICAL, FORMAT_VERSION, TrustData, validate
from netconf_callhome.state.pg_listen import ChannelListener
from netconf_callhome.state.postgres import PostgresConnection

log = logging.getLogger("netconf_callhome.trust")

CHANNEL = "callhome_trust"  # NOTIFY payload: the new revision

IDENTITY_KINDS = ("ssh_host_keys", "tls_fingerprints", "tls_identities")


class PostgresTrustStore(PostgresConnection):
    def __init__(
        self,
        url: str,
        *,
        node: str,
        poll_interval: float = 0.5,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        super().__init__(url, node=node, connect_timeout=connect_timeout, command_timeout=command_timeout)
        self.path = self.url  # what messages and log lines name (redacted)
        self.poll_interval = poll_interval
        self._poll_failing = False
        try:
            # (revision, document), replaced as one object: a reader never pairs a new revision
            # with an older document (TrustPolicy would then never reload the newer one).
            self._state: Tuple[int, TrustData] = self._run(self._read_snapshot())
        except BaseException:
            super().close()
            raise
        # A change on any node is NOTIFYed on CHANNEL (sent by its transaction, at commit): the
        # poller re-reads at once instead of at its next tick, which stays the fallback. The
        # service subscribes the ownership fence to this listener too: one LISTEN connection per
        # node (each one costs the database a transaction per notifying commit of any node).
        self._listeners: List[Callable[[int], None]] = []
        self.listener = ChannelListener(self, {CHANNEL: self._notified}, on_connect=self._wake_poller)
        self._poller = self._run(self._start_poller())

    # -- the file store's interface ------------------------------------------------------------

    def stat_signature(self) -> Tuple[int, int, int]:
        """The revision last read: cheap (no I/O), changes when any node changed the store."""
        return (self._state[0], 0, 0)

    @property
    def revision(self) -> int:
        return self._state[0]

    def load(self) -> TrustData:
        return copy.deepcopy(self._state[1])

    def update(self, mutate: Callable[[TrustData], Any], *, dry_run: bool = False) -> Tuple[Any, TrustData, TrustData]:
        """Apply ``mutate`` to the current document under the revision row's lock; write only
        what changed. Returns ``(mutate's result, before, after)`` like the file store."""
        try:
            result, before, after, revision = self._run(self._update(mutate, dry_run))
        except self._failures() as exc:
            raise TrustStoreError(
                "cannot change the trust store %s: %s (nothing was changed)" % (self.url, self._scrub(exc)),
                details={"url": self.url},
            ) from None
        if revision is not None and revision > self._state[0]:
            # Subscribers are not called for this node's own change: its caller applies it (the
            # listener's trust operations reload with the reason a closed session is given).
            self._state = (revision, copy.deepcopy(after))
        return result, before, after

    def _changed(self, revision: int) -> None:
        for callback in self._listeners:
            try:
                callback(revision)
            except Exception:  # a subscriber's bug must not stop the poller
                log.exception("event=trust.subscriber_error revision=%d", revision)

    def seed(self, data: TrustData, source: str) -> int:
        """Copy ``data`` (a node's ``trust.json``) in when the shared store has never been written
        (revision 0, nothing enrolled): the first node of a new cluster brings its enrollments.
        Returns how many devices were copied (0: the store already had its own)."""

        def mutate(current: TrustData) -> int:
            if current.get("devices") or current.get("outbound_ssh_groups") or self._state[0] != 0:
                return 0
            current["devices"] = copy.deepcopy(data.get("devices", {}))
            if data.get("outbound_ssh_groups"):
                current["outbound_ssh_groups"] = copy.deepcopy(data["outbound_ssh_groups"])
            return len(current["devices"])

        copied: int = self.update(mutate)[0]
        if copied:
            log.warning("event=trust.seeded url=%s from=%s devices=%d", self.url, source, copied)
        return copied

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(revision)`` (on the store's thread) whenever a newer document was read:
        the listener reloads its policy at once instead of at its next housekeeping tick."""
        self._listeners.append(callback)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._poller.cancel)
            self._loop.call_soon_threadsafe(self.listener.stop)
        super().close()

    # -- on the store's loop -------------------------------------------------------------------

    async def _start_poller(self) -> "asyncio.Task[None]":
        self._wake = asyncio.Event()
        self.listener.start()
        return asyncio.get_running_loop().create_task(self._poll())

    def _notified(self, payload: str) -> None:
        if int(payload) > self._state[0]:
            self._wake.set()

    async def _wake_poller(self) -> None:
        self._wake.set()  # (re)connected: changes notified meanwhile were missed

    async def _poll(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                async with self._pool.acquire() as conn:
                    revision = int(await conn.fetchval("SELECT revision FROM trust_revision"))
                    if revision != self._state[0]:
                        state = await self._snapshot(conn)
                        if state[0] > self._state[0]:  # an update() here may have been quicker
                            self._state = state
                            self._changed(state[0])
            except asyncio.CancelledError:
                raise
            except (self._failures() + (TrustStoreError,)) as exc:
                if not self._poll_failing:
                    log.error(
                        "event=trust.poll_failed url=%s error=%r (serving the trust store as last read)",
                        self.url,
                        self._scrub(exc),
                    )
                self._poll_failing = True
                continue
            if self._poll_failing:
                log.warning("event=trust.poll_recovered url=%s revision=%d", self.url, self._state[0])
                self._poll_failing = False

    async def _read_snapshot(self) -> Tuple[int, TrustData]:
        try:
            async with self._pool.acquire() as conn:
                return await self._snapshot(conn)
        except self._failures() as exc:
            raise TrustStoreError(
                "cannot read the trust store %s: %s" % (self.url, self._scrub(exc)), details={"url": self.url}
            ) from None

    async def _snapshot(self, conn: Any) -> Tuple[int, TrustData]:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await self._read(conn, lock=False)

    async def _read(self, conn: Any, *, lock: bool) -> Tuple[int, TrustData]:
        revision = int(
            await conn.fetchval("SELECT revision FROM trust_revision" + (" FOR UPDATE" if lock else ""))
        )
        data: TrustData = {"version": FORMAT_VERSION, "devices": {}}
        for name, doc in await conn.fetch("SELECT name, doc::text FROM trust_devices"):
            data["devices"][name] = json.loads(doc)
        groups = {name: json.loads(doc) for name, doc in await conn.fetch("SELECT name, doc::text FROM trust_groups")}
        if groups:
            data["outbound_ssh_groups"] = groups
        return revision, validate(data, source=self.url)

    async def _update(
        self, mutate: Callable[[TrustData], Any], dry_run: bool
    ) -> Tuple[Any, TrustData, TrustData, Optional[int]]:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                _revision, before = await self._read(conn, lock=True)
                after = copy.deepcopy(before)
                result = mutate(after)
                validate(after, source=self.url)
                if dry_run or _comparable(after) == _comparable(before):
                    return result, before, after, None
                await self._write(conn, before, after)
                revision = int(
                    await conn.fetchval(
                        "UPDATE trust_revision SET revision = revision + 1, updated_at = now() RETURNING revision"
                    )
                )
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(revision))
                return result, before, after, revision

    async def _write(self, conn: Any, before: TrustData, after: TrustData) -> None:
        old, new = before.get("devices", {}), after.get("devices", {})
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        gone = [name for name in changed if name not in new]
        kept = [name for name in changed if name in new]
        # Deletes first: an identity moved from one device to another in one change (revoke
        # there, enroll here) must leave its old row before the new one arrives.
        if gone:
            await conn.execute("DELETE FROM trust_devices WHERE name = ANY($1::text[])", gone)
        if kept:
            await conn.execute("DELETE FROM trust_identities WHERE device = ANY($1::text[])", kept)
            await conn.executemany(
                "INSERT INTO trust_devices (name, doc, updated_by) VALUES ($1, $2::jsonb, $3) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_at = now(), updated_by = excluded.updated_by",
                [(name, json.dumps(new[name], sort_keys=True), self.node) for name in kept],
            )
            rows = _identity_rows(new, kept)
            if rows:
                try:
                    await conn.executemany(
                        "INSERT INTO trust_identities (kind, identity, device) VALUES ($1, $2, $3)", rows
                    )
                except self._asyncpg.UniqueViolationError:
                    # validate() and trust_ops already refuse this; the constraint is the last word.
                    raise ConfigError("an identity would be enrolled for two devices; nothing was changed") from None
        old_groups, new_groups = before.get("outbound_ssh_groups", {}), after.get("outbound_ssh_groups", {})
        for name in set(old_groups) | set(new_groups):
            if name not in new_groups:
                await conn.execute("DELETE FROM trust_groups WHERE name = $1", name)
            elif old_groups.get(name) != new_groups[name]:
                await conn.execute(
                    "INSERT INTO trust_groups (name, doc, updated_by) VALUES ($1, $2::jsonb, $3) "
                    "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_at = now(), "
                    "updated_by = excluded.updated_by",
                    name,
                    json.dumps(new_groups[name], sort_keys=True),
                    self.node,
                )


def _identity_rows(devices: Dict[str, Any], names: List[str]) -> List[Tuple[str, str, str]]:
    rows: List[Tuple[str, str, str]] = []
    seen: Set[Tuple[str, str]] = set()
    for name in names:
        for kind in IDENTITY_KINDS:
            for value in devices[name].get(kind, []):
                key = (kind, CANONICAL[kind](value))
                if key not in seen:  # the same key listed twice (a line and its fingerprint)
                    seen.add(key)
                    rows.append((kind, key[1], name))
    return rows


def _comparable(data: TrustData) -> TrustData:
    """What is stored: an empty ``outbound_ssh_groups`` is no groups (the file keeps ``{}``,
    the tables keep nothing; either way there is nothing to write)."""
    if data.get("outbound_ssh_groups") == {}:
        data = dict(data)
        del data["outbound_ssh_groups"]
    return data
