# SPDX-License-Identifier: GPL-3.0-or-later
"""Who may start a handshake: per-address limits after repeated failures, and the bound on
handshakes in progress.

Addresses never decide trust (keys do); they only decide how much work a peer may cause. The
transports ask :class:`Admission` before they spend anything on a connection and tell it about
failures; it implements :class:`netconf_callhome.protocol.events.Admission`.

An address over the failure limit (RFC 8071 section 4) is *rate-limited*, not cut off: many
devices can sit behind one address (a NAT, a jump host, a lab's 127.0.0.1), and garbage from one
of them must not lock out the others. A trickle of handshakes (``admit_rate`` per second) is still
admitted from a limited address, so an enrolled device whose key verifies gets its session while
a flood from the same address costs at most ``admit_rate`` handshakes a second. ``admit_rate`` 0
restores a hard block.

Logging is per address and state change, never per connection: one ``event=peer.blocked`` when
an address becomes limited, an ``event=peer.block_report`` at most every ``report_interval`` s
while connections are being turned away, and one ``event=peer.unblocked`` with the totals when it
recovers (no counted failure for ``block_seconds``).
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict

log = logging.getLogger("netconf_callhome.admission")

# A device waiting for enrollment retries, and a storm of devices redialling through a slow
# listener looks like timeouts after the SSH banner: neither is an attack, and limiting the
# address would slow down every device behind the same NAT. An outbound-ssh secret the listener
# cannot read (secret-unavailable) is the listener's own fault, not the device's. A wrong HMAC
# (hmac-failed, hmac-missing, host-key-differs) is counted: that is how guessing a secret looks.
# On the single call-home port an SSH device whose banner came after callhome_silence was taken
# for TLS (slow-ssh-banner): a storm of devices through a slow path, like the timeouts above.
_NOT_COUNTED = ("host-key", "auth-failed", "secret-unavailable", "slow-ssh-banner")
# Stale per-address state is dropped by a sweep at most this often (bounded memory under floods
# from many addresses).
_SWEEP_SECONDS = 1.0


@dataclass
class _Limited:
    """An address over the failure limit: a token bucket and what happened while limited."""

    since: float
    until: float  # recovers when no counted failure came for block_seconds
    tokens: float
    refilled: float
    failures: int = 0  # counted failures that made or kept it limited
    admitted: int = 0  # handshakes let through by the trickle
    turned_away: int = 0
    reported_away: int = 0  # turned_away at the last block_report
    reported: float = 0.0


class Admission:
    """Per-address failure windows, rate limits, and a global handshake-slot count."""

    def __init__(
        self,
        *,
        max_handshakes: int,
        block_failures: int,
        block_window: float,
        block_seconds: float,
        admit_rate: float = 1.0,
        report_interval: float = 60.0,
        on_limit: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if admit_rate < 0:
            raise ValueError("admit_rate must be 0 (hard block) or positive")
        self.max_handshakes = max_handshakes
        self.block_failures = block_failures
        self.block_window = block_window
        self.block_seconds = block_seconds
        self.admit_rate = admit_rate
        # One handshake may start as soon as the address is limited (a device that redials finds
        # a token), never a burst: the bucket holds at most one.
        self._burst = 1.0
        self.report_interval = report_interval
        self._on_limit = on_limit  # metrics hook: called with the reason a peer was turned away
        self._clock = clock
        self._failures: Dict[str, Deque[float]] = {}
        self._limited: Dict[str, _Limited] = {}
        self.in_progress = 0
        self._last_full_warning = 0.0
        self._last_sweep = clock()

    # -- per address ---------------------------------------------------------------------------

    @property
    def limited(self) -> Dict[str, _Limited]:
        """The addresses limited now (read-only use: status, tests)."""
        return self._limited

    def is_blocked(self, peer_ip: str) -> bool:
        """True: turn this connection away now (its address is limited and has no token left).

        Called once per accepted connection, before any work; a False from a limited address
        spends one token of its trickle.
        """
        now = self._clock()
        self._maybe_sweep(now)
        state = self._limited.get(peer_ip)
        if state is None:
            return False
        if now >= state.until:
            self._recover(peer_ip, state, now)
            return False
        if self.admit_rate > 0:
            state.tokens = min(self._burst, state.tokens + (now - state.refilled) * self.admit_rate)
            state.refilled = now
            if state.tokens >= 1.0:
                state.tokens -= 1.0
                state.admitted += 1
                return False
        state.turned_away += 1
        self._on_limit("address-limited")
        if now - state.reported >= self.report_interval:
            self._report(peer_ip, state, now)
        return True

    def failed(self, reason: str, peer_ip: str) -> None:
        """Count a failed handshake against the address; limit it once over the limit."""
        if reason in _NOT_COUNTED or reason.endswith("-after-banner"):
            return
        now = self._clock()
        self._maybe_sweep(now)
        state = self._limited.get(peer_ip)
        if state is not None and now < state.until:
            # Still failing while limited (the trickle let garbage through, or handshakes that
            # started before the limit ended): keep it limited, without another log line.
            state.failures += 1
            state.until = now + self.block_seconds
            return
        if state is not None:
            self._recover(peer_ip, state, now)
        window = self._failures.setdefault(peer_ip, collections.deque())
        window.append(now)
        while window and now - window[0] > self.block_window:
            window.popleft()
        if len(window) < self.block_failures:
            return
        del self._failures[peer_ip]
        # The first token comes after 1/admit_rate s: the failure that tripped the limit does
        # not buy the flood one more handshake at once.
        self._limited[peer_ip] = _Limited(
            since=now, until=now + self.block_seconds, tokens=0.0, refilled=now, failures=len(window), reported=now
        )
        log.warning(
            "event=peer.blocked peer_ip=%s failures=%d window_s=%.0f seconds=%.0f admit_per_s=%g reason=repeated_failures",
            peer_ip,
            len(window),
            self.block_window,
            self.block_seconds,
            self.admit_rate,
        )

    def sweep(self) -> None:
        """Recover expired limits (logging their totals) and drop stale failure windows."""
        now = self._clock()
        self._last_sweep = now
        for peer_ip, state in list(self._limited.items()):
            if now >= state.until:
                self._recover(peer_ip, state, now)
            elif state.turned_away > state.reported_away and now - state.reported >= self.report_interval:
                self._report(peer_ip, state, now)
        for peer_ip, window in list(self._failures.items()):
            while window and now - window[0] > self.block_window:
                window.popleft()
            if not window:
                del self._failures[peer_ip]

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep >= _SWEEP_SECONDS:
            self.sweep()

    def _report(self, peer_ip: str, state: _Limited, now: float) -> None:
        log.warning(
            "event=peer.block_report peer_ip=%s turned_away=%d admitted=%d failures=%d blocked_s=%.0f",
            peer_ip,
            state.turned_away,
            state.admitted,
            state.failures,
            now - state.since,
        )
        state.reported = now
        state.reported_away = state.turned_away

    def _recover(self, peer_ip: str, state: _Limited, now: float) -> None:
        del self._limited[peer_ip]
        log.warning(
            "event=peer.unblocked peer_ip=%s turned_away=%d admitted=%d failures=%d blocked_s=%.0f",
            peer_ip,
            state.turned_away,
            state.admitted,
            state.failures,
            min(now, state.until) - state.since,
        )

    # -- handshake slots -----------------------------------------------------------------------

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
