# SPDX-License-Identifier: GPL-3.0-or-later
"""Who may start a handshake: the address blocklist and the bound on handshakes in progress.

Addresses never decide trust (keys do); they only decide how much work a peer may cause. The
transports ask :class:`Admission` before they spend anything on a connection and tell it about
failures; it implements :class:`netconf_callhome.protocol.events.Admission`.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Deque, Dict

log = logging.getLogger("netconf_callhome.admission")

# A device waiting for enrollment retries, and a storm of devices redialling through a slow
# listener looks like timeouts after the SSH banner: neither is an attack, and blocking the
# address would lock out every device behind the same NAT.
_NOT_COUNTED = ("host-key", "auth-failed")


class Admission:
    """Per-address failure windows, temporary blocks, and a global handshake-slot count."""

    def __init__(
        self,
        *,
        max_handshakes: int,
        block_failures: int,
        block_window: float,
        block_seconds: float,
        on_limit: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_handshakes = max_handshakes
        self.block_failures = block_failures
        self.block_window = block_window
        self.block_seconds = block_seconds
        self._on_limit = on_limit  # metrics hook: called with the reason a peer was turned away
        self._clock = clock
        self._failures: Dict[str, Deque[float]] = {}
        self._blocked: Dict[str, float] = {}
        self.in_progress = 0
        self._last_full_warning = 0.0

    def is_blocked(self, peer_ip: str) -> bool:
        until = self._blocked.get(peer_ip)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._blocked[peer_ip]
        return False

    def acquire(self, peer: str) -> bool:
        """Take a handshake slot: a connection flood cannot exhaust memory or CPU."""
        if self.in_progress >= self.max_handshakes:
            now = self._clock()
            if now - self._last_full_warning > 5:
                self._last_full_warning = now
                log.warning("event=handshake.limit peer=%s in_progress=%d", peer, self.in_progress)
            self._on_limit("handshake-limit")
            return False
        self.in_progress += 1
        return True

    def release(self) -> None:
        self.in_progress -= 1

    def failed(self, reason: str, peer_ip: str) -> None:
        """Count a failed handshake against the address; block it once over the limit."""
        if reason in _NOT_COUNTED or reason.endswith("-after-banner"):
            return
        now = self._clock()
        window = self._failures.setdefault(peer_ip, collections.deque())
        window.append(now)
        while window and now - window[0] > self.block_window:
            window.popleft()
        if len(window) >= self.block_failures:
            self._blocked[peer_ip] = now + self.block_seconds
            window.clear()
            log.warning(
                "event=peer.blocked peer_ip=%s seconds=%.0f reason=repeated_failures", peer_ip, self.block_seconds
            )
