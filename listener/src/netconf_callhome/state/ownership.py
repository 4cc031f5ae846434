# SPDX-License-Identifier: GPL-3.0-or-later
"""Exactly one node owns a device's session (scale-out on PostgreSQL).

``device_owners`` (migration 4) has one row per device: the node that owns (or last owned) its
session and an **epoch**, incremented by every claim. When a node accepts a verified session it
claims the device: a compare-and-set in one transaction (read the epoch E, ``UPDATE ... SET
epoch = E + 1 WHERE epoch = E``); two nodes claiming at once cannot both succeed, the second
finds the epoch moved and its claim lost. The winning transaction also sends
``NOTIFY callhome_owner`` (delivered at commit): the former owner, listening on its store's loop,
learns that the device moved and closes its session ("moved to node X"). A node whose claim lost
closes its own session.

The registry's device rows are fenced by the same epoch (``state.postgres._UPSERT_DEVICE``): a
``connected`` row is written only by the owner at its current epoch, and older news never
overwrites newer. So the database never says a device is connected on two nodes, whatever the
timing of flushes.

Notifications are not durable (a node whose listening connection dropped misses them): on every
reconnection, and every ``reconcile_interval`` seconds, the node re-reads the rows of the devices
it believes it owns and closes those another node has claimed since.

Everything runs on the registry store's own loop (``PostgresStore``): the service's loop only
schedules a claim and gets the outcome back through its callbacks (which the service hands to its
loop with ``call_soon_threadsafe``).

Claims are batched (a call-home storm is hundreds of claims a second): a claim made while no
batch is in flight is sent at once, with no waiting window (with the claims made in the same turn
of the store's loop, if any); the claims made while one is in flight queue and go together in the
next, one statement (:data:`_CLAIM_BATCH`) over arrays, one round trip and one
commit for all of them. The statement is the same compare-and-set per device (each device's own
epoch read and conditional ``UPDATE``; a device whose epoch moved loses, the others of the batch
win), and sends each winner's ``NOTIFY`` in the same transaction. Besides the round trips, a
batch saves the database's listening backends a wake-up each: every committed transaction with a
notification wakes every backend listening in the database (each node's LISTEN connection,
one per node: :mod:`~netconf_callhome.state.pg_listen`, shared with the trust store), and each
such wake-up is a transaction of its own (``pg_stat_database.xact_commit``; docs/performance.md,
runs X3 and X4).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from netconf_callhome.state.pg_listen import ChannelListener
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.registry import CONNECTED

log = logging.getLogger("netconf_callhome.registry")

CHANNEL = "callhome_owner"

# At most this many claims in one statement (a storm's queue is sent in slices of it).
BATCH_MAX = 500

# The compare-and-set of a batch of claims, in one statement (one implicit transaction: its
# NOTIFYs are delivered at its commit). $1 the devices (no duplicates), $2 the epoch each claim is
# based on (NULL: the current one, read by this statement), $3 this node, $4 the channel.
# Per device, as the single claim did: no row and base 0 -> INSERT epoch 1 (ON CONFLICT DO
# NOTHING: a concurrent first claim wins); a row -> UPDATE ... WHERE epoch = base (read committed:
# an UPDATE that waited for a concurrent claim re-checks "epoch = base" against the row it
# committed, which no longer matches: this claim lost). ``won`` is NULL for a lost claim.
_CLAIM_BATCH = """
WITH req AS (
    SELECT r.name, r.expected, r.ord FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(name, expected, ord)
), cur AS (
    SELECT req.name, req.ord, o.node AS previous,
           CASE WHEN req.expected IS NULL THEN coalesce(o.epoch, 0) ELSE req.expected END AS base,
           o.epoch IS NULL AS absent
    FROM req LEFT JOIN device_owners o ON o.name = req.name
), ins AS (
    INSERT INTO device_owners (name, node, epoch)
    SELECT cur.name, $3, 1 FROM cur WHERE cur.absent AND cur.base = 0 ORDER BY cur.name
    ON CONFLICT (name) DO NOTHING
    RETURNING name, epoch
), upd AS (
    UPDATE device_owners o SET node = $3, epoch = o.epoch + 1, claimed_at = now()
    FROM cur WHERE o.name = cur.name AND NOT cur.absent AND o.epoch = cur.base
    RETURNING o.name, o.epoch
), won AS (
    SELECT name, epoch FROM ins UNION ALL SELECT name, epoch FROM upd
)
SELECT cur.name, cur.previous, won.epoch AS won,
       CASE WHEN won.epoch IS NOT NULL THEN
           pg_notify($4, json_build_object('device', cur.name, 'node', $3::text, 'epoch', won.epoch)::text)
       END AS notified
