# SPDX-License-Identifier: GPL-3.0-or-later
"""Just enough XML to multiplex one NETCONF session: the root start tag and the operation.

Two tools, both safe on untrusted input and both cheap on a 200 MB ``<edit-config>``:

* a lexer for the prolog and the root element's start tag. It gives the exact byte span of
  each attribute value, so the multiplexer replaces a ``message-id`` byte for byte and leaves
  everything else of a message as it came (a regular expression over the first kilobytes would
  also match ``<rpc message-id=...>`` inside a comment or a ``>`` inside an attribute value);
* expat (ElementTree's pull parser), fed piece by piece and stopped as soon as the operation
  and its target datastore are known, to classify an RPC by namespace-resolved names. DTDs are
  refused before (:func:`~netconf_callhome.protocol.framing.check_xml_safe`), so no entity is
  ever declared, let alone expanded.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Tuple
from xml.sax.saxutils import escape

from netconf_callhome.errors import FramingError
from netconf_callhome.protocol.framing import NS_BASE, check_xml_safe

NS_NOTIFICATION = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NS_SUBSCRIBED = "urn:ietf:params:xml:ns:yang:ietf-subscribed-notifications"

# Operations whose target datastore matters to the locks (RFC 6241 sections 7.2-7.6).
TARGET_OPERATIONS = frozenset({"lock", "unlock", "edit-config", "copy-config", "delete-config"})

_BOM = b"\xef\xbb\xbf"
_WS = re.compile(rb"[ \t\r\n]*")
_NAME = re.compile(rb"[^\s/>=<'\"?!]+")
_FEED = 65536


@dataclass
class Attribute:
    """One attribute of a start tag: its name and where its value lies (between the quotes)."""

    name: bytes
    start: int
    end: int
    quote: bytes


@dataclass
class StartTag:
    name: bytes
    attributes: List[Attribute] = field(default_factory=list)

    @property
    def local(self) -> bytes:
        return self.name.rsplit(b":", 1)[-1]

    def attribute(self, name: bytes) -> Optional[Attribute]:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        return None


def root_start_tag(message: bytes) -> StartTag:
    """The root element's start tag, skipping the XML declaration, comments and PIs before it."""
    pos = len(_BOM) if message.startswith(_BOM) else 0
    while True:
        pos = _match(_WS, message, pos)
        if message.startswith(b"<?", pos):
            end = message.find(b"?>", pos + 2)
            if end < 0:
                raise FramingError("unterminated processing instruction before the root element")
            pos = end + 2
        elif message.startswith(b"<!--", pos):
            end = message.find(b"-->", pos + 4)
            if end < 0:
                raise FramingError("unterminated comment before the root element")
            pos = end + 3
        elif message.startswith(b"<", pos) and not message.startswith(b"<!", pos):
            break
        else:
            raise FramingError("no root element in the message")
    name = _NAME.match(message, pos + 1)
    if name is None:
        raise FramingError("malformed root element")
    tag = StartTag(name.group())
    pos = name.end()
    while True:
        after_ws = _match(_WS, message, pos)
        if message.startswith(b">", after_ws) or message.startswith(b"/>", after_ws):
            return tag
        attr_name = _NAME.match(message, after_ws)
        if after_ws == pos or attr_name is None:  # XML needs white space before each attribute
            raise FramingError("malformed start tag <%s>" % tag.name.decode("utf-8", "replace"))
        pos = _match(_WS, message, attr_name.end())
        if message[pos : pos + 1] != b"=":
            raise FramingError("attribute without a value in <%s>" % tag.name.decode("utf-8", "replace"))
        pos = _match(_WS, message, pos + 1)
        quote = message[pos : pos + 1]
        if quote not in (b'"', b"'"):
            raise FramingError("unquoted attribute value in <%s>" % tag.name.decode("utf-8", "replace"))
        end = message.find(quote, pos + 1)
        if end < 0 or b"<" in message[pos + 1 : end]:
            raise FramingError("unterminated attribute value in <%s>" % tag.name.decode("utf-8", "replace"))
        tag.attributes.append(Attribute(attr_name.group(), pos + 1, end, quote))
        pos = end + 1


def _match(pattern: "re.Pattern[bytes]", data: bytes, pos: int) -> int:
    found = pattern.match(data, pos)
    return found.end() if found is not None else pos


@dataclass
class Request:
    """A client's ``<rpc>``: where its message-id is and what it does."""

    raw: bytes
    tag: StartTag
    operation: str = ""  # local name of the operation element
    namespace: str = ""
    target: str = ""  # the target datastore of TARGET_OPERATIONS ("running", "candidate", ...)

    @property
    def message_id(self) -> Optional[Attribute]:
        return self.tag.attribute(b"message-id")

    @property
    def id_value(self) -> Optional[bytes]:
        attr = self.message_id
        return self.raw[attr.start : attr.end] if attr is not None else None

    def base(self, operation: str) -> bool:
        return self.namespace == NS_BASE and self.operation == operation

    def with_message_id(self, new: bytes) -> bytes:
        """The message with only its message-id's value replaced (``new`` is plain ASCII)."""
        attr = self.message_id
        assert attr is not None
        return self.raw[: attr.start] + new + self.raw[attr.end :]

    def reply_attributes(self) -> bytes:
        """The ``<rpc>``'s attributes as written, for a reply made here (RFC 6241 section 4.2:
        an ``<rpc-reply>`` carries all attributes of its ``<rpc>``). The default namespace
        declaration stays out: the reply declares its own."""
        return b"".join(
            b" %s=%s%s%s" % (a.name, a.quote, self.raw[a.start : a.end], a.quote)
            for a in self.tag.attributes
            if a.name != b"xmlns"
        )


