# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: the devices that hold a session now, and what the listener remembers of them
between connections.

One table for both kinds of call home: a device's NETCONF session (SSH or TLS, one per device: a
device that calls again replaces its older connection) and its RESTCONF connection
(:class:`~netconf_callhome.sessions.restconf_sessions.RestconfSessions`). Beside them, the
address each device last called from per transport (the *hint* the trust policy uses to name a
refused key's likely owner) and the certificate identities a TLS handshake was accepted under
(an identity-enrolled device has no pinned fingerprint: after a trust change its session is
re-checked against them). No registry, no logging: who records what is
:mod:`netconf_callhome.sessions.recorder`'s.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from netconf_callhome.netutil import peer_ip
from netconf_callhome.protocol.restconf import RestconfConnection
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.sessions.restconf_sessions import TRANSPORT as RESTCONF
from netconf_callhome.sessions.restconf_sessions import RestconfSessions

# Certificate identities of accepted TLS handshakes, by fingerprint (a cache bounded in size: an
# identity-enrolled session is re-checked against them on every trust change).
TLS_IDENTITY_CACHE = 4096


@dataclass(frozen=True)
class LiveSession:
    """One open session as a trust change sees it: what identifies it, and how to close it."""

    device: str
    transport: str
    fingerprint: str
    identities: Sequence[str]
    close: Callable[[str], None]


class LiveDevices:
    """Which devices hold a session, on which transport; their last addresses and identities."""

    def __init__(self, tls_identity_cache: int = TLS_IDENTITY_CACHE) -> None:
        self.sessions: Dict[str, HeldSession] = {}  # NETCONF (SSH, TLS), by device
        self.restconf = RestconfSessions()
        self._hints: Dict[Tuple[str, str], str] = {}
        self._tls_identities: "collections.OrderedDict[str, List[str]]" = collections.OrderedDict()
        self._tls_identity_cache = tls_identity_cache
        self._session_identities: Dict[str, List[str]] = {}

    # -- reading -------------------------------------------------------------------------------

    def connected(self, device: str) -> bool:
        """Whether the device holds an open session on any transport (NETCONF or RESTCONF)."""
        held = self.sessions.get(device)
        return (held is not None and held.is_open) or device in self.restconf

    def holds(self, device: str) -> bool:
        """Whether the table has a session of the device, open or closing, on any transport."""
        return device in self.sessions or self.restconf.get(device) is not None

    def netconf(self, device: str) -> Optional[HeldSession]:
        """The device's open NETCONF session, if it has one."""
        held = self.sessions.get(device)
        return held if held is not None and held.is_open else None

    def hint_for(self, address: str, transport: str) -> str:
        """The device last connected from this address, if it has no live session now."""
        device = self._hints.get((address, transport), "")
        return "" if self.connected(device) else device

    def identities_of(self, fingerprint: str) -> List[str]:
        """The certificate identities a TLS handshake with this fingerprint was accepted under."""
        return self._tls_identities.get(fingerprint, [])

    def live(self) -> List[LiveSession]:
        """Every open session, NETCONF and RESTCONF (what a trust change re-checks)."""
        out = [
            LiveSession(held.device, held.transport, held.fingerprint, self._session_identities.get(held.device, ()), held.close)
            for held in self.sessions.values()
        ]
        out += [
            LiveSession(conn.device, RESTCONF, conn.fingerprint, self.restconf.identities(conn.device), conn.close)
            for conn in self.restconf
            if not conn.is_closed
        ]
        return out

    # -- changes -------------------------------------------------------------------------------

    def accepted(self, fingerprint: str, identities: Sequence[str]) -> None:
        """A certificate was accepted under these identities (kept for its session, bounded)."""
        self._tls_identities[fingerprint] = list(identities)
        self._tls_identities.move_to_end(fingerprint)
        while len(self._tls_identities) > self._tls_identity_cache:
            self._tls_identities.popitem(last=False)

    def called_from(self, peer: str, transport: str, device: str) -> None:
        """Remember the address a verified device called from (the next refusal's hint)."""
        self._hints[(peer_ip(peer), transport)] = device

    def hold(self, held: HeldSession) -> Optional[HeldSession]:
        """Make ``held`` the device's NETCONF session; the one it replaces (not closed here)."""
        old = self.sessions.get(held.device)
        self.sessions[held.device] = held
        if held.transport == "tls":
            self._session_identities[held.device] = self.identities_of(held.fingerprint)
        return old if old is not held else None

    def release(self, held: HeldSession) -> bool:
        """Forget a closed NETCONF session; False when it was an older, replaced one."""
        if self.sessions.get(held.device) is not held:
            return False
        del self.sessions[held.device]
        self._session_identities.pop(held.device, None)
        return True

    def hold_restconf(self, conn: RestconfConnection) -> Optional[RestconfConnection]:
        """Make ``conn`` the device's RESTCONF connection; the one it replaces (not closed here)."""
        return self.restconf.hold(conn, self.identities_of(conn.fingerprint))

    def close_device(self, device: str, reason: str) -> bool:
        """Close the device's sessions on every transport; False when it held none."""
        held = self.sessions.get(device)
        conn = self.restconf.get(device)
        if held is not None:
            held.close(reason)
        if conn is not None:
            conn.close(reason)
        return held is not None or conn is not None

    def close_all(self, reason: str) -> None:
        for held in list(self.sessions.values()):
            held.close(reason)
        self.restconf.close_all(reason)
