# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: what a transport's outcome means for the listener's state.

The outcome half of the transports' events (:class:`~netconf_callhome.protocol.events.TransportEvents`,
``RestconfEvents``): a failed handshake, a NETCONF session or a RESTCONF connection ready, one
closed. Each becomes one registry update, one log line and metrics here; a ready session is
held in :class:`~netconf_callhome.sessions.devices.LiveDevices` (replacing the device's older
one), claimed for this node (scale-out) and wakes the waits for its device.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import AuthFailedError
from netconf_callhome.metrics import Metrics
from netconf_callhome.netutil import peer_ip
from netconf_callhome.policy.admission import Admission
from netconf_callhome.protocol.events import HandshakeFailure
from netconf_callhome.protocol.restconf import KEEPALIVE_MISSED, RestconfConnection
from netconf_callhome.protocol.session import AUTO, HeldSession
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.sessions.mux import Multiplexer
from netconf_callhome.sessions.owned import DeviceOwnership
from netconf_callhome.sessions.restconf_sessions import module_capabilities
from netconf_callhome.sessions.waiters import DeviceWaiters
from netconf_callhome.state.registry import AUTH_FAILED, CONNECTED, DISCONNECTED, ERROR, Registry

log = logging.getLogger("netconf_callhome.listener")

Spawn = Callable[[Awaitable[Any]], None]


