# SPDX-License-Identifier: GPL-3.0-or-later
"""NETCONF message framing (RFC 6242) and the hello exchange.

Protocol layer of the listener: no I/O here, only byte-in/messages-out codecs, so the SSH and
TLS transports and the lease proxy share one implementation and one set of limits.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import List, Optional

from netconf_callhome.errors import (
    FramingError,
    MessageTooLargeError,
)

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
NS_BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"
EOM = b"]]>]]>"
MAX_CHUNK = 4294967295
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_MESSAGE_ID = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?rpc\b[^>]*?\smessage-id\s*=\s*(['\"])(.*?)\1", re.S)
_REPLY_ID = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?rpc-reply\b[^>]*?\smessage-id\s*=\s*(['\"])(.*?)\1", re.S)
_CLOSE_SESSION = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?close-session\b")

CLIENT_HELLO = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<hello xmlns="%s"><capabilities>'
    "<capability>%s</capability><capability>%s</capability>"
    "</capabilities></hello>" % (NS_BASE, BASE_10, BASE_11)
).encode("ascii")


class Framer:
    """Incremental decoder/encoder for one direction of a NETCONF session.

    Starts in end-of-message mode (hellos are always EOM-framed) and switches to chunked
    framing with :meth:`use_chunked` once both hellos advertise base:1.1.
    """

    __slots__ = ("chunked", "max_message", "_buf", "_parts", "_size")

    def __init__(self, max_message: int) -> None:
        self.chunked = False
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: List[bytes] = []
        self._size = 0

    def use_chunked(self) -> List[bytes]:
        """Switch to chunked framing; returns messages already buffered behind the hello."""
        self.chunked = True
        return self._chunked_messages()

    def encode(self, message: bytes) -> bytes:
        if self.chunked:
            return b"\n#%d\n%s\n##\n" % (len(message), message)
        return message + EOM

    def feed(self, data: bytes) -> List[bytes]:
        """Add received bytes; return the complete messages now available."""
        self._buf += data
        return self._chunked_messages() if self.chunked else self._eom_messages()

    def _eom_messages(self) -> List[bytes]:
        out: List[bytes] = []
        while True:
            end = self._buf.find(EOM)
            if end < 0:
                if len(self._buf) > self.max_message:
                    raise MessageTooLargeError("NETCONF message exceeds %d bytes" % self.max_message)
                return out
            msg = bytes(self._buf[:end])
            del self._buf[: end + len(EOM)]
            if len(msg) > self.max_message:
                raise MessageTooLargeError("NETCONF message exceeds %d bytes" % self.max_message)
            out.append(msg)

    def _chunked_messages(self) -> List[bytes]:
        out = []
        buf = self._buf
        pos = 0
        while True:
            if len(buf) - pos < 4:
                break
            if buf[pos : pos + 4] == b"\n##\n":
                pos += 4
                if not self._parts:
                    raise FramingError("empty chunked NETCONF message")
                out.append(b"".join(self._parts))
                self._parts = []
                self._size = 0
                continue
            match = _CHUNK_HEADER.match(buf, pos)
            if match is None:
                if len(buf) - pos >= 13 or not _could_be_header(bytes(buf[pos:])):
                    raise FramingError("invalid chunk header %r" % bytes(buf[pos : pos + 13]))
                break
            length = int(match.group(1))
            if length > MAX_CHUNK:
                raise FramingError("chunk size %d exceeds RFC 6242 maximum" % length)
            if self._size + length > self.max_message:
                raise MessageTooLargeError("NETCONF message exceeds %d bytes" % self.max_message)
            start = match.end()
            if len(buf) - start < length:
                break
            self._parts.append(bytes(buf[start : start + length]))
            self._size += length
            pos = start + length
        del buf[:pos]
        return out

    def pending_bytes(self) -> int:
        return len(self._buf) + self._size


def _could_be_header(fragment: bytes) -> bool:
    """True if ``fragment`` is a prefix of a valid chunk header or end-of-chunks marker."""
    return bool(re.fullmatch(rb"\n(#([1-9][0-9]{0,9}(\n)?)?|#(#\n?)?)?", fragment))


def check_xml_safe(message: bytes) -> None:
    """Refuse DTDs outright: they carry entity expansion attacks and NETCONF never needs them."""
    if _DTD.search(message):
        raise FramingError("NETCONF message carries a DTD or entity declaration; refused")


@dataclass
class Hello:
    capabilities: List[str] = field(default_factory=list)
    session_id: Optional[int] = None
    raw: bytes = b""

    @property
    def base11(self) -> bool:
        return BASE_11 in self.capabilities


def parse_hello(message: bytes) -> Hello:
    """Parse a peer's ``<hello>``; raise FramingError with a reason for anything else."""
    check_xml_safe(message)
    try:
        root = ET.fromstring(message)
    except ET.ParseError as exc:
        raise FramingError("hello is not well-formed XML: %s" % exc) from None
    if _local(root.tag) != "hello":
        raise FramingError("expected <hello>, got <%s>" % _local(root.tag))
    caps = [(el.text or "").strip() for el in root.iter() if _local(el.tag) == "capability" and (el.text or "").strip()]
    if BASE_10 not in caps and BASE_11 not in caps:
        raise FramingError("hello advertises neither base:1.0 nor base:1.1")
    sid = None
    for el in root:
        if _local(el.tag) == "session-id" and (el.text or "").strip().isdigit():
            sid = int((el.text or "").strip())
    return Hello(capabilities=caps, session_id=sid, raw=message)


def message_id(message: bytes) -> Optional[bytes]:
    """The message-id of an ``<rpc>``; a cheap scan, the message is forwarded untouched."""
    match = _MESSAGE_ID.search(message, 0, 4096)
    return match.group(2) if match else None


def reply_id(message: bytes) -> Optional[bytes]:
    """The message-id an ``<rpc-reply>`` answers (None for notifications and id-less replies)."""
    match = _REPLY_ID.search(message, 0, 4096)
    return match.group(2) if match else None


def is_close_session(message: bytes) -> bool:
    return _CLOSE_SESSION.search(message, 0, 4096) is not None


def ok_reply(msg_id: Optional[bytes]) -> bytes:
    attr = b' message-id="%s"' % msg_id if msg_id is not None else b""
    return b'<rpc-reply xmlns="%s"%s><ok/></rpc-reply>' % (NS_BASE.encode(), attr)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
