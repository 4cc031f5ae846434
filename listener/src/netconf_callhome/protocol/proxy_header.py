# SPDX-License-Identifier: GPL-3.0-or-later
"""The PROXY protocol (v1 text, v2 binary) in front of accepted call-home connections.

A load balancer in TCP mode (HAProxy ``send-proxy-v2``) connects to the listener from its own
address; the device's address only arrives in the PROXY header it sends first. The header is
believed only from the configured load balancers (``proxy_protocol_from``): from them it is
mandatory, from anyone else it is refused as bad input and never read. Spec:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

Why not the PyPI ``proxy-protocol`` package: its v1 parser accepts non-canonical lines (no
length bound, ``int()`` ports such as ``+80``), a truncated v2 address block escapes as
``struct.error``, the v2 length is not bounded, and its readers work on asyncio streams, which
read past the header. The socket has to be handed on with the first byte after the header
unread (the single call-home port's detection, the SSH banner, the TLS handshake all start
there), so this module reads exactly: v2 by its length field, v1 by peeking for its line end.
Both formats are small; the strict parser is ~150 lines with its tests.

:class:`ProxyProtocolGate` is the one place this happens, in the listener's accept path for
every kind of port, before a transport sees the socket: it hands the transport a
:class:`ProxiedSocket` whose ``getpeername()`` is the device's address, so logs, admission
(blocking, rate limits), the registry's ``peer`` and address hints all see the device.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, Union

from netconf_callhome.errors import HandshakeError
from netconf_callhome.netutil import format_peer
from netconf_callhome.protocol.events import Admission, HandshakeFailure, TransportEvents

log = logging.getLogger("netconf_callhome.proxy")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107  # the spec's bound for the longest v1 line, CRLF included
V2_HEADER_BYTES = 16
# The v2 address block and TLVs: 216 bytes for AF_UNIX addresses, the rest for TLVs (HAProxy's
# unique-id, authority, SSL details). The spec allows 64 KiB; nothing a call-home load balancer
# sends needs more than this, and a bigger claim is refused before any of it is read.
V2_MAX_PAYLOAD = 1024

_V1_LINE = re.compile(
    rb"PROXY (?:(TCP4|TCP6) ([0-9A-Fa-f.:]{2,45}) ([0-9A-Fa-f.:]{2,45}) (0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4})"
    rb"|UNKNOWN(?: [\x20-\x7e]*)?)\r\n"
)
_FAMILIES = {0x0: "unspec", 0x1: "tcp4", 0x2: "tcp6", 0x3: "unix"}
_ADDRESS_BYTES = {"tcp4": 12, "tcp6": 36, "unix": 216, "unspec": 0}
_PP2_TYPE_CRC32C = 0x03

Address = Tuple[str, int]


class ProxyHeaderError(HandshakeError):
    """A PROXY header that is missing, malformed, truncated, oversized, too slow, or not wanted.

    ``reason`` is a stable code for logs and metrics: ``proxy-timeout``, ``proxy-truncated``,
    ``proxy-malformed``, ``proxy-oversized``, ``proxy-missing``, ``proxy-no-address``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. ``source`` is the device's address (None: LOCAL, UNKNOWN, UNSPEC, AF_UNIX)."""

    version: int
    command: str  # "proxy" or "local"
    family: str  # tcp4, tcp6, unix, unspec (v1 UNKNOWN is unspec)
    source: Optional[Address]
    destination: Optional[Address]
    length: int  # bytes the header took on the wire

    @property
    def health_check(self) -> bool:
        """LOCAL (v2) or UNKNOWN (v1): the balancer's own connection, e.g. a health check."""
        return self.command == "local" or (self.version == 1 and self.family == "unspec")


def _ip(raw: Union[bytes, str], version: int) -> str:
    address = ipaddress.ip_address(raw)
    if address.version != version:
        raise ValueError("not an IPv%d address" % version)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # one notation per device, however the balancer listens
    return str(address)