class SessionRecorder:
    """Transport outcomes to registry records, log lines and metrics; ready sessions held."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        registry: Registry,
        metrics: Metrics,
        admission: Admission,
        devices: LiveDevices,
        waiters: DeviceWaiters,
        ownership: DeviceOwnership,
        spawn: Spawn,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.admission = admission
        self.devices = devices
        self.waiters = waiters
        self.ownership = ownership
        self.spawn = spawn

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        if failure.device:
            status = AUTH_FAILED if isinstance(failure.error, AuthFailedError) else ERROR
            self.registry.update(
                failure.device,
                status=status,
                peer=failure.peer,
                transport=failure.transport,
                last_seen=time.time(),
                last_error=failure.message,
            )
            log.warning(
                "event=device.session_failed device=%s peer=%s transport=%s reason=%s error=%r",
                failure.device,
                failure.peer,
                failure.transport,
                failure.reason,
                failure.message,
            )
        elif failure.reason != "host-key":  # a refused key was logged when it was recorded
            log.warning(
                "event=handshake.failed peer=%s transport=%s reason=%s error=%r",
                failure.peer,
                failure.transport,
                failure.reason,
                failure.message,
            )
        self.metrics.failures.labels(transport=failure.transport, reason=failure.reason).inc()
        self.metrics.handshakes.labels(transport=failure.transport, result="failed").inc()
        self.admission.failed(failure.reason, peer_ip(failure.peer))

    # -- NETCONF (SSH, TLS) --------------------------------------------------------------------

    def session_ready(self, held: HeldSession, *, started: float, auth: str) -> None:
        assert held.hello is not None
        now = time.time()
        rec = self.registry.get(held.device)
        # How its leases run: the operator's pin, else what an earlier connection taught (a
        # device that refused or ignored a second channel stays shared), else the transport's.
        mux = Multiplexer(held)
        held.configure(
            shared=mux,
            pinned=self.config.session_modes.get(held.device, AUTO),
            remembered=rec.session_mode if rec is not None and rec.transport == held.transport else "",
            channel_hello_timeout=self.config.channel_hello_timeout,
            on_mode_change=self._mode_changed,
        )
        old = self.devices.hold(held)
        held.closed.add_done_callback(lambda fut: self._session_closed(held, fut.result()))
        if held.transport == "tls" and self.config.liveness_interval > 0:
            # TLS has no keepalive of its own (SSH sessions have SSH keepalives): a hung device
            # must not stay 'connected' (RFC 8071 3.1 S7).
            self.spawn(
                mux.watch_liveness(
                    self.config.liveness_interval,
                    self.config.liveness_timeout,
                    lambda reason: self.metrics.failures.labels(transport=held.transport, reason="unresponsive").inc(),
                )
            )
        if old is not None:
            old.close("replaced by a new call from %s" % held.peer)
            log.info("event=device.replaced device=%s old_peer=%s new_peer=%s", held.device, old.peer, held.peer)
        self.registry.update(
            held.device,
            status=CONNECTED,
            transport=held.transport,
            peer=held.peer,
            fingerprint=held.fingerprint,
            capabilities=list(held.hello.capabilities),
            session_mode=held.mode,
            first_connected=(rec.first_connected if rec and rec.first_connected else now),
            last_connected=now,
            last_seen=now,
            last_error="",
            connect_count=(rec.connect_count if rec else 0) + 1,
        )
        self.devices.called_from(held.peer, held.transport, held.device)
        elapsed = time.monotonic() - started
        self.metrics.handshakes.labels(transport=held.transport, result="ok").inc()
        self.metrics.handshake_seconds.labels(transport=held.transport).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "event=device.connected device=%s peer=%s transport=%s fingerprint=%s auth=%s mode=%s capabilities=%d handshake_ms=%.1f",
                held.device,
                held.peer,
                held.transport,
                held.fingerprint,
                auth,
                held.mode,
                len(held.hello.capabilities),
                elapsed * 1000,
            )
        self.ownership.claim(held.device)
        self.waiters.wake(held.device)

    def _session_closed(self, held: HeldSession, reason: str) -> None:
        if not self.devices.release(held):
            return  # an older, replaced session
        now = time.time()
        conn = self.devices.restconf.get(held.device)
        if conn is not None:
            # The device also holds a RESTCONF connection: it is still connected, through that one.
            self.registry.update(
                held.device,
                status=CONNECTED,
                transport="restconf",
                peer=conn.peer,
                fingerprint=conn.fingerprint,
                capabilities=module_capabilities(conn.library),
                last_seen=now,
            )
            log.info(
                "event=device.disconnected device=%s peer=%s transport=%s reason=%r still_connected=restconf",
                held.device,
                held.peer,
                held.transport,
                reason,
            )
            return
        status = ERROR if held.failed else DISCONNECTED
        self.ownership.release(held.device)
        self.registry.update(held.device, status=status, last_disconnected=now, last_seen=now, last_error=reason)
        log.info(
            "event=device.disconnected device=%s peer=%s status=%s reason=%r", held.device, held.peer, status, reason
        )

    def _mode_changed(self, held: HeldSession, mode: str, reason: str) -> None:
        """A lease found that the device serves one session per connection: remember it at once,
        for this connection's next leases and the device's next connections."""
        if self.devices.sessions.get(held.device) is held:
            self.registry.update(held.device, session_mode=mode)

    def lease_ended(self, held: HeldSession) -> None:
        """A device that refused a second channel is served shared from now on: record it."""
        rec = self.registry.get(held.device)
        if rec is not None and rec.session_mode != held.mode and self.devices.sessions.get(held.device) is held:
            self.registry.update(held.device, session_mode=held.mode)

    # -- RESTCONF ------------------------------------------------------------------------------

    def restconf_ready(self, conn: RestconfConnection, *, started: float) -> None:
        """A verified RESTCONF device whose root and YANG library were read: held, one per device."""
        now = time.time()
        rec = self.registry.get(conn.device)
        old = self.devices.hold_restconf(conn)
        conn.closed.add_done_callback(
            lambda fut: self._restconf_closed(conn, "cancelled" if fut.cancelled() else fut.result())
        )
        if self.config.liveness_interval > 0:
            # RESTCONF's keepalive: an HTTP/2 PING, or a cheap request on HTTP/1.1, after
            # liveness_interval s of silence; no answer within liveness_timeout closes it.
            self.spawn(self._restconf_keepalive(conn))
        if old is not None:
            old.close("replaced by a new call from %s" % conn.peer)
            log.info("event=device.replaced device=%s old_peer=%s new_peer=%s", conn.device, old.peer, conn.peer)
        capabilities = module_capabilities(conn.library)
        self.registry.update(
            conn.device,
            status=CONNECTED,
            transport="restconf",
            peer=conn.peer,
            fingerprint=conn.fingerprint,
            capabilities=capabilities,
            first_connected=(rec.first_connected if rec and rec.first_connected else now),
            last_connected=now,
            last_seen=now,
            last_error="",
            connect_count=(rec.connect_count if rec else 0) + 1,
        )
        self.devices.called_from(conn.peer, "restconf", conn.device)
        elapsed = time.monotonic() - started
        self.metrics.handshakes.labels(transport="restconf", result="ok").inc()
        self.metrics.handshake_seconds.labels(transport="restconf").observe(elapsed)
        log.info(
            "event=device.connected device=%s peer=%s transport=restconf fingerprint=%s http=%s root=%s modules=%d handshake_ms=%.1f",
            conn.device,
            conn.peer,
            conn.fingerprint,
            conn.http_version,
            conn.root,
            len(capabilities),
            elapsed * 1000,
        )
        self.ownership.claim(conn.device)
        self.waiters.wake(conn.device)

    async def _restconf_keepalive(self, conn: RestconfConnection) -> None:
        reason = await conn.keepalive(self.config.liveness_interval, self.config.liveness_timeout)
        if reason.startswith(KEEPALIVE_MISSED):
            self.metrics.failures.labels(transport="restconf", reason="unresponsive").inc()

    def _restconf_closed(self, conn: RestconfConnection, reason: str) -> None:
        if not self.devices.restconf.release(conn):
            return  # an older, replaced connection
        now = time.time()
        held = self.devices.netconf(conn.device)
        if held is not None:
            # The device also holds a NETCONF session: its record stays 'connected', now for that one.
            self.registry.update(
                conn.device,
                status=CONNECTED,
                transport=held.transport,
                peer=held.peer,
                fingerprint=held.fingerprint,
                capabilities=list(held.hello.capabilities) if held.hello is not None else [],
                last_seen=now,
            )
            log.info(
                "event=device.disconnected device=%s peer=%s transport=restconf reason=%r still_connected=%s",
                conn.device,
                conn.peer,
                reason,
                held.transport,
            )
            return
        self.ownership.release(conn.device)
        self.registry.update(conn.device, status=DISCONNECTED, last_disconnected=now, last_seen=now, last_error=reason)
        log.info(
            "event=device.disconnected device=%s peer=%s transport=restconf status=%s reason=%r",
            conn.device,
            conn.peer,
            DISCONNECTED,
            reason,
        )
