# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, TLS: accept call-home TCP on 4335 and run the TLS *client* on it (RFC 7589).

The handshake runs with ``CERT_NONE`` on purpose: the policy layer must see the certificate of an
*unknown* device to record it as pending, which a failing OpenSSL verification would hide. The
policy then verifies it itself (pinned fingerprint, or chain to a configured CA plus an enrolled
identity) before a single NETCONF byte is sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any, List, Optional, Tuple

from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import HandshakeError
from netconf_callhome.netutil import format_peer, set_tcp_keepalive
from netconf_callhome.protocol.events import Admission, HandshakeFailure, TransportEvents
from netconf_callhome.protocol.session import SHARED, HeldSession
from netconf_callhome.protocol.ssh import classify

log = logging.getLogger("netconf_callhome.tls")


def client_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified by the policy layer; see module docstring
    ctx.load_cert_chain(cert, key)
    return ctx


class _TLSCarrier(asyncio.Protocol):
    """Buffers what the device sends until the trust decision has made a HeldSession."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.held: Optional[HeldSession] = None
        self._early: List[bytes] = []
        self.lost: Optional[str] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def bind(self, held: HeldSession) -> None:
        self.held = held
        held.attach(self)
        for data in self._early:
            held.data_received(data)
        self._early = []
        if self.lost is not None:
            held.connection_lost(self.lost)

    def data_received(self, data: bytes) -> None:
        if self.held is not None:
            self.held.data_received(data)
        elif sum(map(len, self._early)) < 1 << 20:
            self._early.append(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.lost = "TLS connection closed" + (": %s" % exc if exc else "")
        if self.held is not None:
            self.held.connection_lost(self.lost)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TLSTransport:
    """NETCONF over TLS call home (RFC 7589): one NETCONF session per TLS connection."""

    def __init__(self, config: ListenerConfig, *, admission: Admission, events: TransportEvents) -> None:
        self.config = config
        self.admission = admission
        self.events = events
        self.context = client_context(config.tls.client_cert, config.tls.client_key)

    async def handle(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        """One accepted TLS call-home connection (the listener's accept loop hands it over)."""
        peer = format_peer(addr)
        if not self.admission.acquire(peer):
            sock.close()
            return
        try:
            await self._handshake(sock, peer)
        finally:
            self.admission.release()

    async def _handshake(self, sock: socket.socket, peer: str) -> None:
        cfg = self.config
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        set_tcp_keepalive(sock, cfg)
        carrier = _TLSCarrier()
        held: Optional[HeldSession] = None
        try:
            async with asyncio.timeout(cfg.handshake_timeout):
                transport = (
                    await loop.create_connection(lambda: carrier, sock=sock, ssl=self.context, server_hostname="")
                )[0]
                chain = _peer_chain(transport.get_extra_info("ssl_object"))
                if not chain:
                    raise HandshakeError("device presented no certificate")
                verified = self.events.tls_certificate(chain, peer=peer)
                if verified is None:
                    transport.close()
                    self.events.handshake_failed(
                        HandshakeFailure(transport="tls", peer=peer, reason="host-key", message="certificate not accepted")
                    )
                    return
                held = HeldSession(
                    device=verified.device,
                    transport="tls",
                    peer=peer,
                    fingerprint=verified.fingerprint,
                    max_hello=cfg.max_hello_bytes,
                    max_message=cfg.max_message_bytes,
                )
                held.mode = SHARED  # RFC 7589: one NETCONF session per TLS connection
                carrier.bind(held)
                await held.wait_hello()
        except BaseException as exc:
            if carrier.transport is not None:
                carrier.transport.abort()
            else:
                sock.close()
            reason, message = classify(exc)
            self.events.handshake_failed(
                HandshakeFailure(
                    transport="tls", peer=peer, reason=reason, message=message, device=held.device if held else ""
                )
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.events.session_ready(held, started=started, auth="tls-certificate")


def _peer_chain(ssl_object: Optional[ssl.SSLObject]) -> List[bytes]:
    if ssl_object is None:
        return []
    # CPython 3.10-3.12 keep the chain accessor private (public as get_unverified_chain in 3.13).
    for owner in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(owner, "get_unverified_chain", None)
        if getter is not None:
            chain = getter() or []
            return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []
