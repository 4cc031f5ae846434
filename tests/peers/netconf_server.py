# SPDX-License-Identifier: GPL-3.0-or-later
"""A small, transport-agnostic NETCONF server core for test peers.

Why it exists: the call-home listener must be tested against devices that speak real NETCONF
(RFC 6241 operations, RFC 6242 framing) without needing a vendor box. The core is *sans-IO*: a
:class:`NetconfSession` is fed bytes with :meth:`NetconfSession.data_received` and emits bytes
through a ``send`` callback, so the same code runs on an asyncssh channel (the simulator) and on
stdin/stdout (the OpenSSH ``Subsystem netconf`` peer). Per-device state (datastores, locks, a
pending confirmed commit) lives in :class:`NetconfDevice`, shared by all sessions of one device.

XML from the client is parsed with :mod:`xml.etree.ElementTree` only after rejecting any
``<!DOCTYPE``/``<!ENTITY`` declaration, so entity-expansion attacks cannot reach the parser.
"""

from __future__ import annotations

import asyncio
import copy
import re
import xml.etree.ElementTree as ET
from typing import Callable, Iterable, Optional

BASE_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
CAP_CANDIDATE = "urn:ietf:params:netconf:capability:candidate:1.0"
CAP_CONFIRMED = "urn:ietf:params:netconf:capability:confirmed-commit:1.1"
CAP_WRITABLE_RUNNING = "urn:ietf:params:netconf:capability:writable-running:1.0"
CAP_VALIDATE = "urn:ietf:params:netconf:capability:validate:1.1"
#: What <validate> refuses (the simulator has no YANG): any leaf whose text is this, so a test
#: can send a configuration that a device would find invalid.
INVALID_VALUE = "invalid"
SYSTEM_NS = "urn:ietf:params:xml:ns:yang:ietf-system"
EOM = b"]]>]]>"
DEFAULT_CAPABILITIES: tuple[str, ...] = (CAP_CANDIDATE, CAP_CONFIRMED, CAP_WRITABLE_RUNNING)
#: Hard cap on one incoming message, so a misbehaving client cannot exhaust memory.
MAX_MESSAGE = 64 * 1024 * 1024
#: Keys used to match list entries when merging (``<interface><name>eth0</name>...``).
LIST_KEYS = ("name", "id", "key")

_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_CHUNK_HDR = re.compile(rb"\n#([1-9][0-9]{0,9})\n")

ET.register_namespace("", BASE_NS)


class FramingError(Exception):
    """The peer violated RFC 6242 framing; the session must be terminated."""


class XmlRejected(ValueError):
    """The message carried a DTD or entity declaration, or was not well-formed."""


def q(tag: str, ns: str = BASE_NS) -> str:
    """Return a Clark-notation tag so ElementTree lookups are namespace exact."""
    return f"{{{ns}}}{tag}"


def parse_xml(data: bytes) -> ET.Element:
    """Parse untrusted XML after refusing DTDs and entity declarations (billion laughs)."""
    if _DTD_RE.search(data):
        raise XmlRejected("DTD/entity declarations are not allowed")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise XmlRejected(str(exc)) from exc


def local(tag: str) -> str:
    """Strip the namespace from a Clark-notation tag."""
    return tag.rsplit("}", 1)[-1]


def build_hello(capabilities: Iterable[str], session_id: Optional[int]) -> bytes:
    """Serialise a ``<hello>``; the server passes its session-id, a client passes None."""
    caps = "".join(f"<capability>{c}</capability>" for c in capabilities)
    sid = f"<session-id>{session_id}</session-id>" if session_id is not None else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="{BASE_NS}">'
        f"<capabilities>{caps}</capabilities>{sid}</hello>"
    ).encode()


def frame_eom(msg: bytes) -> bytes:
    """RFC 6242 section 4.3 end-of-message framing (base:1.0)."""
    return msg + EOM


def frame_chunked(msg: bytes) -> bytes:
    """RFC 6242 section 4.2 chunked framing (base:1.1), as one chunk."""
    return b"\n#%d\n" % len(msg) + msg + b"\n##\n"


