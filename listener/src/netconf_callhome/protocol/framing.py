# SPDX-License-Identifier: GPL-3.0-or-later
"""NETCONF message framing (RFC 6242), the hello exchange and the one safe XML parser.

Protocol layer of the listener: no I/O here, only byte-in/messages-out codecs, so the SSH and
TLS transports and the lease proxy share one implementation and one set of limits.

Two properties every path that reads a peer's bytes relies on:

* **framing is linear** in the bytes received: the end-of-message search covers only the new
  bytes plus ``len(EOM) - 1`` of overlap, and chunk data is copied once, so a peer cannot make
  the listener rescan what it already holds (64 MiB in 64 KiB pieces was 22 s of CPU when the
  whole buffer was searched on each read). The size bound is enforced while reading.
* **XML is parsed by one parser configuration** (:func:`xml_events`): libxml2 (lxml) with
  entity substitution, DTD loading and network access off and its default size limits, and any
  document with a document type declaration refused *by the parser's own view of the
  document*, so the refusal holds in whatever encoding the document declares (a byte pattern
  such as ``<!DOCTYPE`` is not there to see in UTF-16 or UTF-32).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

from lxml import etree

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
_CHUNK_HEADER_PREFIX = re.compile(rb"\n(#([1-9][0-9]{0,9}(\n)?)?|#(#\n?)?)?")
_LONGEST_HEADER = 13  # "\n#4294967295\n"
_OVERLAP = len(EOM) - 1  # an end-of-message marker may begin in the last bytes already searched
_FEED = 65536  # bytes handed to the XML parser at a time

CLIENT_HELLO = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<hello xmlns="%s"><capabilities>'
    "<capability>%s</capability><capability>%s</capability>"
    "</capabilities></hello>" % (NS_BASE, BASE_10, BASE_11)
).encode("ascii")


class Framer:
    """Incremental decoder/encoder for one direction of a NETCONF session.

    Starts in end-of-message mode (hellos are always EOM-framed) and switches to chunked
    framing with :meth:`use_chunked` once both hellos advertise base:1.1. The work per
    :meth:`feed` is proportional to the bytes fed (``scanned`` counts the bytes the
    end-of-message search examined, for the tests that hold it to that).
    """

    __slots__ = ("chunked", "max_message", "scanned", "_buf", "_scan", "_msg", "_need")

    def __init__(self, max_message: int) -> None:
        self.chunked = False
        self.max_message = max_message
        self.scanned = 0
        self._buf = bytearray()  # EOM mode: the message being received; chunked: a header
        self._scan = 0  # EOM mode: no marker starts before this offset of _buf
        self._msg = bytearray()  # chunked mode: the data of the chunks received so far
        self._need = 0  # chunked mode: bytes of the current chunk still to come

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

    def pending_bytes(self) -> int:
        return len(self._buf) + len(self._msg)

    def _too_large(self, size: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            "NETCONF message exceeds %d bytes (%d read before its end; the limit is the listener's"
            " max_hello_bytes for a hello, max_message_bytes after it)" % (self.max_message, size)
        )

    def _eom_messages(self) -> List[bytes]:
        out: List[bytes] = []
        buf = self._buf
        start = 0  # where the current message begins in buf
        while True:
            end = buf.find(EOM, self._scan)
            if end < 0:
                self.scanned += len(buf) - self._scan
                # Only the last len(EOM) - 1 bytes can still be the start of a marker.
                self._scan = max(start, len(buf) - _OVERLAP)
                break
            self.scanned += end + len(EOM) - self._scan
            if end - start > self.max_message:
                raise self._too_large(end - start)
            out.append(bytes(buf[start:end]))
            start = self._scan = end + len(EOM)
        if start:
            del buf[:start]
            self._scan -= start
        # The message is at least this long even if the last bytes begin its marker.
        if len(buf) - _OVERLAP > self.max_message:
            raise self._too_large(len(buf))
        return out

    def _chunked_messages(self) -> List[bytes]:
        """Decode ``\\n#<len>\\n<data>...\\n##\\n``: chunk data is copied once, straight into the
        message; only a chunk header (at most 13 bytes) ever waits in the buffer."""
        out: List[bytes] = []
        buf = self._buf
        pos = 0
        while pos < len(buf):
            if self._need:
                take = min(self._need, len(buf) - pos)
                self._msg += memoryview(buf)[pos : pos + take]
                self._need -= take
                pos += take
                continue
            if buf.startswith(b"\n##\n", pos):
                pos += 4
                if not self._msg:
                    raise FramingError("empty chunked NETCONF message")
                out.append(bytes(self._msg))
                self._msg = bytearray()
                continue
            match = _CHUNK_HEADER.match(buf, pos)
            if match is None:
                rest = bytes(buf[pos : pos + _LONGEST_HEADER])
                if len(buf) - pos >= _LONGEST_HEADER or not _CHUNK_HEADER_PREFIX.fullmatch(rest):
                    raise FramingError("invalid chunk header %r" % rest)
                break  # an incomplete header: wait for its end
            length = int(match.group(1))
            if length > MAX_CHUNK:
                raise FramingError("chunk size %d exceeds RFC 6242 maximum" % length)
            if len(self._msg) + length > self.max_message:
                raise self._too_large(len(self._msg) + length)
            self._need = length
            pos = match.end()
        del buf[:pos]
        return out


# -- XML ---------------------------------------------------------------------------------------


def _pull_parser() -> Any:
    """A new libxml2 pull parser that never substitutes entities, loads a DTD or opens a URL;
    ``huge_tree=False`` keeps libxml2's limits on depth, text size and entity amplification."""
    return etree.XMLPullParser(
        events=("start", "end"),
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        dtd_validation=False,
    )


