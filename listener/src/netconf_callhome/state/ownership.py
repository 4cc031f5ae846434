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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Set

from netconf_callhome.state.pg_listen import ChannelListener
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.registry import CONNECTED

log = logging.getLogger("netconf_callhome.registry")

CHANNEL = "callhome_owner"


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
        store._run(self._load())
        self.listener = ChannelListener(store, {CHANNEL: self._notified}, on_connect=self._reconcile)
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
            self.store._loop.call_soon_threadsafe(self.listener.stop)

    # -- on the store's loop -------------------------------------------------------------------

    def _release(self, device: str) -> None:
        self.owning.discard(device)
        self._retry.discard(device)

    async def _start(self) -> "asyncio.Task[None]":
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
        read in the same transaction); a claim on a stale epoch loses to the current owner."""
        async with self.store._pool.acquire() as conn:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT node, epoch FROM device_owners WHERE name = $1", device)
                base = (int(row["epoch"]) if row is not None else 0) if expected is None else expected
                previous = str(row["node"]) if row is not None else ""
                if base == 0 and row is None:
                    epoch = await conn.fetchval(
                        "INSERT INTO device_owners (name, node, epoch) VALUES ($1, $2, 1) "
                        "ON CONFLICT (name) DO NOTHING RETURNING epoch",
                        device,
                        self.node,
                    )
                else:
                    # Read committed: a concurrent claim's UPDATE makes this one wait, then re-check
                    # "epoch = base" against the committed row, which no longer matches.
                    epoch = await conn.fetchval(
                        "UPDATE device_owners SET node = $2, epoch = epoch + 1, claimed_at = now() "
                        "WHERE name = $1 AND epoch = $3 RETURNING epoch",
                        device,
                        self.node,
                        base,
                    )
                if epoch is None:
                    winner = await conn.fetchrow("SELECT node, epoch FROM device_owners WHERE name = $1", device)
                    node, won_epoch = (str(winner["node"]), int(winner["epoch"])) if winner else ("", 0)
                    self.heard[device] = max(self.heard.get(device, 0), won_epoch)
                    return Claim(device, False, node, won_epoch)
                epoch = int(epoch)
                await conn.execute(
                    "SELECT pg_notify($1, $2)",
                    CHANNEL,
                    json.dumps({"device": device, "node": self.node, "epoch": epoch}),
                )
        self.claimed[device] = epoch
        self.heard[device] = max(self.heard.get(device, 0), epoch)
        return Claim(device, True, self.node, epoch, previous if previous != self.node else "")

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
            for device in list(self._retry):
                if device in self.owning:
                    await self._claim_reported(device)
            try:
                await self._reconcile()
            except self.store._failures():
                pass  # the claims' and the registry's own failure logs say the database is away