class Deframer:
    """Incremental RFC 6242 deframer; ``chunked`` is switched on after the hello exchange."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.buf = bytearray()
        self.chunked = False
        self.max_message = max_message
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes and return every complete message; raise FramingError on bad input."""
        self.buf += data
        out: list[bytes] = []
        while True:
            msg = self._next_chunked() if self.chunked else self._next_eom()
            if msg is None:
                break
            out.append(msg)
            if not self.chunked:
                # Only the first EOM message (the hello) may switch framing; let the caller
                # decide before we parse more bytes under the wrong framing.
                break
        if len(self.buf) + self._size > self.max_message:
            raise FramingError("message too large")
        return out

    def _next_eom(self) -> Optional[bytes]:
        idx = self.buf.find(EOM)
        if idx < 0:
            return None
        msg = bytes(self.buf[:idx])
        del self.buf[: idx + len(EOM)]
        return msg

    def _next_chunked(self) -> Optional[bytes]:
        while True:
            if len(self.buf) < 4:
                return None
            if self.buf[:4] == b"\n##\n":
                del self.buf[:4]
                if not self._parts:
                    raise FramingError("end-of-chunks without a chunk")
                msg = b"".join(self._parts)
                self._parts, self._size = [], 0
                return msg
            m = _CHUNK_HDR.match(self.buf)
            if m is None:
                # A header is at most 13 bytes; anything longer without a match is invalid.
                if len(self.buf) >= 13 or not re.fullmatch(rb"\n(#[0-9]*)?", self.buf[:13]):
                    raise FramingError(f"invalid chunk header {bytes(self.buf[:16])!r}")
                return None
            size = int(m.group(1))
            if size > 4294967295:
                raise FramingError("chunk size out of range")
            end = m.end() + size
            if len(self.buf) < end:
                if m.end() + size - len(self.buf) + self._size > self.max_message:
                    raise FramingError("message too large")
                return None
            self._parts.append(bytes(self.buf[m.end() : end]))
            self._size += size
            del self.buf[:end]


def default_running(hostname: str) -> ET.Element:
    """The initial running datastore: the hostname is what tests look for."""
    data = ET.Element(q("data"))
    system = ET.SubElement(data, q("system", SYSTEM_NS))
    ET.SubElement(system, q("hostname", SYSTEM_NS)).text = hostname
    ET.SubElement(system, q("location", SYSTEM_NS)).text = "lab"
    return data