FROM cur LEFT JOIN won ON won.name = cur.name
ORDER BY cur.ord
"""


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim: ``won`` with this node's new ``epoch``; else the owner that won."""

    device: str
    won: bool
    node: str  # the owner after the claim (this node when won)
    epoch: int
    previous: str = ""  # the former owner (won only; "" for a device nobody held)


class Ownership:
    """Claims, the fence the registry writes under, and the former owner's notification.

    ``on_claimed(claim)`` is called (on the store's thread) with every claim's outcome;
    ``on_moved(device, node, epoch)`` when a device this node owns was claimed by ``node``.
    A claim that cannot reach the database is retried every ``reconcile_interval`` seconds
    (the session is kept meanwhile: a database that is down does not end sessions).
    """

    def __init__(
        self,
        store: PostgresStore,
        *,
        on_claimed: Callable[[Claim], None],
        on_moved: Callable[[str, str, int], None],
        reconcile_interval: float = 5.0,
        listener: Optional[ChannelListener] = None,
    ) -> None:
        self.store = store
        self.node = store.node
        self.on_claimed = on_claimed
        self.on_moved = on_moved
        self.reconcile_interval = reconcile_interval
        self.claimed: Dict[str, int] = {}  # device -> epoch of this node's latest winning claim
        self.heard: Dict[str, int] = {}  # device -> newest epoch known (any node's)
        self.owning: Set[str] = set()  # devices this node owns now (a session, a winning claim)
        self._retry: Set[str] = set()  # claims the database did not take: tried again
        self._failing = False
        # Claims waiting for the next batch, in order: (device, expected epoch, its outcome).
        self._queue: List[Tuple[str, Optional[int], "asyncio.Future[Claim]"]] = []
        self._sending = False  # a batch is in flight (on the store's loop)
        self.batches = 0  # batches sent (tests, benchmarks)
        store._run(self._load())
        # The node's one LISTEN connection when given (the shared trust store's: service.py),
        # else one of its own; either way the callbacks run on this store's loop.
        self._own_listener = listener is None
        self.listener = listener if listener is not None else ChannelListener(store)
        self._subscription = self.listener.subscribe(
            CHANNEL, self._notified, on_connect=self._reconcile, loop=store._loop
        )
        self._task = store._run(self._start())
        store.fence = self

    # -- the fence (any thread: dict reads) ----------------------------------------------------

    def write_epoch(self, device: str, status: str) -> int:
        """The epoch a device row is written under: this node's own claim for a connected row;
        for other news, that claim if it ever made one (so its news of a session that has since
        moved is older than the new owner's), else the newest epoch it heard of."""
        if status == CONNECTED or device in self.claimed:
            return self.claimed.get(device, 0)
        return self.heard.get(device, 0)

    # -- from the service's loop ---------------------------------------------------------------

    def claim(self, device: str) -> concurrent.futures.Future[Optional[Claim]]:
        """Claim ``device`` for this node (non-blocking; the outcome also goes to ``on_claimed``)."""
        return asyncio.run_coroutine_threadsafe(self._claim_reported(device), self.store._loop)

    def release(self, device: str) -> None:
        """This node's session with ``device`` ended: it no longer owns it (the row keeps the
        epoch, so a later claim by any node is newer)."""
        self.store._loop.call_soon_threadsafe(self._release, device)

    def close(self) -> None:
        if not self.store._loop.is_closed():
            self.store._loop.call_soon_threadsafe(self._task.cancel)
            if self._own_listener:
                self.store._loop.call_soon_threadsafe(self.listener.stop)
        if not self._own_listener:
            self.listener.unsubscribe(self._subscription)  # the listener is its store's to stop

    # -- on the store's loop -------------------------------------------------------------------

    def _release(self, device: str) -> None:
        self.owning.discard(device)
        self._retry.discard(device)

    async def _start(self) -> "asyncio.Task[None]":
        if self._own_listener:
            self.listener.start()
        return asyncio.get_running_loop().create_task(self._watch())

    async def _load(self) -> None:
        async with self.store._pool.acquire() as conn:
            for name, node, epoch in await conn.fetch("SELECT name, node, epoch FROM device_owners"):
                self.heard[name] = int(epoch)
                if node == self.node:
                    # Its rows (a node killed while connected) may still say connected: its own
                    # "disconnected" at start must pass the fence.
                    self.claimed[name] = int(epoch)

    async def _claim_reported(self, device: str, expected: Optional[int] = None) -> Optional[Claim]:
        self.owning.add(device)
        try:
            claim = await self.try_claim(device, expected)
        except self.store._failures() as exc:
            # The server may have restarted: replace the pool's connections before the retry.
            await self.store._pool.expire_connections()
            self._retry.add(device)
            if not self._failing:
                log.error(
                    "event=ownership.claim_failed device=%s url=%s error=%r (the session is kept; the claim is "
                    "retried every %.0f s)",
                    device,
                    self.store.url,
                    self.store._scrub(exc),
                    self.reconcile_interval,
                )
            self._failing = True
            return None
        self._retry.discard(device)
        if self._failing:
            log.warning("event=ownership.claim_recovered url=%s", self.store.url)
            self._failing = False
        if not claim.won:
            self.owning.discard(device)
        self.on_claimed(claim)
        return claim

    async def try_claim(self, device: str, expected: Optional[int] = None) -> Claim:
        """The compare-and-set. ``expected``: the epoch the claim is based on (default: the one
        read by the same statement); a claim on a stale epoch loses to the current owner.

        Batched: sent at once when no batch is in flight, else with the claims queued meanwhile
        (see the module's docstring). A batch the database refuses raises its error in each of
        its claims."""
        fut: "asyncio.Future[Claim]" = asyncio.get_running_loop().create_future()
        self._queue.append((device, expected, fut))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_batches())
        return await fut

    async def _send_batches(self) -> None:
        """Send the queue, batch after batch, until it is empty (one batch in flight at a time)."""
        try:
            while self._queue:
                batch: List[Tuple[str, Optional[int], "asyncio.Future[Claim]"]] = []
                rest: List[Tuple[str, Optional[int], "asyncio.Future[Claim]"]] = []
                seen: Set[str] = set()
                for item in self._queue:
                    # A device claimed twice before a batch left: the second claim goes in the
                    # next batch, based on the first's outcome (as two claims one after the other).
                    if item[0] in seen or len(batch) >= BATCH_MAX:
                        rest.append(item)
                    else:
                        seen.add(item[0])
                        batch.append(item)
                self._queue = rest
                live = [item for item in batch if not item[2].done()]  # a cancelled claim is not sent
                if not live:
                    continue
                try:
                    claims = await self._claim_batch([(device, expected) for device, expected, _f in live])
                except asyncio.CancelledError:
                    for _d, _e, fut in live + self._queue:
                        fut.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001  each claim's caller gets the error (see try_claim)
                    if len(live) > 1 and self._claim_error(exc):
                        # The statement refused one claim's data (or lost a deadlock with another
                        # node's batch): each claim alone, so each caller gets its own outcome, as
                        # before batching. A database that is away fails the batch as a whole.
                        for item in live:
                            await self._send_alone(item)
                        continue
                    for _d, _e, fut in live:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_d, _e, fut), claim in zip(live, claims):
                    if not fut.done():
                        fut.set_result(claim)
        finally:
            self._sending = False

    async def _send_alone(self, item: Tuple[str, Optional[int], "asyncio.Future[Claim]"]) -> None:
        device, expected, fut = item
        try:
            claim = (await self._claim_batch([(device, expected)]))[0]
        except Exception as exc:  # noqa: BLE001  the caller's error
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(claim)

    def _claim_error(self, exc: BaseException) -> bool:
        """An error of the statement and its values (SQLSTATE class 22 data exception, 23
        integrity, 40 transaction rollback: a deadlock with another node's batch), which another
        batch may not have; not the database being away, refusing connections or the login
        (each claim alone would only try it once more per claim)."""
        return isinstance(exc, self.store._asyncpg.PostgresError) and str(getattr(exc, "sqlstate", ""))[:2] in (
            "22",
            "23",
            "40",
        )

    async def _claim_batch(self, items: List[Tuple[str, Optional[int]]]) -> List[Claim]:
        """One batch's statement; the claims' outcomes in the order of ``items``."""
        self.batches += 1
        names = [device for device, _e in items]
        async with self.store._pool.acquire() as conn:
            rows: List[Any] = await conn.fetch(_CLAIM_BATCH, names, [e for _d, e in items], self.node, CHANNEL)
            lost = [str(r["name"]) for r in rows if r["won"] is None]
            winners: Dict[str, Tuple[str, int]] = {}
            if lost:
                # Who won instead (a claim committed since the statement's snapshot: a read of its own)
                for r in await conn.fetch(
                    "SELECT name, node, epoch FROM device_owners WHERE name = ANY($1::text[])", lost
                ):
                    winners[str(r["name"])] = (str(r["node"]), int(r["epoch"]))
        claims: List[Claim] = []
        for r in rows:
            device = str(r["name"])
            if r["won"] is None:
                node, won_epoch = winners.get(device, ("", 0))
                self.heard[device] = max(self.heard.get(device, 0), won_epoch)
                claims.append(Claim(device, False, node, won_epoch))
                continue
            epoch = int(r["won"])
            previous = str(r["previous"]) if r["previous"] is not None else ""
            self.claimed[device] = epoch
            self.heard[device] = max(self.heard.get(device, 0), epoch)
            claims.append(Claim(device, True, self.node, epoch, previous if previous != self.node else ""))
        return claims

    def _notified(self, payload: str) -> None:
        doc = json.loads(payload)
        device, node, epoch = str(doc["device"]), str(doc["node"]), int(doc["epoch"])
        self.heard[device] = max(self.heard.get(device, 0), epoch)
        if node != self.node:
            self._lost(device, node, epoch)

    def _lost(self, device: str, node: str, epoch: int) -> None:
        """``node`` owns ``device`` at ``epoch``: if that is newer than this node's claim, this
        node's session (if it still has one) is the former owner's and must end."""
        if device in self.owning and epoch > self.claimed.get(device, 0):
            self.owning.discard(device)
            self._retry.discard(device)
            log.info("event=ownership.moved device=%s to_node=%s epoch=%d", device, node, epoch)
            self.on_moved(device, node, epoch)

    async def _reconcile(self) -> None:
        """Re-read the owners of the devices this node believes it owns (missed notifications)."""
        mine = [d for d in self.owning if d not in self._retry]
        if not mine:
            return
        async with self.store._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT name, node, epoch FROM device_owners WHERE name = ANY($1::text[])", mine
            )
        for name, node, epoch in rows:
            self.heard[name] = max(self.heard.get(name, 0), int(epoch))
            if node != self.node:
                self._lost(name, node, int(epoch))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            # All at once: after an outage they go in batches, not one round trip each.
            retry = [device for device in self._retry if device in self.owning]
            if retry:
                await asyncio.gather(*(self._claim_reported(device) for device in retry))
            try:
                await self._reconcile()
            except self.store._failures():
                pass  # the claims' and the registry's own failure logs say the database is away