def parse_v1(line: bytes) -> ProxyHeader:
    """One complete v1 line, CRLF included (canonical form only: single spaces, decimal ports)."""
    if len(line) > V1_MAX_BYTES:
        raise ProxyHeaderError("proxy-oversized", "PROXY v1 line longer than %d bytes" % V1_MAX_BYTES)
    match = _V1_LINE.fullmatch(line)
    if match is None:
        raise ProxyHeaderError("proxy-malformed", "malformed PROXY v1 line %r" % line[:V1_MAX_BYTES])
    family, src, dst, sport, dport = match.groups()
    if family is None:
        return ProxyHeader(1, "proxy", "unspec", None, None, len(line))
    version = 4 if family == b"TCP4" else 6
    try:
        source = (_ip(src.decode("ascii"), version), int(sport))
        destination = (_ip(dst.decode("ascii"), version), int(dport))
    except ValueError as exc:
        raise ProxyHeaderError("proxy-malformed", "PROXY v1 %s line with a bad address: %s" % (family.decode(), exc)) from None
    if source[1] > 65535 or destination[1] > 65535:
        raise ProxyHeaderError("proxy-malformed", "PROXY v1 port out of range in %r" % line)
    return ProxyHeader(1, "proxy", family.decode().lower(), source, destination, len(line))


