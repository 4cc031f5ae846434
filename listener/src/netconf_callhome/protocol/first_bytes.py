# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, the single call-home port: tell the transport from a connection's first bytes.

Beside the IANA ports (4334 SSH, 4335 TLS, 4336 RESTCONF, and the outbound-ssh ports) the
listener can serve every transport on one port (``callhome_binds``, docs/single-port.md). What
each device does first decides:

* ``SSH-2.0-`` (or ``SSH-1.99-``, RFC 4253 section 5.1): NETCONF over SSH. RFC 4253 section 4.2
  lets a server send other lines before its identification string; on this port they are
  refused (no call-home device is known to send them, and accepting text before the banner
  would make any garbage line "maybe SSH"): such a device calls the SSH port, 4334.
* ``MSG-ID:``: Junos outbound-ssh; its preamble reader (:mod:`.outbound_ssh`) validates the rest
  (``MSG-ID: DEVICE-CONN-INFO`` ...) and hands over to SSH.
* nothing for ``callhome_silence`` seconds: a TLS device, which waits for the listener's
  ClientHello. The listener starts TLS offering ALPN ``h2`` and ``http/1.1``; a protocol chosen
  means RESTCONF, none means NETCONF over TLS. One handshake: the established connection goes to
  :meth:`TLSTransport.serve <netconf_callhome.protocol.tls.TLSTransport.serve>` or
  :meth:`RestconfTransport.serve <netconf_callhome.protocol.restconf.RestconfTransport.serve>`,
  which verify the device as on their own ports. ``callhome_transports`` pins a device to one of
  them; a pinned device that negotiated the other is refused (``transport-pinned``).
