# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, TLS: accept call-home TCP on 4335 and run the TLS *client* on it (RFC 7589).

The handshake runs with ``CERT_NONE`` on purpose: the policy layer must see the certificate of an
*unknown* device to record it as pending, which a failing OpenSSL verification would hide. The
policy then verifies it itself (pinned fingerprint, or chain to a configured CA plus an enrolled
identity) before a single NETCONF byte is sent.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import socket
import ssl
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import HandshakeError, IdentityRefusedError, SSHBannerError, TransportPinnedError
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


# One TLS record at most (RFC 8446 5.1: 2^14 bytes of plaintext): what one SSLObject.read returns.
_RECORD = 16384
# While no HeldSession exists (the trust decision is synchronous right after the handshake) at
# most a hello's worth of early device bytes is kept.
_EARLY_LIMIT = 1 << 20


class _TLSConnection(asyncio.Protocol):
    """The TLS client on one accepted socket: :class:`ssl.SSLObject` over two memory BIOs.

    Why not ``loop.create_connection(ssl=...)``: asyncio's SSLProtocol allocates a 256 KiB read
    buffer per connection before the first byte (``SSLProtocol.max_size``); 2,000 pending
    handshakes cost the listener ~600 MB, and those 256 KiB blocks come from the heap once glibc
    has raised its mmap threshold, so the memory did not come back (issue 10, defect 7). Here a
    pending handshake holds the OpenSSL object, two empty BIOs and this object; reads are one
    TLS record at a time. The context is the transport's, shared by every connection.

    It is also the :class:`~netconf_callhome.protocol.session.Carrier` of the held session.
    """

    def __init__(self, context: ssl.SSLContext, handshake: "asyncio.Future[None]") -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # server_hostname None: no SNI, no name check (the policy layer verifies the device).
        self.sslobj: Optional[ssl.SSLObject] = context.wrap_bio(self._incoming, self._outgoing, server_side=False)
        self.transport: Optional[asyncio.Transport] = None
        self._handshake = handshake
        self.held: Optional[HeldSession] = None
        self._early: List[bytes] = []
        self._early_size = 0
        self.lost: Optional[str] = None
        self.first_bytes = b""  # the device's first bytes (at most 8), to name a wrong protocol

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._step_handshake()  # the ClientHello

    def data_received(self, data: bytes) -> None:
        if self.sslobj is None:
            return
        self._incoming.write(data)
        if not self._handshake.done():
            if len(self.first_bytes) < 8:
                self.first_bytes += data[: 8 - len(self.first_bytes)]
            self._step_handshake()
        else:
            self._read_records()

    def eof_received(self) -> Optional[bool]:
        self._incoming.write_eof()
        return False  # close the transport: NETCONF over TLS has no half-close

    def connection_lost(self, exc: Optional[Exception]) -> None:
        reason = "TLS connection closed" + (": %s" % exc if exc else "")
        if not self._handshake.done():
            self._handshake.set_exception(
                ConnectionResetError("connection lost during the TLS handshake" + (": %s" % exc if exc else ""))
            )
        self._lost(reason)
        self._release()

    # -- TLS -------------------------------------------------------------------------------------

    def _step_handshake(self) -> None:
        assert self.sslobj is not None
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except Exception as exc:  # ssl.SSLError (garbage, alerts), ssl.SSLEOFError
            self._flush()  # the alert, if OpenSSL produced one
            if not self._handshake.done():
                self._handshake.set_exception(exc)
            return
        self._flush()
        if not self._handshake.done():
            self._handshake.set_result(None)
        self._read_records()  # application data that came with the last handshake flight

    def _read_records(self) -> None:
        sslobj = self.sslobj
        while sslobj is not None:
            try:
                chunk = sslobj.read(_RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as exc:
                self._lost("TLS error: %s" % exc)
                self._abort()
                break
            if not chunk:  # close_notify (read returns b"" for it): the device ended the session
                self._lost("TLS connection closed by the device (close_notify)")
                self._close_transport()
                break
            self._deliver(chunk)
            sslobj = self.sslobj
        self._flush()  # post-handshake messages (TLS 1.3 key updates) may need an answer

    def _deliver(self, data: bytes) -> None:
        if self.held is not None:
            self.held.data_received(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > _EARLY_LIMIT:
            # A device says hello and waits for ours; dropping the excess would corrupt its stream.
            self._lost("device sent more than %d bytes before its session was set up" % _EARLY_LIMIT)
            self._release()
            self._abort()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            if self.held is not None:
                self.held.connection_lost(reason)

    def _release(self) -> None:
        """Drop the OpenSSL object and buffers now, not when the last reference goes."""
        self.sslobj = None
        self._early = []
        self._early_size = 0

    # -- the held session's side (Carrier) ---------------------------------------------------

    def bind(self, held: HeldSession) -> None:
        self.held = held
        held.attach(self)
        early, self._early, self._early_size = self._early, [], 0
        for data in early:
            held.data_received(data)
        if self.lost is not None:
            held.connection_lost(self.lost)

    def write(self, data: bytes) -> None:
        if self.sslobj is None or self.transport is None or self.transport.is_closing():
            return
        try:
            self.sslobj.write(data)  # memory BIO: never wants to read or write first
        except ssl.SSLError as exc:
            self._lost("TLS error: %s" % exc)
            self._abort()
            return
        self._flush()

    def close(self) -> None:
        hs = self._handshake
        if self.sslobj is not None and hs.done() and not hs.cancelled() and hs.exception() is None:
            try:
                self.sslobj.unwrap()  # queues our close_notify
            except ssl.SSLError:
                pass  # SSLWantReadError: the device's close_notify is not awaited
            self._flush()
        self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# After a burst of at least this many pending handshakes has drained, freed memory is handed back
# to the system (glibc keeps freed heap memory otherwise: the RSS of a flood would stay).
_TRIM_AFTER = 64


_libc_trim: Any = None


def _malloc_trim() -> None:
    """``malloc_trim(0)`` on glibc: return free heap pages to the system; elsewhere nothing."""
    global _libc_trim  # pylint: disable=global-statement
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
            _libc_trim = False
    if _libc_trim:
        _libc_trim(0)


class TLSTransport:
    """NETCONF over TLS call home (RFC 7589): one NETCONF session per TLS connection."""

    def __init__(self, config: ListenerConfig, *, admission: Admission, events: TransportEvents) -> None:
        self.config = config
        self.admission = admission
        self.events = events
        # One context for every connection: a context per connection costs its own copy of the
        # certificate, key and settings.
        self.context = client_context(config.tls.client_cert, config.tls.client_key)
        self.pending = 0  # handshakes in progress (until the session is ready or failed)
        self._peak = 0
        self._trim: Optional[asyncio.TimerHandle] = None

    async def handle(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        """One accepted TLS call-home connection (the listener's accept loop hands it over)."""
        peer = format_peer(addr)
        if not self.admission.acquire(peer):
            sock.close()
            return
        try:
            set_tcp_keepalive(sock, self.config)
            await self.serve(peer, time.monotonic(), lambda: start_tls(self.context, sock=sock))
        finally:
            self.admission.release()

    async def serve(
        self,
        peer: str,
        started: float,
        connect: Callable[[], Awaitable["_TLSConnection"]],
        *,
        refuse: Optional[Callable[[str], Optional[str]]] = None,
    ) -> None:
        """The handshake from ``connect`` (here :func:`start_tls` on the accepted socket; on the
        single call-home port a handshake already done there), then the verdict, the NETCONF
        hello and ``session_ready``, within what is left of ``handshake_timeout`` since
        ``started``. ``refuse(device)``, asked after the verdict, may turn a verified device away
        with a reason (the single port's per-device transport pin). The caller holds the
        admission slot."""
        self.pending += 1
        self._peak = max(self._peak, self.pending)
        try:
            await self._handshake(peer, started, connect, refuse)
        finally:
            self.pending -= 1
            self._after_handshake()

    def _after_handshake(self) -> None:
        """Once a burst of pending handshakes has drained to a quarter, give the memory back."""
        if self._peak < _TRIM_AFTER or self.pending > self._peak // 4 or self._trim is not None:
            return
        self._peak = self.pending

        def trim() -> None:
            self._trim = None
            gc.collect()  # cycles (exceptions with tracebacks) hold connection objects
            _malloc_trim()
            log.info("event=tls.memory_trimmed pending=%d", self.pending)

        # A second later: the rest of the burst's closes land first, one trim for all of them.
        self._trim = asyncio.get_running_loop().call_later(1.0, trim)

    async def _handshake(
        self,
        peer: str,
        started: float,
        connect: Callable[[], Awaitable["_TLSConnection"]],
        refuse: Optional[Callable[[str], Optional[str]]],
    ) -> None:
        cfg = self.config
        conn: Optional[_TLSConnection] = None
        held: Optional[HeldSession] = None
        device = ""
        try:
            async with asyncio.timeout(_remaining(cfg.handshake_timeout, started)):
                conn = await connect()
                chain = _peer_chain(conn.sslobj)
                if not chain:
                    raise HandshakeError("device presented no certificate")
                verified = self.events.tls_certificate(chain, peer=peer)
                if verified is None:
                    conn.close()
                    self.events.handshake_failed(
                        HandshakeFailure(transport="tls", peer=peer, error=IdentityRefusedError("certificate not accepted"))
                    )
                    return
                device = verified.device
                refused = refuse(device) if refuse is not None else None
                if refused:
                    conn.close()
                    self.events.handshake_failed(
                        HandshakeFailure(transport="tls", peer=peer, error=TransportPinnedError(refused), device=device)
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
                conn.bind(held)
                await held.wait_hello()
        except BaseException as exc:
            if conn is not None:
                conn._abort()  # pylint: disable=protected-access
                conn._release()  # pylint: disable=protected-access  # a timed-out handshake's memory goes now
            self.events.handshake_failed(HandshakeFailure(transport="tls", peer=peer, error=classify(exc), device=device))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.events.session_ready(held, started=started, auth="tls-certificate")


async def start_tls(
    context: ssl.SSLContext,
    *,
    sock: Optional[socket.socket] = None,
    transport: Optional[asyncio.Transport] = None,
) -> _TLSConnection:
    """Run the TLS client on an accepted socket, or on a ``transport`` another protocol has read
    nothing from (the single call-home port's detector: a TLS device waits for our ClientHello,
    so nothing was read); return once the handshake is done. The one handshake code of NETCONF
    over TLS, RESTCONF and the single port. The caller bounds the time (``asyncio.timeout``); on
    any failure the connection is aborted (or the socket closed), its memory released, and the
    exception raised."""
    loop = asyncio.get_running_loop()
    handshake: "asyncio.Future[None]" = loop.create_future()
    conn = _TLSConnection(context, handshake)
    try:
        if transport is not None:
            transport.set_protocol(conn)
            conn.connection_made(transport)  # sends the ClientHello
            if not transport.is_closing():
                transport.resume_reading()
        else:
            assert sock is not None
            await loop.connect_accepted_socket(lambda: conn, sock=sock)  # type: ignore[return-value,arg-type]
        await handshake
    except BaseException as exc:
        spoke_ssh = conn.first_bytes.startswith(b"SSH-")
        if conn.transport is not None:
            conn.transport.abort()
        elif sock is not None:
            sock.close()
        conn._release()  # pylint: disable=protected-access
        if not handshake.done():
            handshake.cancel()
        if spoke_ssh and isinstance(exc, (ssl.SSLError, ConnectionError)):
            raise SSHBannerError(
                "the device sent an SSH banner (%r) instead of a TLS ServerHello: an SSH device where TLS "
                "was expected" % conn.first_bytes
            ) from None
        raise
    return conn


def _remaining(timeout: float, started: float) -> float:
    """What is left of ``timeout`` since ``started`` (monotonic); a little at least, so a
    connection handed over late still gets a bounded try instead of an instant timeout."""
    return max(0.1, timeout - (time.monotonic() - started))


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