def parse_request(message: bytes) -> Request:
    """Classify a client message; FramingError for anything that is not a well-formed ``<rpc>``."""
    check_xml_safe(message)
    tag = root_start_tag(message)
    if tag.local != b"rpc":
        raise FramingError("expected <rpc>, got <%s>" % tag.local.decode("utf-8", "replace"))
    request = Request(raw=message, tag=tag)
    request.operation, request.namespace, request.target = _operation(message)
    return request


def _operation(message: bytes) -> Tuple[str, str, str]:
    """(operation, its namespace, target datastore) from as few bytes as needed."""
    parser: Any = ET.XMLPullParser(events=("start", "end"))
    depth = 0
    op = ns = ""
    in_target = False
    try:
        for chunk in _chunks(message):
            parser.feed(chunk)
            for event, element in parser.read_events():
                assert isinstance(element, ET.Element)
                if event == "start":
                    depth += 1
                    el_ns, local = _split(element.tag)
                    if depth == 1 and el_ns != NS_BASE:
                        return "", "", ""  # not a base:1.0 <rpc>: nothing the listener acts on
                    if depth == 2 and not op:
                        op, ns = local, el_ns
                        if not (ns == NS_BASE and op in TARGET_OPERATIONS):
                            return op, ns, ""
                    elif depth == 3 and op and el_ns == NS_BASE and local == "target":
                        in_target = True
                    elif depth == 4 and in_target:
                        return op, ns, local
                else:
                    depth -= 1
                    element.clear()  # a target after a large <config> must not build its tree
                    if depth == 2:
                        in_target = False
                    elif depth <= 1 and op:
                        return op, ns, ""
    except ET.ParseError as exc:
        raise FramingError("message is not well-formed XML: %s" % exc) from None
    return op, ns, ""


def _chunks(message: bytes) -> Iterable[bytes]:
    for offset in range(0, len(message), _FEED):
        yield message[offset : offset + _FEED]


def _split(tag: str) -> Tuple[str, str]:
    if tag.startswith("{"):
        ns, _sep, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def restore_reply_id(reply: bytes, attr: Attribute, original: bytes, quote: bytes) -> bytes:
    """The device's reply with its message-id set back to the client's, in the client's quotes."""
    return reply[: attr.start - 1] + quote + original + quote + reply[attr.end + 1 :]


def reply_is_ok(reply: bytes) -> bool:
    """True for ``<rpc-reply><ok/></rpc-reply>`` (lock, unlock and subscription answers are small)."""
    try:
        check_xml_safe(reply)
        root = ET.fromstring(reply)
    except (FramingError, ET.ParseError):
        return False
    children = [_split(child.tag)[1] for child in root]
    return "ok" in children and "rpc-error" not in children


def reply_is_error(reply: bytes) -> bool:
    """True when the reply carries an ``<rpc-error>`` (or cannot be read)."""
    try:
        check_xml_safe(reply)
        root = ET.fromstring(reply)
    except (FramingError, ET.ParseError):
        return True
    return any(_split(child.tag)[1] == "rpc-error" for child in root)


def rpc_error(
    request: Optional[Request],
    *,
    error_type: str,
    tag: str,
    message: str,
    info: str = "",
) -> bytes:
    """An ``<rpc-reply>`` with one ``<rpc-error>``, as a device would send it (RFC 6241 section 4.3)."""
    attrs = request.reply_attributes() if request is not None else b""
    body = (
        "<rpc-error><error-type>%s</error-type><error-tag>%s</error-tag><error-severity>error</error-severity>"
        '<error-message xml:lang="en">%s</error-message>%s</rpc-error>'
        % (error_type, tag, escape(message), "<error-info>%s</error-info>" % info if info else "")
    )
    return b'<rpc-reply xmlns="%s"%s>%s</rpc-reply>' % (NS_BASE.encode(), attrs, body.encode("utf-8"))


def ok(request: Request) -> bytes:
    return b'<rpc-reply xmlns="%s"%s><ok/></rpc-reply>' % (NS_BASE.encode(), request.reply_attributes())


def internal_rpc(message_id: bytes, body: str) -> bytes:
    """An RPC the listener sends on its own behalf (releasing a lock of a client that left)."""
    return b'<rpc xmlns="%s" message-id="%s">%s</rpc>' % (NS_BASE.encode(), message_id, body.encode("ascii"))