def parse_v2_length(head: bytes) -> int:
    """The 16-byte v2 header: validated, and the length of the block that follows."""
    if len(head) != V2_HEADER_BYTES or head[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("proxy-malformed", "not a PROXY v2 signature")
    if head[12] >> 4 != 2:
        raise ProxyHeaderError("proxy-malformed", "PROXY v2 header with version %d" % (head[12] >> 4))
    if head[12] & 0x0F not in (0, 1):
        raise ProxyHeaderError("proxy-malformed", "PROXY v2 header with unknown command %d" % (head[12] & 0x0F))
    if head[13] >> 4 not in _FAMILIES or head[13] & 0x0F > 2:
        raise ProxyHeaderError("proxy-malformed", "PROXY v2 header with unknown family/protocol 0x%02x" % head[13])
    length = int(struct.unpack("!H", head[14:16])[0])
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(
            "proxy-oversized", "PROXY v2 header announces %d bytes of addresses and TLVs (at most %d)" % (length, V2_MAX_PAYLOAD)
        )
    return length


def parse_v2(head: bytes, payload: bytes) -> ProxyHeader:
    """The 16-byte v2 header and exactly the block its length field announced."""
    if parse_v2_length(head) != len(payload):
        raise ProxyHeaderError("proxy-truncated", "PROXY v2 block shorter than its length field")
    command = "local" if head[12] & 0x0F == 0 else "proxy"
    family, transport = _FAMILIES[head[13] >> 4], head[13] & 0x0F
    total = V2_HEADER_BYTES + len(payload)
    if command == "local":
        # The balancer's own connection (health check): the address block is to be ignored.
        return ProxyHeader(2, "local", family, None, None, total)
    need = _ADDRESS_BYTES[family]
    if len(payload) < need:
        raise ProxyHeaderError("proxy-malformed", "PROXY v2 %s header with %d address bytes (needs %d)" % (family, len(payload), need))
    if family in ("tcp4", "tcp6") and transport != 1:
        raise ProxyHeaderError("proxy-malformed", "PROXY v2 %s header for a datagram or unspecified protocol" % family)
    _check_tlvs(head, payload, need)
    if family == "tcp4":
        sip, dip, sport, dport = struct.unpack("!4s4sHH", payload[:12])
        return ProxyHeader(2, command, family, (_ip(sip, 4), sport), (_ip(dip, 4), dport), total)
    if family == "tcp6":
        sip, dip, sport, dport = struct.unpack("!16s16sHH", payload[:36])
        return ProxyHeader(2, command, family, (_ip(sip, 6), sport), (_ip(dip, 6), dport), total)
    return ProxyHeader(2, command, family, None, None, total)  # unix, unspec: no device address


def _check_tlvs(head: bytes, payload: bytes, start: int) -> None:
    """TLVs must tile the rest of the block exactly; a CRC32C TLV must match."""
    offset = start
    while offset < len(payload):
        if offset + 3 > len(payload):
            raise ProxyHeaderError("proxy-malformed", "PROXY v2 TLV header cut short")
        kind, size = payload[offset], struct.unpack("!H", payload[offset + 1 : offset + 3])[0]
        end = offset + 3 + size
        if end > len(payload):
            raise ProxyHeaderError("proxy-malformed", "PROXY v2 TLV 0x%02x longer than the block" % kind)
        if kind == _PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyHeaderError("proxy-malformed", "PROXY v2 CRC32C TLV of %d bytes" % size)
            zeroed = head + payload[: offset + 3] + b"\0\0\0\0" + payload[end:]
            if crc32c(zeroed) != struct.unpack("!I", payload[offset + 3 : end])[0]:
                raise ProxyHeaderError("proxy-malformed", "PROXY v2 CRC32C does not match")
        offset = end


def _crc32c_table() -> List[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as PP2_TYPE_CRC32C uses; headers are small, a table loop will do."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def starts_like_proxy_header(data: bytes) -> bool:
    """Whether bytes a peer sent first are a PROXY signature (v1 ``PROXY `` or the v2 one)."""
    return data.startswith(V1_PREFIX) or data.startswith(V2_SIGNATURE)


# -- reading from an accepted socket ----------------------------------------------------------


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until the socket has bytes (or EOF) without reading them."""
    ready: "asyncio.Future[None]" = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray, total: int) -> None:
    while len(buf) < total:
        data = await loop.sock_recv(sock, total - len(buf))
        if not data:
            raise ProxyHeaderError("proxy-truncated", "connection closed after %d byte(s) of a PROXY header" % len(buf))
        buf += data


# The shortest valid header of either version ("PROXY UNKNOWN\r\n"): reading this much first
# never takes a byte past a valid header, and spares a peek when the bytes are already there.
_FIRST_READ = 15


async def _read_header(sock: socket.socket, buf: bytearray) -> ProxyHeader:
    loop = asyncio.get_running_loop()
    first = await loop.sock_recv(sock, _FIRST_READ)
    if not first:
        raise ProxyHeaderError("proxy-truncated", "connection closed before a PROXY header")
    buf += first
    if buf[:1] == V2_SIGNATURE[:1]:
        # v2: every byte up to the length field's end is header, then exactly that many more.
        while True:
            if not V2_SIGNATURE.startswith(bytes(buf[:12])):
                raise ProxyHeaderError("proxy-missing", "the load balancer sent %r, not a PROXY header" % bytes(buf))
            if len(buf) >= V2_HEADER_BYTES:
                break
            data = await loop.sock_recv(sock, V2_HEADER_BYTES - len(buf))
            if not data:
                raise ProxyHeaderError("proxy-truncated", "connection closed after %d byte(s) of a PROXY header" % len(buf))
            buf += data
        head = bytes(buf)
        length = parse_v2_length(head)
        await _recv_exactly(loop, sock, buf, V2_HEADER_BYTES + length)
        return parse_v2(head, bytes(buf[V2_HEADER_BYTES:]))
    if buf[:1] == V1_PREFIX[:1]:
        # v1: peek for the line end and take no byte past it; what was peeked without one is
        # all header, so it is consumed and the next wait blocks until new bytes come.
        end = buf.find(b"\n")
        while True:
            if not V1_PREFIX.startswith(bytes(buf[:6])):
                raise ProxyHeaderError("proxy-missing", "the load balancer sent %r, not a PROXY header" % bytes(buf[:16]))
            if end >= 0:
                # a line end inside the first read is a line shorter than any valid one, and
                # is refused by the parser (the bytes after it do not matter then)
                return parse_v1(bytes(buf[: end + 1]))
            if len(buf) >= V1_MAX_BYTES:
                raise ProxyHeaderError("proxy-oversized", "no line end within %d bytes of a PROXY v1 header" % V1_MAX_BYTES)
            await _readable(loop, sock)
            peeked = sock.recv(V1_MAX_BYTES - len(buf), socket.MSG_PEEK)
            if not peeked:
                raise ProxyHeaderError("proxy-truncated", "connection closed after %d byte(s) of a PROXY v1 line" % len(buf))
            found = peeked.find(b"\n")
            taken = len(buf)
            buf += sock.recv(found + 1 if found >= 0 else len(peeked))
            end = taken + found if found >= 0 else -1
    raise ProxyHeaderError("proxy-missing", "the load balancer sent %r, not a PROXY header" % bytes(buf))


async def read_proxy_header(sock: socket.socket, *, timeout: float) -> ProxyHeader:
    """Read one PROXY header from a non-blocking accepted socket, and not one byte more.

    Raises :class:`ProxyHeaderError` (``proxy-timeout`` when the whole header did not come
    within ``timeout`` s: a slow or silent sender costs a socket and this coroutine, no more).
    """
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            return await _read_header(sock, buf)
    except TimeoutError:
        raise ProxyHeaderError(
            "proxy-timeout", "no complete PROXY header within proxy_protocol_timeout (%g s), %d byte(s) came" % (timeout, len(buf))
        ) from None
    except OSError as exc:
        raise ProxyHeaderError("proxy-truncated", "cannot read the PROXY header: %s" % (exc.strerror or exc)) from None


class ProxiedSocket(socket.socket):
    """An accepted socket whose peer is the device named in its PROXY header.

    asyncio transports, asyncssh and the listener's transports all learn the peer from
    ``getpeername()`` (or from the address handed over with the socket), so this one override
    makes every layer see the device instead of the balancer. ``balancer`` keeps the real one.
    """

    def __init__(self, sock: socket.socket, peer: Address) -> None:
        balancer = sock.getpeername()
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.setblocking(False)  # a socket object rebuilt from a descriptor starts "blocking"
        self.proxied_peer = peer
        self.balancer = balancer

    def getpeername(self) -> Any:
        return self.proxied_peer


def _names_itself(header: ProxyHeader, addr: Tuple[Any, ...]) -> bool:
    """A header whose source is this very connection's balancer end: the balancer's own
    connection. HAProxy's v1 health checks (``check-send-proxy`` with ``send-proxy``) send
    ``PROXY TCP4 <its address> <node> <its port> <node port>``, not ``UNKNOWN``; no device can
    be the balancer's own address and port."""
    if header.source is None:
        return False
    try:
        own = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
        if isinstance(own, ipaddress.IPv6Address) and own.ipv4_mapped is not None:
            own = own.ipv4_mapped
        return header.source == (str(own), int(addr[1]))
    except (ValueError, IndexError):
        return False


Handler = Callable[[socket.socket, Tuple[Any, ...]], Awaitable[None]]
# Ports where the device speaks first (the SSH banner, the outbound-ssh preamble): a PROXY header
# from an address that is not a balancer is waited for there; where the listener speaks first
# (TLS ClientHello) only bytes already there are looked at, and the handshake refuses the rest.
DEVICE_SPEAKS_FIRST = ("ssh", "outbound_ssh")


class ProxyProtocolGate:
    """The accept path's PROXY step, for every kind of port (service.CallHomeListener).

    From a balancer (``proxy_protocol_from``): the header is mandatory, read exactly, and the
    socket is handed on as a :class:`ProxiedSocket` under the device's address; a balancer's
    LOCAL/UNKNOWN connection (a health check) is closed quietly. Its failures are logged and
    counted (``on_refused``) but never held against the balancer's address in admission: that
    would block every device behind it. From anyone else: bytes that start with a PROXY
    signature are refused (``proxy-header-untrusted``, counted against that address).
    """

    def __init__(
        self,
        networks: Sequence[str],
        *,
        timeout: float,
        admission: Admission,
        events: TransportEvents,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.networks = [ipaddress.ip_network(n, strict=True) for n in networks]
        self.timeout = timeout
        self.admission = admission
        self.events = events
        self.on_refused = on_refused
        self.health_checks = 0
        self.refused: Dict[str, int] = {}
        self.pending = 0  # headers being read

    @property
    def enabled(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    async def accept(self, sock: socket.socket, addr: Tuple[Any, ...], handler: Handler, kind: str) -> None:
        """One accepted connection on a port of ``kind``: PROXY step, then ``handler``.

        While it waits for bytes (a balancer's header; a direct peer's first bytes where the
        device speaks first) the connection holds a handshake slot (``max_handshakes``), so a
        flood of silent connections is bounded as a flood of stalled handshakes is; the slot is
        released before the transport takes its own. ``kind == "ssh"``: the SSH client checks
        the address's block itself (asyncssh's connection_made), so it is not asked twice here
        (a limited address would spend two tokens).
        """
        if self.trusts(str(addr[0])):
            if not self.admission.acquire(format_peer(addr)):
                sock.close()
                return
            try:
                accepted = await self._from_balancer(sock, addr, check_blocked=kind != "ssh")
            finally:
                self.admission.release()
            if accepted is not None:
                await handler(*accepted)
            return
        if kind != "ssh" and self.admission.is_blocked(str(addr[0])):
            sock.close()
            return
        if kind in DEVICE_SPEAKS_FIRST:
            if not self.admission.acquire(format_peer(addr)):
                sock.close()
                return
            try:
                untrusted = await self._untrusted_header(sock, kind)
            finally:
                self.admission.release()
        else:
            untrusted = await self._untrusted_header(sock, kind)
        if untrusted:
            sock.close()
            self.refused["proxy-header-untrusted"] = self.refused.get("proxy-header-untrusted", 0) + 1
            self.events.handshake_failed(
                HandshakeFailure(
                    transport=kind,
                    peer=format_peer(addr),
                    reason="proxy-header-untrusted",
                    message="a PROXY header from %s, which is not in proxy_protocol_from: refused (only a listed "
                    "load balancer's header is read)" % addr[0],
                )
            )
            return
        await handler(sock, addr)

    async def _untrusted_header(self, sock: socket.socket, kind: str) -> bool:
        try:
            if kind in DEVICE_SPEAKS_FIRST:
                try:
                    async with asyncio.timeout(self.timeout):
                        await _readable(asyncio.get_running_loop(), sock)
                except TimeoutError:
                    return False  # silent so far: the transport's own handshake timeout decides
            data = sock.recv(len(V2_SIGNATURE), socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False  # reset: the transport sees it and reports it
        return starts_like_proxy_header(data)

    async def _from_balancer(
        self, sock: socket.socket, addr: Tuple[Any, ...], *, check_blocked: bool
    ) -> Optional[Tuple[socket.socket, Address]]:
        """The balancer's header read: the device's socket and address, or None (closed)."""
        balancer = format_peer(addr)
        started = time.monotonic()
        self.pending += 1
        try:
            header = await read_proxy_header(sock, timeout=self.timeout)
        except ProxyHeaderError as exc:
            sock.close()
            self._count(exc.reason)
            log.warning("event=proxy.refused balancer=%s reason=%s message=%r", balancer, exc.reason, str(exc))
            return None
        except BaseException:
            sock.close()
            raise
        finally:
            self.pending -= 1
        if header.health_check or _names_itself(header, addr):
            sock.close()
            self.health_checks += 1
            log.debug("event=proxy.health_check balancer=%s version=%d", balancer, header.version)
            return None
        if header.source is None:
            sock.close()
            self._count("proxy-no-address")
            log.warning(
                "event=proxy.refused balancer=%s reason=proxy-no-address message=%r",
                balancer,
                "PROXY v%d header of family %s carries no device address" % (header.version, header.family),
            )
            return None
        if check_blocked and self.admission.is_blocked(header.source[0]):
            sock.close()
            return None
        try:
            proxied = ProxiedSocket(sock, header.source)
        except OSError:
            sock.close()  # the balancer already dropped it
            return None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=proxy.accepted balancer=%s peer=%s version=%d header_ms=%.1f",
                balancer,
                format_peer(header.source),
                header.version,
                (time.monotonic() - started) * 1000,
            )
        return proxied, header.source

    def _count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.on_refused(reason)


__all__ = (
    "ProxiedSocket",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyProtocolGate",
    "V1_MAX_BYTES",
    "V2_MAX_PAYLOAD",
    "V2_SIGNATURE",
    "crc32c",
    "parse_v1",
    "parse_v2",
    "parse_v2_length",
    "read_proxy_header",
    "starts_like_proxy_header",
)
