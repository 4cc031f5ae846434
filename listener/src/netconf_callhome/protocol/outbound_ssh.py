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

With ``secret`` configured, Junos adds ``HOST-KEY: <alg> <base64>`` and ``HMAC: <40 hex digits>``,
the HMAC-SHA1 of the HOST-KEY text keyed with the secret (Juniper: "the device communicates its
device ID, its public SSH host key, and an SHA1 hash derived in part from the secret"; Juniper's
own provisioning server computes ``hmac.new(key=secret, msg=HOST-KEY, digestmod=sha1)``). The
preamble is parsed into a :class:`Preamble` here and verified by :func:`verify_hmac`; *whether*
a secret applies, and what a verified device gets, is the policy's (``OutboundSSHEvents``), asked
when the SSH handshake has proved a host key, so that the HMAC (which anyone who saw one preamble
can replay) only counts for the key the peer then proves it holds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import logging
import socket
from dataclasses import dataclass
from typing import Any, Dict, Optional, Protocol, Tuple, Union

import asyncssh
from asyncssh.public_key import decode_ssh_public_key

from netconf_callhome.errors import OutboundSSHPreambleError
from netconf_callhome.netutil import format_peer
from netconf_callhome.protocol.events import HandshakeFailure, SSHLogin
from netconf_callhome.protocol.ssh import DeviceSSHClient, HostKeyCheck, SSHTransport

log = logging.getLogger("netconf_callhome.ssh")

# A Junos preamble is five short lines (MSG-ID, MSG-VER, DEVICE-ID, HOST-KEY, HMAC); the longest
# is HOST-KEY, under 1 KiB for an RSA-4096 key in base64.
MAX_LINE = 4096
MAX_LINES = 16
PREAMBLE_LIMIT = 16 * 1024
_BANNER = b"SSH-"
# HMAC-SHA1 in hexadecimal, the only form Junos sends.
HMAC_HEX_LENGTH = 40

# Why a device with a secret is refused (pending entry reason, handshake failure reason, metric label).
HMAC_MISSING = "hmac-missing"  # a secret applies, the preamble has no HOST-KEY or no HMAC
HMAC_FAILED = "hmac-failed"  # malformed, or does not verify with the secret
HOST_KEY_DIFFERS = "host-key-differs"  # the HMAC covers a key the SSH handshake did not prove
SECRET_UNAVAILABLE = "secret-unavailable"  # a secret applies but cannot be read (the listener's side)


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


@dataclass(frozen=True)
class Preamble:
    """What a DEVICE-CONN-INFO preamble said. Every field is the peer's own word."""

    device_id: str
    msg_ver: str = ""
    host_key: str = ""  # the HOST-KEY text the HMAC covers ('' when absent)
    hmac: str = ""  # the HMAC field as sent ('' when absent)
    host_key_fingerprint: str = ""  # SHA256 fingerprint of the announced key ('' when absent or unparsable)
    host_key_error: str = ""  # why HOST-KEY did not parse as an SSH public key

    @classmethod
    def from_fields(cls, fields: Dict[str, str]) -> "Preamble":
        # Junos has been seen to end HOST-KEY with a NUL (Juniper's YAPT strips it before the HMAC).
        host_key = fields.get("HOST-KEY", "").strip("\x00 \t")
        fingerprint, error = "", ""
        if host_key:
            try:
                fingerprint = parse_host_key(host_key).get_fingerprint("sha256")
            except ValueError as exc:
                error = str(exc)
        return cls(
            device_id=fields.get("DEVICE-ID", ""),
            msg_ver=fields.get("MSG-VER", ""),
            host_key=host_key,
            hmac=fields.get("HMAC", ""),
            host_key_fingerprint=fingerprint,
            host_key_error=error,
        )


def parse_host_key(text: str) -> asyncssh.SSHKey:
    """A HOST-KEY value: an OpenSSH public key line (``ssh-rsa AAAA...``), or its bare base64."""
    try:
        return asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError, UnicodeError):
        pass
    try:
        return decode_ssh_public_key(base64.b64decode(text.encode("ascii"), validate=True))
    except (asyncssh.KeyImportError, ValueError, UnicodeError, binascii.Error):
        raise ValueError("HOST-KEY is not an SSH public key") from None


class HMACError(ValueError):
    """The HMAC of a preamble does not prove the secret; ``reason`` is HMAC_MISSING or HMAC_FAILED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def host_key_hmac(secret: bytes, host_key: str) -> str:
    """What a device with ``secret`` sends as HMAC for ``host_key`` (hex HMAC-SHA1)."""
    return hmac.new(secret, host_key.encode("utf-8"), hashlib.sha1).hexdigest()


def verify_hmac(secret: bytes, host_key: str, received: str) -> None:
    """Raise :class:`HMACError` unless ``received`` is HMAC-SHA1(``secret``, ``host_key``).

    The comparison is constant-time (:func:`hmac.compare_digest` on the digests), so the time a
    refusal takes says nothing about how many leading bytes of a guess were right. SHA-1 is what
    Junos sends; HMAC-SHA1 does not rest on SHA-1's collision resistance (RFC 6151 section 3)."""
    if not host_key or not received:
        missing = "HOST-KEY" if not host_key else "HMAC"
        raise HMACError(HMAC_MISSING, "the preamble has no %s" % missing)
    text = received.strip()
    if len(text) != HMAC_HEX_LENGTH:
        raise HMACError(
            HMAC_FAILED, "HMAC is %d characters, not the %d hex digits of HMAC-SHA1" % (len(text), HMAC_HEX_LENGTH)
        )
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        raise HMACError(HMAC_FAILED, "HMAC is not hexadecimal") from None
    expected = hmac.new(secret, host_key.encode("utf-8"), hashlib.sha1).digest()
    if not hmac.compare_digest(expected, digest):
        raise HMACError(HMAC_FAILED, "HMAC does not verify with the configured secret")


