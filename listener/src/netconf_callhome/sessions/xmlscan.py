# SPDX-License-Identifier: GPL-3.0-or-later
"""Just enough XML to multiplex one NETCONF session: the root start tag and the operation.

Two tools, both safe on untrusted input and both cheap on a 200 MB ``<edit-config>``:

* a lexer for the prolog and the root element's start tag. It gives the exact byte span of
  each attribute value, so the multiplexer replaces a ``message-id`` byte for byte and leaves
  everything else of a message as it came (a regular expression over the first kilobytes would
  also match ``<rpc message-id=...>`` inside a comment or a ``>`` inside an attribute value);
* the listener's one XML parser (:func:`~netconf_callhome.protocol.framing.xml_events`, libxml2
  with entities, DTD loading and network off), fed piece by piece and stopped as soon as the
  operation and its target datastore are known, to classify an RPC by namespace-resolved names.
  It refuses a document with a DTD at its root element, whatever the document's encoding, so no
  entity is ever declared, let alone expanded.

The lexer reads bytes as ASCII, the parser decodes the encoding a document declares: a client's
``<rpc>`` must be UTF-8 (RFC 6241 section 3), so that both read the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple
from xml.sax.saxutils import escape

from netconf_callhome.errors import FramingError
from netconf_callhome.protocol.framing import NS_BASE, xml_events

NS_NOTIFICATION = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NS_SUBSCRIBED = "urn:ietf:params:xml:ns:yang:ietf-subscribed-notifications"

# Operations whose target datastore matters to the locks (RFC 6241 sections 7.2-7.6).
TARGET_OPERATIONS = frozenset({"lock", "unlock", "edit-config", "copy-config", "delete-config"})

_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = (b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")  # UTF-32/UTF-16 byte order marks
_WS = re.compile(rb"[ \t\r\n]*")
_NAME = re.compile(rb"[^\s/>=<'\"?!]+")
_ENCODING = re.compile(rb"\sencoding\s*=\s*(['\"])([A-Za-z][A-Za-z0-9._-]*)\1")
_UTF8 = (b"utf-8", b"utf8")


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
    encoding: bytes = b""  # as the XML declaration names it ("": none, so UTF-8)

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
    if message.startswith(_WIDE_BOMS):
        raise FramingError("the message is not UTF-8 (a UTF-16 or UTF-32 byte order mark); NETCONF is UTF-8")
    pos = len(_BOM) if message.startswith(_BOM) else 0
    encoding = b""
    while True:
        pos = _match(_WS, message, pos)
        if message.startswith(b"<?", pos):
            end = message.find(b"?>", pos + 2)
            if end < 0:
                raise FramingError("unterminated processing instruction before the root element")
            if message.startswith(b"<?xml", pos) and message[pos + 5 : pos + 6].isspace():
                declared = _ENCODING.search(message, pos, end)
                encoding = declared.group(2) if declared is not None else b""
            pos = end + 2
        elif message.startswith(b"<!--", pos):
            end = message.find(b"-->", pos + 4)
            if end < 0:
                raise FramingError("unterminated comment before the root element")
            pos = end + 3
        elif message.startswith(b"<", pos) and not message.startswith(b"<!", pos):
            break
        elif message[pos : pos + 9].upper() == b"<!DOCTYPE":
            raise FramingError("the message carries a DTD (<!DOCTYPE ...>); refused")
        else:
            raise FramingError("no root element in the message")
    name = _NAME.match(message, pos + 1)
    if name is None:
        raise FramingError("malformed root element")
    tag = StartTag(name.group(), encoding=encoding)
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
    # <commit> / <cancel-commit> only: each base:1.0 child's local name -> its text
    # ("confirmed" -> "", "confirm-timeout" -> "120", "persist" -> "abc", "persist-id" -> ...)
    options: Dict[str, str] = field(default_factory=dict)

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
    tag = root_start_tag(message)
    if tag.encoding and tag.encoding.lower() not in _UTF8:
        raise FramingError(
            "the <rpc> declares encoding %r; NETCONF messages are UTF-8 (RFC 6241 section 3)"
            % tag.encoding.decode("ascii")
        )
    if tag.local != b"rpc":
        raise FramingError("expected <rpc>, got <%s>" % tag.local.decode("utf-8", "replace"))
    request = Request(raw=message, tag=tag)
    request.operation, request.namespace, request.target = _operation(message)
    if request.namespace == NS_BASE and request.operation in COMMIT_OPERATIONS:
        request.options = _operation_options(message)
    return request


COMMIT_OPERATIONS = ("commit", "cancel-commit")
_MAX_OPTIONS = 16  # a <commit> has at most four; more is not a commit the listener reasons about


def _operation_options(message: bytes) -> Dict[str, str]:
    """The base:1.0 children of the operation and their text (a commit's are a few bytes)."""
    depth = 0
    options: Dict[str, str] = {}
    for event, element in xml_events(message, "message"):
        if event == "start":
            depth += 1
            continue
        if depth == 3 and len(options) < _MAX_OPTIONS:
            el_ns, local = _split(element.tag)
            if el_ns == NS_BASE:
                options[local] = (element.text or "").strip()[:256]
        depth -= 1
        _drop(element)
        if depth <= 1:
            break
    return options


def _operation(message: bytes) -> Tuple[str, str, str]:
    """(operation, its namespace, target datastore) from as few bytes as needed."""
    depth = 0
    op = ns = ""
    in_target = False
    for event, element in xml_events(message, "message"):
        if event == "start":
            depth += 1
            if depth > 4 or (depth == 4 and not in_target):
                continue  # inside <config> or a filter: only the depth counts
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
            _drop(element)  # a target after a large <config> must not build its tree
            if depth == 2:
                in_target = False
            elif depth <= 1 and op:
                return op, ns, ""
    return op, ns, ""


def _drop(element: Any) -> None:
    """Forget an element parsed to its end, and its earlier siblings (kept by libxml2 otherwise)."""
    element.clear()
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _children(reply: bytes) -> Iterator[str]:
    """Local names of the root's child elements, streamed: their content is never kept."""
    depth = 0
    for event, element in xml_events(reply, "reply"):
        if event == "start":
            depth += 1
            if depth == 2:
                yield _split(element.tag)[1]
        else:
            depth -= 1
            _drop(element)


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
        children = set(_children(reply))
    except FramingError:
        return False
    return "ok" in children and "rpc-error" not in children


def reply_is_error(reply: bytes) -> bool:
    """True when the reply carries an ``<rpc-error>`` (or cannot be read)."""
    try:
        return any(name == "rpc-error" for name in _children(reply))
    except FramingError:
        return True


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