class RpcError(Exception):
    """An RFC 6241 ``<rpc-error>`` to report to the client."""

    def __init__(
        self,
        tag: str,
        message: str,
        *,
        error_type: str = "protocol",
        info: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.error_type = error_type
        self.info = info or {}

    def to_element(self) -> ET.Element:
        """Render as an ``<rpc-error>`` element."""
        err = ET.Element(q("rpc-error"))
        ET.SubElement(err, q("error-type")).text = self.error_type
        ET.SubElement(err, q("error-tag")).text = self.tag
        ET.SubElement(err, q("error-severity")).text = "error"
        ET.SubElement(err, q("error-message")).text = self.message
        if self.info:
            info = ET.SubElement(err, q("error-info"))
            for k, v in self.info.items():
                ET.SubElement(info, q(k)).text = v
        return err


class NetconfDevice:
    """Per-device NETCONF state shared by all sessions: datastores, locks, confirmed commit.

    ``on_change`` is called after running changes, so a stdio peer can persist it.
    """

    def __init__(
        self,
        hostname: str,
        *,
        capabilities: Iterable[str] = DEFAULT_CAPABILITIES,
        running: Optional[ET.Element] = None,
        on_change: Optional[Callable[[ET.Element], None]] = None,
        first_session_id: int = 1,
    ) -> None:
        self.hostname = hostname
        self.capabilities = tuple(capabilities)
        self.running = running if running is not None else default_running(hostname)
        self.candidate = copy.deepcopy(self.running)
        self.candidate_dirty = False
        self.locks: dict[str, int] = {}
        self.on_change = on_change
        self._next_sid = first_session_id
        self.sessions: dict[int, NetconfSession] = {}
        # Confirmed-commit state (RFC 6241 section 8.4).
        self.rollback: Optional[ET.Element] = None
        self.confirm_timer: Optional[asyncio.TimerHandle] = None
        self.confirm_session: Optional[int] = None
        self.confirm_persist: Optional[str] = None

    @property
    def has_candidate(self) -> bool:
        """Whether the candidate datastore is advertised."""
        return CAP_CANDIDATE in self.capabilities

    @property
    def has_validate(self) -> bool:
        """Whether <validate> (:validate:1.1) is advertised."""
        return CAP_VALIDATE in self.capabilities

    @property
    def writable_running(self) -> bool:
        """Whether edit-config may target running."""
        return CAP_WRITABLE_RUNNING in self.capabilities

    def new_session_id(self) -> int:
        """Allocate a session-id (unique per device, as RFC 6241 requires per server)."""
        sid = self._next_sid
        self._next_sid += 1
        return sid

    def set_running(self, new: ET.Element) -> None:
        """Replace running and notify the persistence hook."""
        self.running = new
        if self.on_change is not None:
            self.on_change(new)

    def session_ended(self, sid: int) -> None:
        """Release locks and roll back a non-persistent confirmed commit of that session."""
        self.sessions.pop(sid, None)
        for ds in [d for d, owner in self.locks.items() if owner == sid]:
            del self.locks[ds]
        if self.confirm_session == sid and self.confirm_persist is None:
            self.do_rollback()

    def do_rollback(self) -> None:
        """Restore running to its state before the pending confirmed commit."""
        if self.confirm_timer is not None:
            self.confirm_timer.cancel()
        if self.rollback is not None:
            self.set_running(self.rollback)
            self.candidate = copy.deepcopy(self.rollback)
            self.candidate_dirty = False
        self.rollback = None
        self.confirm_timer = None
        self.confirm_session = None
        self.confirm_persist = None

    def clear_confirm(self) -> None:
        """Make the pending confirmed commit permanent."""
        if self.confirm_timer is not None:
            self.confirm_timer.cancel()
        self.rollback = None
        self.confirm_timer = None
        self.confirm_session = None
        self.confirm_persist = None


def _key_of(el: ET.Element) -> Optional[tuple[str, str]]:
    for k in LIST_KEYS:
        child = el.find(f"{{{_ns(el.tag)}}}{k}") if _ns(el.tag) else el.find(k)
        if child is not None and len(child) == 0:
            return (k, (child.text or "").strip())
    return None


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _find_match(parent: ET.Element, new: ET.Element) -> Optional[ET.Element]:
    key = _key_of(new)
    for child in parent:
        if child.tag != new.tag:
            continue
        if key is None or _key_of(child) == key:
            return child
    return None


def _strip_op(el: ET.Element) -> ET.Element:
    el = copy.deepcopy(el)
    for node in el.iter():
        node.attrib.pop(q("operation"), None)
    return el


def apply_edit(target: ET.Element, config: ET.Element, default_op: str) -> None:
    """Apply an edit-config ``<config>`` to a datastore root (merge/replace/create/delete/remove).

    Elements are matched by tag and, for list entries, by a ``name``/``id``/``key`` leaf.
    """
    for new in list(config):
        _edit_node(target, new, default_op)


def _edit_node(parent: ET.Element, new: ET.Element, inherited: str) -> None:
    op = new.get(q("operation"), inherited)
    if op not in ("merge", "replace", "create", "delete", "remove", "none"):
        raise RpcError("bad-attribute", f"unknown operation {op}", error_type="protocol")
    existing = _find_match(parent, new)
    if op in ("delete", "remove"):
        if existing is None:
            if op == "delete":
                raise RpcError(
                    "data-missing", f"{local(new.tag)} does not exist", error_type="application"
                )
            return
        parent.remove(existing)
        return
    if op == "create" and existing is not None:
        raise RpcError("data-exists", f"{local(new.tag)} already exists", error_type="application")
    if op == "replace" or existing is None:
        if op == "none" and existing is None:
            # "none" only navigates; create the container so nested merges have a parent.
            existing = ET.SubElement(parent, new.tag)
            for child in new:
                _edit_node(existing, child, op)
            return
        replacement = _strip_op(new)
        if existing is None:
            parent.append(replacement)
        else:
            parent[list(parent).index(existing)] = replacement
        return
    # merge / none / create(new) into an existing node
    if len(new) == 0:
        if op != "none":
            existing.text = new.text
        return
    for child in new:
        _edit_node(existing, child, op)


def subtree_filter(data: ET.Element, flt: Optional[ET.Element]) -> ET.Element:
    """Apply an RFC 6241 section 6 subtree filter (selection, containment, content match)."""
    out = ET.Element(q("data"))
    if flt is None:
        for child in data:
            out.append(copy.deepcopy(child))
        return out
    if flt.get("type", "subtree") != "subtree":
        raise RpcError(
            "operation-not-supported",
            "only subtree filters are supported",
            error_type="application",
        )
    for f in flt:
        for child in data:
            res = _filter_node(child, f)
            if res is not None:
                out.append(res)
    return out


def _filter_node(node: ET.Element, f: ET.Element) -> Optional[ET.Element]:
    if node.tag != f.tag and not (_ns(f.tag) == "" and local(node.tag) == f.tag):
        return None
    if len(f) == 0:
        text = (f.text or "").strip()
        if text and (node.text or "").strip() != text:
            return None
        return copy.deepcopy(node)
    matches = [c for c in f if len(c) == 0 and (c.text or "").strip()]
    for m in matches:
        found = [c for c in node if local(c.tag) == local(m.tag)]
        if not any((c.text or "").strip() == (m.text or "").strip() for c in found):
            return None
    result = ET.Element(node.tag, node.attrib)
    others = [c for c in f if c not in matches]
    if not others:
        # Only content-match nodes: the whole subtree is selected.
        return copy.deepcopy(node)
    for m in matches:
        for c in node:
            if local(c.tag) == local(m.tag):
                result.append(copy.deepcopy(c))
    for sub in others:
        for c in node:
            r = _filter_node(c, sub)
            if r is not None:
                result.append(r)
    return result if len(result) else None


class NetconfSession:
    """One NETCONF session (sans-IO): feed bytes in, bytes come out through ``send``.

    ``close`` is called when the session must end (close-session, framing error, bad hello).
    ``hello_override`` lets fault modes send a crafted hello; ``on_ready`` fires once the hello
    exchange is complete.
    """

    def __init__(
        self,
        device: NetconfDevice,
        send: Callable[[bytes], None],
        close: Callable[[str], None],
        *,
        hello_override: Optional[bytes] = None,
        on_ready: Optional[Callable[["NetconfSession"], None]] = None,
        session_id: Optional[int] = None,
    ) -> None:
        self.device = device
        self._send = send
        self._close = close
        self.session_id = session_id if session_id is not None else device.new_session_id()
        self.deframer = Deframer()
        self.hello_override = hello_override
        self.on_ready = on_ready
        self.ready = False
        self.closed = False
        self.chunked = False
        self.client_capabilities: list[str] = []
        self.rpc_count = 0
        device.sessions[self.session_id] = self

    # -- transport side -------------------------------------------------------------------
    def start(self) -> None:
        """Send our hello (always end-of-message framed, as RFC 6242 requires)."""
        caps = (BASE_10, BASE_11, *self.device.capabilities)
        hello = self.hello_override or build_hello(caps, self.session_id)
        self._send(frame_eom(hello))

    def data_received(self, data: bytes) -> None:
        """Consume bytes from the client; replies go out through ``send``."""
        if self.closed:
            return
        try:
            while True:
                msgs = self.deframer.feed(data)
                data = b""
                if not msgs:
                    return
                for msg in msgs:
                    self._handle_message(msg)
                    if self.closed:
                        return
        except FramingError as exc:
            self.terminate(f"framing error: {exc}")

    def connection_lost(self) -> None:
        """Transport ended: release locks and roll back an unconfirmed commit if needed."""
        if not self.closed:
            self.closed = True
        self.device.session_ended(self.session_id)

    def terminate(self, reason: str) -> None:
        """End the session from the server side."""
        if self.closed:
            return
        self.closed = True
        self.device.session_ended(self.session_id)
        self._close(reason)

    def send_message(self, msg: bytes) -> None:
        """Frame and send one message with the negotiated framing."""
        self._send(frame_chunked(msg) if self.chunked else frame_eom(msg))

    # -- protocol ---------------------------------------------------------------------------
    def _handle_message(self, msg: bytes) -> None:
        if not self.ready:
            self._handle_hello(msg)
            return
        try:
            root = parse_xml(msg)
        except XmlRejected as exc:
            err = RpcError("malformed-message", f"rejected: {exc}", error_type="rpc")
            self.send_message(self._reply({}, [err.to_element()]))
            return
        if root.tag != q("rpc"):
            err = RpcError(
                "unknown-element", f"expected rpc, got {local(root.tag)}", error_type="rpc"
            )
            self.send_message(self._reply({}, [err.to_element()]))
            return
        self.rpc_count += 1
        attrs = dict(root.attrib)
        if "message-id" not in attrs:
            err = RpcError(
                "missing-attribute",
                "message-id missing",
                error_type="rpc",
                info={"bad-attribute": "message-id", "bad-element": "rpc"},
            )
            self.send_message(self._reply(attrs, [err.to_element()]))
            return
        op = root[0] if len(root) else None
        close_after = False
        try:
            if op is None:
                raise RpcError("missing-element", "rpc has no operation", error_type="rpc")
            body, close_after = self._dispatch(op)
        except RpcError as err:
            body = [err.to_element()]
        self.send_message(self._reply(attrs, body))
        if close_after:
            self.terminate("close-session")

    def _handle_hello(self, msg: bytes) -> None:
        try:
            root = parse_xml(msg)
        except XmlRejected as exc:
            self.terminate(f"bad client hello: {exc}")
            return
        if root.tag != q("hello"):
            self.terminate(f"first message is not a hello but {root.tag}")
            return
        if root.find(q("session-id")) is not None:
            self.terminate("client hello carries a session-id")
            return
        caps = [(c.text or "").strip() for c in root.iter(q("capability"))]
        self.client_capabilities = caps
        if BASE_11 in caps:
            self.chunked = True
            self.deframer.chunked = True
        elif BASE_10 not in caps:
            self.terminate("no common base capability")
            return
        self.ready = True
        if self.on_ready is not None:
            self.on_ready(self)

    def _reply(self, attrs: dict[str, str], body: list[ET.Element]) -> bytes:
        reply = ET.Element(q("rpc-reply"), attrs)
        if not body:
            ET.SubElement(reply, q("ok"))
        for el in body:
            reply.append(el)
        return ET.tostring(reply, encoding="utf-8", xml_declaration=False)

    def _datastore(self, parent: ET.Element, which: str) -> str:
        el = parent.find(q(which))
        if el is None or len(el) == 0:
            raise RpcError(
                "missing-element",
                f"<{which}> missing",
                error_type="protocol",
                info={"bad-element": which},
            )
        name = local(el[0].tag)
        if name == "candidate" and not self.device.has_candidate:
            raise RpcError("invalid-value", "candidate not supported")
        if name not in ("running", "candidate"):
            raise RpcError("invalid-value", f"datastore {name} not supported")
        return name

    def _check_lock(self, ds: str) -> None:
        owner = self.device.locks.get(ds)
        if owner is not None and owner != self.session_id:
            raise RpcError(
                "in-use", f"{ds} is locked", error_type="protocol", info={"session-id": str(owner)}
            )

    def _dispatch(self, op: ET.Element) -> tuple[list[ET.Element], bool]:
        name = local(op.tag)
        dev = self.device
        if _ns(op.tag) != BASE_NS:
            raise RpcError(
                "operation-not-supported", f"{name} is not supported", error_type="protocol"
            )
        if name in ("get", "get-config"):
            src = dev.running
            if name == "get-config":
                src = dev.candidate if self._datastore(op, "source") == "candidate" else dev.running
            return [subtree_filter(src, op.find(q("filter")))], False
        if name == "edit-config":
            target = self._datastore(op, "target")
            if target == "running" and not dev.writable_running:
                raise RpcError("operation-not-supported", "running is not writable")
            self._check_lock(target)
            config = op.find(q("config"))
            if config is None:
                raise RpcError(
                    "missing-element", "<config> missing", info={"bad-element": "config"}
                )
            default_op = (op.findtext(q("default-operation")) or "merge").strip()
            store = copy.deepcopy(dev.candidate if target == "candidate" else dev.running)
            if default_op == "replace":
                store = ET.Element(q("data"))
                default_op = "merge"
            apply_edit(store, config, default_op)
            if target == "candidate":
                dev.candidate = store
                dev.candidate_dirty = True
            else:
                dev.set_running(store)
                if not dev.candidate_dirty:
                    dev.candidate = copy.deepcopy(store)
            return [], False
        if name == "lock":
            ds = self._datastore(op, "target")
            owner = dev.locks.get(ds)
            if owner is not None:
                raise RpcError(
                    "lock-denied",
                    f"{ds} is locked by session {owner}",
                    info={"session-id": str(owner)},
                )
            if ds == "candidate" and dev.candidate_dirty:
                raise RpcError(
                    "lock-denied", "candidate has uncommitted changes", info={"session-id": "0"}
                )
            dev.locks[ds] = self.session_id
            return [], False
        if name == "unlock":
            ds = self._datastore(op, "target")
            if dev.locks.get(ds) != self.session_id:
                raise RpcError(
                    "operation-failed", f"{ds} is not locked by this session", error_type="protocol"
                )
            del dev.locks[ds]
            return [], False
        if name == "commit":
            return self._commit(op), False
        if name == "cancel-commit":
            if dev.rollback is None:
                raise RpcError("operation-failed", "no confirmed commit is pending")
            pid = op.findtext(q("persist-id"))
            if dev.confirm_persist is not None and pid != dev.confirm_persist:
                raise RpcError("invalid-value", "persist-id does not match")
            if dev.confirm_persist is None and dev.confirm_session != self.session_id:
                raise RpcError("operation-failed", "confirmed commit belongs to another session")
            dev.do_rollback()
            return [], False
        if name == "validate":
            return self._validate(op), False
        if name == "discard-changes":
            if not dev.has_candidate:
                raise RpcError("operation-not-supported", "no candidate datastore")
            dev.candidate = copy.deepcopy(dev.running)
            dev.candidate_dirty = False
            return [], False
        if name == "close-session":
            return [], True
        raise RpcError("operation-not-supported", f"{name} is not supported", error_type="protocol")

    def _validate(self, op: ET.Element) -> list[ET.Element]:
        """RFC 6241 section 8.6: check a datastore or an inline <config>, change nothing."""
        dev = self.device
        if not dev.has_validate:
            raise RpcError("operation-not-supported", "validate is not supported", error_type="protocol")
        source = op.find(q("source"))
        if source is None or len(source) == 0:
            raise RpcError("missing-element", "<source> missing", error_type="protocol",
                           info={"bad-element": "source"})
        config = source.find(q("config"))
        if config is None:
            name = self._datastore(op, "source")
            config = dev.candidate if name == "candidate" else dev.running
        for el in config.iter():
            if len(el) == 0 and (el.text or "").strip() == INVALID_VALUE:
                raise RpcError("invalid-value", f"{local(el.tag)}: {INVALID_VALUE!r} is not a valid value",
                               error_type="application", info={"bad-element": local(el.tag)})
        return []

    def _commit(self, op: ET.Element) -> list[ET.Element]:
        dev = self.device
        if not dev.has_candidate:
            raise RpcError("operation-not-supported", "no candidate datastore")
        self._check_lock("running")
        confirmed = op.find(q("confirmed")) is not None
        persist = op.findtext(q("persist"))
        persist_id = op.findtext(q("persist-id"))
        if dev.rollback is not None:
            # A commit while a confirmed commit is pending confirms (or extends) it.
            if dev.confirm_persist is not None and persist_id != dev.confirm_persist:
                raise RpcError("invalid-value", "persist-id does not match", error_type="protocol")
            if not confirmed:
                dev.set_running(copy.deepcopy(dev.candidate))
                dev.candidate_dirty = False
                dev.clear_confirm()
                return []
        elif persist_id is not None:
            raise RpcError("invalid-value", "no confirmed commit with that persist-id")
        if confirmed:
            try:
                timeout = int(op.findtext(q("confirm-timeout")) or "600")
            except ValueError as exc:
                raise RpcError("invalid-value", "bad confirm-timeout") from exc
            if timeout < 1:
                raise RpcError("invalid-value", "bad confirm-timeout")
            if dev.rollback is None:
                dev.rollback = copy.deepcopy(dev.running)
            if dev.confirm_timer is not None:
                dev.confirm_timer.cancel()
            loop = asyncio.get_running_loop()
            dev.confirm_timer = loop.call_later(timeout, dev.do_rollback)
            dev.confirm_session = self.session_id
            dev.confirm_persist = persist
        dev.set_running(copy.deepcopy(dev.candidate))
        dev.candidate_dirty = False
        return []


class MiniClient:
    """A minimal NETCONF client over any (reader, writer) byte stream pair, for self-checks.

    Why here: the peers' own tests need a client that is independent of the project's listener;
    keeping it next to the deframer avoids duplicating RFC 6242 code in every test file.
    ``reader`` needs ``async read(n)``; ``writer`` needs ``write(bytes)``.
    """

    def __init__(self, reader: object, writer: object, *, base11: bool = True) -> None:
        self.reader = reader
        self.writer = writer
        self.base11 = base11
        self.deframer = Deframer()
        self.pending: list[bytes] = []
        self.server_hello: Optional[ET.Element] = None
        self.chunked = False
        self._msg_id = 0

    async def _recv(self) -> bytes:
        while not self.pending:
            data = await self.reader.read(65536)  # type: ignore[attr-defined]
            if not data:
                raise EOFError("session closed by server")
            self.pending.extend(self.deframer.feed(data))
            while True:
                more = self.deframer.feed(b"")
                if not more:
                    break
                self.pending.extend(more)
        return self.pending.pop(0)

    async def hello(self) -> ET.Element:
        """Exchange hellos; switch to chunked framing when both sides offer base:1.1."""
        caps = [BASE_10, BASE_11] if self.base11 else [BASE_10]
        self.writer.write(frame_eom(build_hello(caps, None)))  # type: ignore[attr-defined]
        self.server_hello = parse_xml(await self._recv())
        server_caps = [(c.text or "").strip() for c in self.server_hello.iter(q("capability"))]
        if self.base11 and BASE_11 in server_caps:
            self.chunked = True
            self.deframer.chunked = True
            # Bytes already buffered after the hello belong to the chunked stream.
        return self.server_hello

    async def rpc(self, body: str, attrs: str = "") -> ET.Element:
        """Send ``<rpc>`` around ``body`` (XML text in the base namespace); return the reply."""
        self._msg_id += 1
        msg = f'<rpc xmlns="{BASE_NS}" message-id="{self._msg_id}"{attrs}>{body}</rpc>'.encode()
        self.writer.write(frame_chunked(msg) if self.chunked else frame_eom(msg))  # type: ignore[attr-defined]
        return parse_xml(await self._recv())


__all__ = (
    "BASE_10",
    "BASE_11",
    "BASE_NS",
    "CAP_CANDIDATE",
    "CAP_CONFIRMED",
    "CAP_WRITABLE_RUNNING",
    "DEFAULT_CAPABILITIES",
    "Deframer",
    "FramingError",
    "MiniClient",
    "NetconfDevice",
    "CAP_VALIDATE",
    "NetconfSession",
    "RpcError",
    "build_hello",
    "frame_chunked",
    "frame_eom",
    "parse_xml",
)