def refuse_dtd(element: Any, what: str = "NETCONF message") -> None:
    """FramingError when the document of ``element`` has a document type declaration.

    Asked of the parsed document, not of its bytes: a ``<!DOCTYPE`` in UTF-16 is the same DTD.
    """
    docinfo = element.getroottree().docinfo
    if (
        docinfo.doctype
        or docinfo.internalDTD is not None
        or docinfo.externalDTD is not None
        or docinfo.system_url
        or docinfo.public_id
    ):
        raise FramingError(
            "%s carries a DTD (<!DOCTYPE ...>); refused: NETCONF never needs one and its entities could expand" % what
        )


def xml_events(message: bytes, what: str = "NETCONF message") -> Iterator[Tuple[str, Any]]:
    """("start" | "end", element) events of ``message``, parsed 64 KiB at a time.

    Every device (and lease client) message the listener reads goes through here. The document
    is checked at the root element's start tag, before any content: a document with a DTD is
    refused (:func:`refuse_dtd`) before an entity could be referenced, in any encoding. Stop
    iterating early to stop parsing. FramingError for a refused or malformed document.
    """
    parser = _pull_parser()
    checked = False
    try:
        for offset in range(0, max(len(message), 1), _FEED):
            parser.feed(message[offset : offset + _FEED])
            for event, element in parser.read_events():
                if not checked:
                    refuse_dtd(element, what)
                    checked = True
                yield event, element
        parser.close()
        for event, element in parser.read_events():
            if not checked:
                refuse_dtd(element, what)
                checked = True
            yield event, element
    except etree.XMLSyntaxError as exc:
        raise FramingError("%s is not well-formed XML: %s" % (what, exc)) from None


def parse_xml(message: bytes, what: str = "NETCONF message") -> Any:
    """The root element of ``message``, parsed as :func:`xml_events` parses it."""
    root = None
    for _event, element in xml_events(message, what):
        if root is None:
            root = element
    assert root is not None  # a well-formed document has a root element
    return root


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


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
    root = parse_xml(message, "hello")
    if local_name(root.tag) != "hello":
        raise FramingError("expected <hello>, got <%s>" % local_name(root.tag))
    caps = [text for text in ("".join(el.itertext()).strip() for el in root.iter("{*}capability")) if text]
    if BASE_10 not in caps and BASE_11 not in caps:
        raise FramingError("hello advertises neither base:1.0 nor base:1.1")
    sid = None
    for el in root.iterchildren("{*}session-id"):
        text = (el.text or "").strip()
        if text.isdigit():
            sid = int(text)
    return Hello(capabilities=caps, session_id=sid, raw=message)
