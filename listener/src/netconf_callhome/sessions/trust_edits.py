# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: trust changes and their effect on the devices connected now.

The rules of a change are :mod:`netconf_callhome.policy.trust_ops`' (the CLI and the ``enroll``
module go through the same functions); this module runs them for the control operations
(``approve``, ``enroll``, ``revoke``, ``secret``) and, after any change of the trust store
(these operations, a zero-touch enrollment, another node's or an editor's write), applies it:
exactly the live sessions whose identity is no longer trusted are closed, and the pending
entries whose key is now enrolled are dropped.

The trust writes run in a thread (asyncio.to_thread): with state_url on PostgreSQL they are a
database transaction that may wait on other nodes' writers or an unreachable server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional, Sequence

from netconf_callhome.errors import ConfigError, DeviceNotFoundError
from netconf_callhome.fingerprints import cert_fingerprint_spellings
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_store import TrustStore
from netconf_callhome.policy.verdicts import TrustPolicy
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.registry import Registry

log = logging.getLogger("netconf_callhome.listener")


class TrustEdits:
    """The trust operations of the control channel, and every reload's effect on live sessions."""

    def __init__(self, trust_store: TrustStore, policy: TrustPolicy, registry: Registry, devices: LiveDevices) -> None:
        self.trust_store = trust_store
        self.policy = policy
        self.registry = registry
        self.devices = devices

    async def approve(
        self,
        fingerprint: str,
        device: str = "",
        *,
        replace: bool = False,
        credentials: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        pending = self.registry.get_pending(fingerprint)
        # A certificate fingerprint in any accepted notation, and entries recorded before the
        # one notation (SHA256:AB:..), are found too.
        spellings = [fingerprint] + list(cert_fingerprint_spellings(fingerprint))
        for spelling in spellings[1:] if pending is None else []:
            pending = self.registry.get_pending(spelling)
            if pending is not None:
                fingerprint = spelling
                break
        store = self.registry.store
        if pending is None and isinstance(store, PostgresStore):
            # Scale-out: the key may have been refused on another node (its pending entry is shared).
            pending = await asyncio.to_thread(store.find_pending, spellings)
            if pending is not None:
                fingerprint = pending.fingerprint
        if pending is None:
            raise DeviceNotFoundError(
                "no pending key with fingerprint %s (see 'callhome-listener pending')" % fingerprint
            )
        claimed = pending.claimed_device
        if not device and claimed and self.devices.connected(claimed):
            # The device the key *claims* holds a verified session right now: the claim is
            # the presenter's word (a certificate subject anyone can write), and approving it by
            # default would pin a forged key for a working device in one command.
            raise ConfigError(
                "the key %s claims device %r, which is connected with a verified key right now; "
                "approving it would trust a second key for a working device. If the device was "
                "really replaced, name it: approve %s --device %s" % (fingerprint, claimed, fingerprint, claimed),
                details={"device": claimed, "fingerprint": fingerprint},
            )
        change = await asyncio.to_thread(
            trust_ops.approve_pending, self.trust_store, pending, device, replace=replace, credentials=credentials
        )
        self.registry.drop_pending(fingerprint)
        self.changed(change.device, "key replaced")
        log.info(
            "event=key.approved device=%s fingerprint=%s transport=%s replaced=%s",
            change.device,
            fingerprint,
            pending.transport,
            change.replaced,
        )
        return change.to_dict()

    async def enroll(
        self,
        device: str,
        kind: str,
        value: str,
        *,
        replace: bool = False,
        observed: bool = False,
        credentials: Optional[Dict[str, Any]] = None,
        dry_run: bool = False,
    ) -> Dict[str, Any]:
        """Enroll an identity given by an operator or a module (trust_ops' rules: an observed key
        never silently joins or replaces another enrolled one)."""
        change = await asyncio.to_thread(
            trust_ops.enroll,
            self.trust_store,
            device,
            kind,
            value,
            replace=replace,
            observed=observed,
            credentials=credentials,
            dry_run=dry_run,
        )
        if not dry_run and change.changed:
            if change.fingerprint:
                self.registry.drop_pending(change.fingerprint)
            self.changed(device, "key replaced")
            log.info("event=key.enrolled device=%s kind=%s fingerprint=%s", device, kind, change.fingerprint)
        return change.to_dict()

    async def revoke(self, device: str, identity: Optional[str] = None, *, dry_run: bool = False) -> Dict[str, Any]:
        change = await asyncio.to_thread(trust_ops.revoke, self.trust_store, device, identity, dry_run=dry_run)
        if not dry_run:
            self.changed(device, "key revoked")
            log.info("event=key.revoked device=%s identity=%s changed=%s", device, identity or "all", change.changed)
        return change.to_dict()

    async def outbound_ssh_secret(
        self,
        action: str,
        name: str,
        reference: Optional[str],
        *,
        device_ids: Sequence[str] = (),
        allow_rotation: bool = False,
        dry_run: bool = False,
    ) -> Dict[str, Any]:
        """Set or remove an outbound-ssh secret reference (the control op ``secret``); ``dry_run``
        computes the change without writing it (the enroll module's check mode); ``list``: every
        reference in the store this listener uses (the shared one on PostgreSQL), never values."""
        if action == "list":
            return await asyncio.to_thread(trust_ops.outbound_ssh_secrets, self.trust_store)
        if action in ("set", "unset"):
            result = await asyncio.to_thread(
                trust_ops.set_outbound_ssh_secret,
                self.trust_store,
                name,
                reference,
                allow_rotation=allow_rotation,
                dry_run=dry_run,
            )
        else:
            result = await asyncio.to_thread(
                trust_ops.set_outbound_ssh_group_secret,
                self.trust_store,
                name,
                list(device_ids) if action == "group" else None,
                reference,
                allow_rotation=allow_rotation,
                dry_run=dry_run,
            )
        if result["changed"] and not dry_run:
            self.reload()
            log.info("event=secret.changed action=%s name=%s", action, name)  # the reference only, never a value
        result["trust_store"] = self.trust_store.path
        return result

    def changed(self, device: str, reason: str) -> None:
        """After a trust operation on ``device``: reload the policy and apply it (``reason`` is
        what that device's session, if no longer trusted, is closed with)."""
        if self.policy.reload():
            self._apply(device, reason)

    def reload(self) -> bool:
        """Re-read the trust store if it changed; then apply the change to live sessions and
        pending entries. Every reload goes through here: housekeeping, SIGHUP, the control op,
        another node's change, and the trust operations."""
        changed = self.policy.reload()
        if changed:
            self._apply()
        return changed

    def _apply(self, device: str = "", reason: str = "") -> None:
        """A new trust store is in force. Close exactly the live sessions whose identity it no
        longer trusts (a pinned key or certificate removed, the certificate identity a TLS
        session was accepted under revoked); every other device keeps its session. Drop the
        pending entries whose key is now enrolled, whichever way it was enrolled."""
        for live in self.devices.live():
            if self.policy.still_trusts(live.device, live.transport, live.fingerprint, live.identities):
                continue
            why = reason if reason and live.device == device else "identity no longer enrolled (trust store changed)"
            log.info(
                "event=device.untrusted device=%s transport=%s fingerprint=%s reason=%r",
                live.device,
                live.transport,
                live.fingerprint,
                why,
            )
            live.close(why)
        for pending in self.registry.pending():
            if self.policy.enrolled_pending(
                pending.transport, pending.fingerprint, pending.public_key, pending.identities
            ):
                self.registry.drop_pending(pending.fingerprint)
                log.info("event=pending.enrolled fingerprint=%s transport=%s", pending.fingerprint, pending.transport)
