# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: scale-out ownership of the devices this node holds (PostgreSQL state only).

Exactly one node owns a device's session (:mod:`netconf_callhome.state.ownership`): a verified
session claims the device, a closed one releases it. The claims' outcomes come back on the
store's thread and are handed to the event loop here; a claim lost to another node, or a device
moved to another node, closes this node's now stale session. With SQLite state there is no
ownership and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.state.ownership import Claim, Ownership
from netconf_callhome.state.pg_listen import ChannelListener
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.registry import Registry, RegistryStore

log = logging.getLogger("netconf_callhome.listener")


class DeviceOwnership:
    """Claims and releases this node's devices; closes the sessions another node took over."""

    def __init__(
        self, store: RegistryStore, registry: Registry, devices: LiveDevices, *, listener: Optional[ChannelListener] = None
    ) -> None:
        self.registry = registry
        self.devices = devices
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.ownership: Optional[Ownership] = None
        if isinstance(store, PostgresStore):
            # One LISTEN connection per node: the fence hears its channel on the shared trust
            # store's (each listening connection costs the database a transaction per notifying
            # commit of any node: docs/performance.md, run X4).
            self.ownership = Ownership(
                store, on_claimed=self._claimed_threadsafe, on_moved=self._moved_threadsafe, listener=listener
            )

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the claims' outcomes are handed to (the listener's, once it starts)."""
        self._loop = loop

    def claim(self, device: str) -> None:
        """A verified session is up: claim the device for this node (off the loop, on the
        store's; the outcome comes back through _claimed)."""
        if self.ownership is not None:
            self.ownership.claim(device)

    def release(self, device: str) -> None:
        """The device's last session here closed."""
        if self.ownership is not None:
            self.ownership.release(device)

    def close(self) -> None:
        if self.ownership is not None:
            self.ownership.close()

    def _claimed_threadsafe(self, claim: Claim) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._claimed, claim)

    def _moved_threadsafe(self, device: str, node: str, epoch: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._moved, device, node, epoch)

    def _claimed(self, claim: Claim) -> None:
        if claim.won:
            # Rewrite the row under the new epoch: a flush that ran before the claim was fenced off.
            if self.devices.connected(claim.device):
                self.registry.update(claim.device)
            log.info(
                "event=device.owned device=%s epoch=%d previous_node=%s", claim.device, claim.epoch, claim.previous or "-"
            )
            return
        self._close_device(
            claim.device,
            "ownership claim lost to node %s (epoch %d)" % (claim.node, claim.epoch),
            event="device.claim_lost",
            node=claim.node,
            epoch=claim.epoch,
        )

    def _moved(self, device: str, node: str, epoch: int) -> None:
        """Another node claimed a device this node owned: its session here is the stale one."""
        assert self.ownership is not None
        if self.ownership.claimed.get(device, 0) >= epoch:
            return  # this node claimed it again since (a newer session here)
        self._close_device(device, "moved to node %s" % node, event="device.moved", node=node, epoch=epoch)

    def _close_device(self, device: str, reason: str, *, event: str, node: str, epoch: int) -> None:
        if not self.devices.holds(device):
            return
        log.info("event=%s device=%s to_node=%s epoch=%d reason=%r", event, device, node, epoch, reason)
        self.devices.close_device(device, reason)