* anything else: refused (``unknown-protocol``), as is a peer that sent part of a signature and
  stopped (``timeout`` after ``callhome_detect_timeout``) or closed (``connection-lost``). They
  are handshake failures like any other (metrics, the address's failure count, a log line).
  An SSH device whose banner comes only after the silence gets a ClientHello and answers it with
  its banner: ``slow-ssh-banner`` (logged and in the metrics, not counted against the address,
  as the storm-induced ``-after-banner`` timeouts are not; the device redials).

Bounds: :class:`FirstBytes` is a :class:`asyncio.BufferedProtocol` whose buffer is
:data:`MAX_DETECT_BYTES` long, so the event loop reads at most that many bytes before the
decision, in as many calls as the peer takes to send them; it is called only when bytes arrive
and its silence timer is one timer handle, so a stalled peer costs a socket and this object, no
CPU. The bytes read are handed unchanged to the transport that takes over the same connection.
The detection holds one of ``max_handshakes`` admission slots; SSH gives it back before asyncssh
takes its own, TLS keeps it to the end of the handshake as on 4335.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Callable, Dict, Optional, Tuple

from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import SSHBannerError, handshake_error
from netconf_callhome.netutil import format_peer, set_tcp_keepalive
from netconf_callhome.protocol.events import Admission, HandshakeFailure, TransportEvents
from netconf_callhome.protocol.outbound_ssh import OutboundSSHTransport, start_ssh
from netconf_callhome.protocol.restconf import RestconfTransport, classify_error, tls_link
from netconf_callhome.protocol.tls import TLSTransport, start_tls

log = logging.getLogger("netconf_callhome.callhome")

SSH = "ssh"
OUTBOUND_SSH = "outbound-ssh"
TLS = "tls"
RESTCONF = "restconf"

# What a device sends first, by transport. A TLS device sends nothing (the listener is the TLS
# client), which is what the silence stands for.
SIGNATURES: Tuple[Tuple[bytes, str], ...] = (
    (b"SSH-2.0-", SSH),
    (b"SSH-1.99-", SSH),  # RFC 4253 5.1: a server also speaking SSH 1; asyncssh speaks 2.0 to it
    (b"MSG-ID:", OUTBOUND_SSH),
)
# The longest signature: any buffer this long is decided (matched or refused).
MAX_DETECT_BYTES = max(len(sig) for sig, _kind in SIGNATURES)
# The transport label of failures before a transport is known (metrics, logs, the registry).
LABEL = "callhome"


class UnknownProtocolError(ValueError):
    """The first bytes match no call-home transport (the message says what came)."""


def detect(data: bytes) -> Optional[str]:
    """The transport ``data`` (a connection's first bytes) starts with, or None while it is
    still the beginning of a signature (more bytes are needed); UnknownProtocolError when it can
    be none of them. Empty data is undecided: silence is the caller's to time."""
    undecided = False
    for signature, kind in SIGNATURES:
        if data.startswith(signature):
            return kind
        if signature.startswith(data):
            undecided = True
    if undecided:
        return None
    raise UnknownProtocolError("first bytes %r are not SSH (SSH-2.0-), outbound-ssh (MSG-ID:) or TLS (silence)" % data)


class FirstBytes(asyncio.BufferedProtocol):
    """Reads at most :data:`MAX_DETECT_BYTES` into its own buffer until :func:`detect` decides,
    or ``silence`` seconds pass with nothing read (TLS). :attr:`done` then holds (transport,
    bytes read) and reading is paused: nothing more arrives before the transport is handed over.
    """

    def __init__(self, silence: float) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.done: "asyncio.Future[Tuple[str, bytes]]" = asyncio.get_running_loop().create_future()
        self._buf = bytearray(MAX_DETECT_BYTES)
        self._view = memoryview(self._buf)
        self.received = 0
        self._silence = silence
        self._timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._silence, self._silent)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Only what is missing to the longest signature: the loop's recv_into reads no more.
        return self._view[self.received :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.done.done():
            return
        self.received += nbytes
        self._cancel_timer()
        data = bytes(self._buf[: self.received])
        try:
            kind = detect(data)
        except UnknownProtocolError as exc:
            self._finish(exc=exc)
            return
        if kind is not None:
            self._finish((kind, data))

    def _silent(self) -> None:
        self._timer = None
        if self.received == 0:
            self._finish((TLS, b""))
        # Part of a signature came, then nothing: the caller's detection timeout ends it.

    def eof_received(self) -> bool:
        self._closed("the peer closed the connection after %d byte(s), before its transport was known" % self.received)
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._closed("connection lost before its transport was known" + (": %s" % exc if exc else ""))

    def _closed(self, message: str) -> None:
        self._cancel_timer()
        if not self.done.done():
            self.done.set_exception(ConnectionResetError(message))

    def _finish(self, result: Optional[Tuple[str, bytes]] = None, exc: Optional[BaseException] = None) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.pause_reading()  # the rest belongs to the transport that takes over
        if exc is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(result)  # type: ignore[arg-type]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        """The caller gave up (timeout, cancellation): no timer left behind."""
        self._cancel_timer()


class SinglePortTransport:
    """Accepted sockets on a single call-home port: detect, then hand the connection over.

    ``tls`` and ``restconf`` are None when TLS call home is not configured (no listener
    certificate): a silent peer is then refused (``tls-not-configured``).
    """

    def __init__(
        self,
        config: ListenerConfig,
        *,
        admission: Admission,
        events: TransportEvents,
        outbound_ssh: OutboundSSHTransport,
        tls: Optional[TLSTransport],
        restconf: Optional[RestconfTransport],
    ) -> None:
        self.config = config
        self.admission = admission
        self.events = events
        self.outbound_ssh = outbound_ssh
        self.tls = tls
        self.restconf = restconf
        self.pins: Dict[str, str] = dict(config.callhome_transports)
        self.pending = 0  # detections (and single-port TLS handshakes) in progress
        self.detected: Dict[str, int] = {SSH: 0, OUTBOUND_SSH: 0, TLS: 0, RESTCONF: 0}

    async def handle(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        """One accepted connection on a single call-home port (the accept loop hands it over)."""
        peer = format_peer(addr)
        if not self.admission.acquire(peer):
            sock.close()
            return
        self.pending += 1
        try:
            await self._handle(sock, peer)
        finally:
            self.pending -= 1
            self.admission.release()

    async def _handle(self, sock: socket.socket, peer: str) -> None:
        cfg = self.config
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            set_tcp_keepalive(sock, cfg)
            transport, reader = await loop.connect_accepted_socket(
                lambda: FirstBytes(cfg.callhome_silence), sock=sock
            )
        except OSError as exc:
            sock.close()
            self._failed(peer, "connection-lost", "cannot read the first bytes: %s" % exc)
            return
        assert isinstance(transport, asyncio.Transport) and isinstance(reader, FirstBytes)
        try:
            async with asyncio.timeout(cfg.callhome_detect_timeout):
                kind, data = await reader.done
        except BaseException as exc:
            reader.stop()
            transport.abort()
            if isinstance(exc, TimeoutError):
                self._failed(
                    peer,
                    "timeout",
                    "only %d byte(s) %r within callhome_detect_timeout (%g s), not a complete signature"
                    % (reader.received, bytes(reader._buf[: reader.received]), cfg.callhome_detect_timeout),  # pylint: disable=protected-access
                )
            elif isinstance(exc, UnknownProtocolError):
                self._failed(peer, "unknown-protocol", str(exc))
            elif isinstance(exc, ConnectionError):
                self._failed(peer, "connection-lost", str(exc))
            else:
                raise
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=callhome.detected peer=%s transport=%s detect_ms=%.1f",
                peer,
                kind,
                (time.monotonic() - started) * 1000,
            )
        if kind == SSH:
            self.detected[SSH] += 1
            start_ssh(self.outbound_ssh.ssh, transport, data)  # asyncssh takes its own admission slot
        elif kind == OUTBOUND_SSH:
            self.detected[OUTBOUND_SSH] += 1
            await self.outbound_ssh.takeover(transport, peer, data)
        else:
            await self._tls(transport, peer, started)

    async def _tls(self, transport: asyncio.Transport, peer: str, started: float) -> None:
        """One TLS handshake offering ALPN, then NETCONF over TLS or RESTCONF by its result."""
        if self.tls is None or self.restconf is None:
            transport.abort()
            self._failed(
                peer,
                "tls-not-configured",
                "the peer sent nothing for %g s (a TLS device) and TLS call home is not configured "
                "(tls.client_cert, tls.client_key)" % self.config.callhome_silence,
            )
            return
        remaining = max(0.1, self.config.handshake_timeout - (time.monotonic() - started))
        try:
            async with asyncio.timeout(remaining):
                # The RESTCONF context: the listener's certificate, as for NETCONF over TLS, plus
                # ALPN. A NETCONF-over-TLS device ignores the ALPN extension (RFC 7301 section 3.1).
                conn = await start_tls(self.restconf.context, transport=transport)
        except BaseException as exc:
            error = classify_error(exc)  # RESTCONF's: it knows TLS failures (NETCONF's knows SSH's)
            if isinstance(exc, SSHBannerError):
                # Its banner came after the silence (a slow device, or a storm through a slow
                # path): not counted against the address; the device redials.
                error = handshake_error(
                    "slow-ssh-banner",
                    "%s; its banner came after callhome_silence (%g s): raise it, or let the device call the SSH port"
                    % (exc.message, self.config.callhome_silence),
                )
            self.events.handshake_failed(HandshakeFailure(transport=TLS, peer=peer, error=error))
            if not isinstance(exc, Exception):
                raise
            return
        alpn = conn.sslobj.selected_alpn_protocol() if conn.sslobj is not None else None
        if alpn:
            self.detected[RESTCONF] += 1
            await self.restconf.serve(peer, started, lambda: _ready(tls_link(conn)), refuse=self._refuse(RESTCONF, alpn))
        else:
            self.detected[TLS] += 1
            await self.tls.serve(peer, started, lambda: _ready(conn), refuse=self._refuse(TLS, alpn))

    def _refuse(self, transport: str, alpn: Optional[str]) -> Callable[[str], Optional[str]]:
        """The pin check for a verified device: a refusal reason, or None."""

        def check(device: str) -> Optional[str]:
            pinned = self.pins.get(device)
            if pinned is None or pinned == transport:
                return None
            return "device %s is pinned to %s on the single call-home port (callhome_transports) but %s" % (
                device,
                _NAMES[pinned],
                "negotiated ALPN %r (RESTCONF)" % alpn if alpn else "offered no ALPN protocol (NETCONF over TLS)",
            )

        return check

    def _failed(self, peer: str, reason: str, message: str) -> None:
        self.events.handshake_failed(HandshakeFailure(transport=LABEL, peer=peer, reason=reason, message=message))


_NAMES = {TLS: "NETCONF over TLS", RESTCONF: "RESTCONF"}


async def _ready(value: Any) -> Any:
    """An awaitable of something already there (a handshake done on this port)."""
    return value


__all__ = (
    "FirstBytes",
    "MAX_DETECT_BYTES",
    "SIGNATURES",
    "SinglePortTransport",
    "UnknownProtocolError",
    "detect",
)