@dataclass(frozen=True)
class HostKeyRefusal:
    """A proved host key refused for an outbound-ssh reason (already recorded upstream)."""

    reason: str  # HMAC_MISSING, HMAC_FAILED, HOST_KEY_DIFFERS, SECRET_UNAVAILABLE, ...
    message: str


@dataclass(frozen=True)
class GatedLogin:
    """A login whose session must wait for ``gate`` (a zero-touch enrollment being written): the
    SSH handshake and login go on meanwhile, the NETCONF session opens only when the gate says
    '' (go); any other text refuses it with that reason (``enroll-failed``)."""

    login: SSHLogin
    gate: "asyncio.Future[str]"


class OutboundSSHEvents(Protocol):
    """The outbound-ssh trust decision, taken by the service with the policy."""

    def outbound_ssh_host_key(
        self, key: asyncssh.SSHKey, *, peer: str, preamble: Preamble
    ) -> Union[SSHLogin, GatedLogin, HostKeyRefusal, None]:
        """The login for a key the handshake proved, given what the preamble said; a
        :class:`HostKeyRefusal` or None (a plain unknown/mismatched key) when refused, which the
        events side has recorded."""


class OutboundSSHTransport:
    """Accepted sockets on an outbound-ssh port: read the preamble, hand the rest to SSH."""

    def __init__(
        self, ssh: SSHTransport, *, handshake_timeout: float, events: Optional[OutboundSSHEvents] = None
    ) -> None:
        self.ssh = ssh
        self.handshake_timeout = handshake_timeout
        self.events = events  # None: the DEVICE-ID is a label only, HOST-KEY/HMAC are ignored

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
        await self._preamble(transport, reader, peer)

    async def takeover(self, transport: asyncio.Transport, peer: str, data: bytes) -> None:
        """A connection whose first bytes another protocol read (the single call-home port's
        detector, which paused the transport): the preamble reader goes on from those bytes."""
        reader = PreambleReader()
        transport.set_protocol(reader)
        reader.connection_made(transport)
        reader.data_received(data)
        if not reader.done.done():
            transport.resume_reading()
        await self._preamble(transport, reader, peer)

    async def _preamble(self, transport: asyncio.Transport, reader: PreambleReader, peer: str) -> None:
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
        preamble = Preamble.from_fields(fields)
        log.info(
            "event=outbound_ssh.preamble peer=%s device_id=%s msg_ver=%s host_key=%s hmac=%s",
            peer,
            preamble.device_id,
            preamble.msg_ver,
            preamble.host_key_fingerprint or ("unparsable" if preamble.host_key else "none"),
            "yes" if preamble.hmac else "no",
        )
        check = functools.partial(self._host_key, preamble) if self.events is not None else None
        # The SSH client takes over the same transport, with the bytes read past the preamble.
        start_ssh(self.ssh, transport, rest, preamble.device_id, host_key_check=check)

    def _host_key(self, preamble: Preamble, client: DeviceSSHClient, key: asyncssh.SSHKey) -> Optional[SSHLogin]:
        """The proved host key, judged with the preamble (DeviceSSHClient.host_key_check)."""
        assert self.events is not None
        answer = self.events.outbound_ssh_host_key(key, peer=client.peer, preamble=preamble)
        if isinstance(answer, HostKeyRefusal):
            client.refused_reason = answer.reason
            client.refused_message = answer.message
            return None
        if isinstance(answer, GatedLogin):
            client.gate = answer.gate
            return answer.login
        return answer

    def _failed(self, peer: str, message: str) -> None:
        self.ssh.events.handshake_failed(
            HandshakeFailure(transport="ssh", peer=peer, error=OutboundSSHPreambleError(message))
        )


def start_ssh(
    ssh: SSHTransport,
    transport: asyncio.Transport,
    data: bytes,
    device_id: str = "",
    *,
    host_key_check: Optional[HostKeyCheck] = None,
) -> None:
    """Hand a paused transport, and the bytes already read from it (from the SSH banner on), to
    the SSH client of 4334 (after an outbound-ssh preamble, or on the single call-home port).
    ``host_key_check``: the preamble's (HMAC, HOST-KEY) instead of the plain host key verdict."""
    conn = ssh.connection(asyncio.get_running_loop(), device_id, host_key_check=host_key_check)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    if data and not transport.is_closing():
        conn.data_received(data)
    transport.resume_reading()
