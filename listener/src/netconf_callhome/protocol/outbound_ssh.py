# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, Junos ``outbound-ssh``: a ``MSG-ID: DEVICE-CONN-INFO`` preamble, then SSH.

On these ports the listener reads the preamble lines (for the DEVICE-ID, a claim that only
labels a key mismatch; the host key still decides), then runs the same SSH client as on 4334.

The preamble is read by an asyncio protocol on the connection's own transport: the event loop
calls it only when bytes arrive, so a peer that sends part of a line and stops costs nothing
until ``handshake_timeout`` (the reader used to peek at the socket and wait for it to be
readable again, which it still was: a busy loop). Bytes after the preamble stay in the same
transport, which is then handed, with them, to asyncssh. Bounds: :data:`MAX_LINE` bytes per
line, :data:`MAX_LINES` lines, :data:`PREAMBLE_LIMIT` bytes in all, ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Dict, Optional, Tuple

from netconf_callhome.netutil import format_peer
from netconf_callhome.protocol.events import HandshakeFailure
from netconf_callhome.protocol.ssh import SSHTransport

log = logging.getLogger("netconf_callhome.ssh")

# A Junos preamble is five short lines (MSG-ID, MSG-VER, DEVICE-ID, HOST-KEY, HMAC); the longest
# is HOST-KEY, under 1 KiB for an RSA-4096 key in base64.
MAX_LINE = 4096
MAX_LINES = 16
PREAMBLE_LIMIT = 16 * 1024
_BANNER = b"SSH-"


class PreambleError(ValueError):
    """The peer's bytes are not an acceptable outbound-ssh preamble (the reason is the message)."""


class PreambleReader(asyncio.Protocol):
    """Reads ``KEY: value`` lines up to the SSH banner; :attr:`done` then holds (fields, the
    bytes from the banner on) and reading is paused, so nothing more arrives before the
    transport is handed over."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.done: "asyncio.Future[Tuple[Dict[str, str], bytes]]" = asyncio.get_running_loop().create_future()
        self.fields: Dict[str, str] = {}
        self._buf = bytearray()  # the current line, from its start
        self._scan = 0  # no newline in _buf before this offset
        self._lines = 0
        self._consumed = 0  # bytes of complete lines

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._buf += data
        try:
            self._lines_in_buffer()
        except PreambleError as exc:
            self.done.set_exception(exc)

    def _lines_in_buffer(self) -> None:
        buf = self._buf
        while True:
            if buf.startswith(_BANNER):
                if not self.fields:
                    raise PreambleError("no outbound-ssh preamble before the SSH banner")
                assert self.transport is not None
                self.transport.pause_reading()  # the rest belongs to SSH
                self.done.set_result((self.fields, bytes(buf)))
                return
            end = buf.find(b"\n", self._scan)
            if end < 0:
                if len(buf) > MAX_LINE:
                    raise PreambleError("outbound-ssh preamble line longer than %d bytes without a newline" % MAX_LINE)
                self._scan = len(buf)
                return
            if end > MAX_LINE:
                raise PreambleError("outbound-ssh preamble line longer than %d bytes" % MAX_LINE)
            self._lines += 1
            if self._lines > MAX_LINES:
                raise PreambleError("outbound-ssh preamble has more than %d lines" % MAX_LINES)
            self._consumed += end + 1
            if self._consumed > PREAMBLE_LIMIT:
                raise PreambleError("outbound-ssh preamble exceeds %d bytes" % PREAMBLE_LIMIT)
            self._field(bytes(buf[:end]))
            del buf[: end + 1]
            self._scan = 0

    def _field(self, raw: bytes) -> None:
        key, sep, value = raw.decode("utf-8", "replace").partition(":")
        if sep and key.strip():
            self.fields[key.strip().upper()] = value.strip()
        if "MSG-ID" in self.fields and self.fields["MSG-ID"] != "DEVICE-CONN-INFO":
            raise PreambleError("unexpected outbound-ssh MSG-ID %r" % self.fields["MSG-ID"])

    def eof_received(self) -> bool:
        self._closed("connection closed during the outbound-ssh preamble")
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._closed("connection lost during the outbound-ssh preamble" + (": %s" % exc if exc else ""))

    def _closed(self, message: str) -> None:
        if not self.done.done():
            self.done.set_exception(PreambleError(message))


class OutboundSSHTransport:
    """Accepted sockets on an outbound-ssh port: read the preamble, hand the rest to SSH."""

    def __init__(self, ssh: SSHTransport, *, handshake_timeout: float) -> None:
        self.ssh = ssh
        self.handshake_timeout = handshake_timeout

    async def handle(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        peer = format_peer(addr)
        try:
            transport, reader = await loop.connect_accepted_socket(PreambleReader, sock=sock)
        except OSError as exc:
            sock.close()
            self._failed(peer, "cannot read the outbound-ssh preamble: %s" % exc)
            return
        assert isinstance(transport, asyncio.Transport)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                fields, rest = await reader.done
        except (TimeoutError, PreambleError) as exc:
            transport.abort()
            self._failed(peer, str(exc) or "no complete outbound-ssh preamble within %g s" % self.handshake_timeout)
            return
        except BaseException:
            transport.abort()
            raise
        device_id = fields.get("DEVICE-ID", "")
        log.info(
            "event=outbound_ssh.preamble peer=%s device_id=%s msg_ver=%s", peer, device_id, fields.get("MSG-VER", "")
        )
        # The SSH client takes over the same transport, with the bytes read past the preamble.
        conn = self.ssh.connection(loop, device_id)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if rest and not transport.is_closing():
            conn.data_received(rest)
        transport.resume_reading()

    def _failed(self, peer: str, message: str) -> None:
        self.ssh.events.handshake_failed(
            HandshakeFailure(transport="ssh", peer=peer, reason="outbound-ssh-preamble", message=message)
        )
