# SPDX-License-Identifier: GPL-3.0-or-later
"""Many clients on one NETCONF session: the multiplexer behind ``shared`` leases.

A device that serves one NETCONF session per connection (TLS, RFC 7589; SSH devices that refuse
or ignore a second ``netconf`` channel) is still leased to any number of clients at once. Each
client gets the device's original hello and speaks NETCONF as if the session were its own:

* **message-ids** -- every forwarded ``<rpc>`` gets a listener-unique message-id; the reply gets
  the client's own back, in the client's quotes. Nothing else of a message changes, so two
  clients may use the same ids (ncclient's uuids, or "1", "2", ... of simpler clients).
* **fairness** -- clients with queued RPCs take turns (round robin, one RPC per turn) and each
  has at most ``cap`` RPCs outstanding at the device, so a client with a hundred queued RPCs
  delays another client's single RPC by at most ``cap`` RPCs.
* **locks** -- to the device, every client is the same session, so it would let any of them
  edit a datastore another one locked, or unlock it. The listener keeps the locks per client
  and answers as a device answers another session: ``lock-denied`` (with the device session's
  id) for ``<lock>``, ``in-use`` for ``<edit-config>``, ``<copy-config>``, ``<delete-config>``
  on the locked datastore and for ``<commit>`` / ``<discard-changes>`` on a locked candidate.
  A client that ends holding a lock has it released for it, as a device does when a session
  ends (for the candidate, its uncommitted changes are discarded first, RFC 6241 8.3.5.2).
* **sessions** -- a client's ``<close-session>`` ends only that client (answered here, after
  the replies to its earlier RPCs); ``<kill-session>`` is refused.
* **confirmed commits** -- a ``<commit><confirmed/>`` without ``<persist>`` belongs to the
  session that issued it (RFC 6241 section 8.4.1): only it may confirm or cancel it, and if it
  ends first the device rolls back. To the device every client is that one session, so the
  listener keeps the owner: another client's ``<commit>`` or ``<cancel-commit>`` is answered
  ``in-use`` until the owner confirms, cancels, or the confirm timeout passes; a client that
  ends with its confirmed commit pending gets a ``<cancel-commit>`` sent for it. (With
  ``<persist>`` the commit is no session's: any client may confirm it with its persist-id.)
* **notifications** go to the clients whose ``<create-subscription>`` (or RFC 8639
  ``<establish-subscription>``) the device accepted; without one they are dropped.
* **bounds** -- messages are framed with ``max_message``; a client's queue holds at most
  ``queue_limit`` RPCs or ``max_message`` bytes (its socket is not read beyond that); a client
  that does not read its replies is cut off when more than ``max_message`` bytes wait for it.

* **liveness** -- :meth:`Multiplexer.watch_liveness`: a session the device has been silent on for
  ``interval`` s gets a cheap ``<get-config>`` of the listener's own (its own message-id, never
  one of a client's); no byte from the device within ``timeout`` s and the device is declared
  dead and the session closed. TLS has no keepalive of its own (RFC 8071 3.1 S7 asks for one).

Replies to RPCs of a client that left are swallowed, as are replies to the listener's own RPCs.
Replies are delivered to each client in the order of its requests (RFC 6241 section 4.1),
including those answered here.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from netconf_callhome.errors import FramingError, LeaseError
from netconf_callhome.protocol.framing import EOM, Framer, parse_hello
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.sessions.xmlscan import (
    COMMIT_OPERATIONS,
    NS_BASE,
    NS_NOTIFICATION,
    NS_SUBSCRIBED,
    Request,
    internal_rpc,
    ok,
    parse_request,
    reply_is_error,
    reply_is_ok,
    restore_reply_id,
    root_start_tag,
    rpc_error,
)

log = logging.getLogger("netconf_callhome.mux")

DEFAULT_CAP = 4
DEFAULT_QUEUE_LIMIT = 64
_READ = 65536
# The liveness probe: the running configuration filtered down to an element no device has. Any
# server answers it at once with an empty <data/> (a server that rejects the filter answers an
# <rpc-error>, just as fast: any reply is proof of life); it locks nothing and changes nothing.
LIVENESS_RPC = (
    '<get-config><source><running/></source><filter type="subtree">'
    '<liveness-check xmlns="urn:netconf-callhome:liveness"/></filter></get-config>'
)


class _Slot:
    """A reply position in one client's stream: filled by the device or here, sent in order."""

    __slots__ = ("data", "end_after")

    def __init__(self, data: Optional[bytes] = None, end_after: bool = False) -> None:
        self.data = data
        self.end_after = end_after


class _Pending:
    """An RPC at the device, under the listener's message-id."""

    __slots__ = ("lid", "client", "slot", "request", "original", "quote", "answered")

    def __init__(
        self,
        lid: bytes,
        client: Optional["_Client"],
        slot: Optional[_Slot],
        request: Optional[Request],
        answered: "Optional[asyncio.Future[bytes]]" = None,
    ) -> None:
        self.lid = lid
        self.client = client  # None: the listener's own RPC, its reply is swallowed
        self.slot = slot
        self.request = request
        self.answered = answered  # the listener's own RPC that waits for its reply (liveness)
        attr = request.message_id if request is not None else None
        self.original = request.raw[attr.start : attr.end] if request is not None and attr is not None else b""
        self.quote = attr.quote if attr is not None else b'"'


class _Lock:
    """A datastore locked (or being locked) by one client over the shared session."""

    __slots__ = ("owner", "lid", "confirmed", "orphaned")

    def __init__(self, owner: "_Client", lid: bytes) -> None:
        self.owner = owner
        self.lid = lid  # the listener message-id of the <lock> that took it
        self.confirmed = False  # the device said <ok/>
        self.orphaned = False  # the owner left before the device answered its <lock>


class _ConfirmedCommit:
    """A client's confirmed commit without persist, pending at the device until ``deadline``."""

    __slots__ = ("owner", "deadline")

    def __init__(self, owner: "_Client", deadline: float) -> None:
        self.owner = owner
        self.deadline = deadline


DEFAULT_CONFIRM_TIMEOUT = 600  # RFC 6241 section 8.4.5.1: <confirm-timeout> defaults to 600 s


class _Client:
    """One lease client of the shared session."""

    def __init__(self, number: int, writer: asyncio.StreamWriter, max_message: int) -> None:
        self.number = number
        self.writer = writer
        self.to_client = Framer(max_message)
        self.ready = False  # its hello came: its framing is known
        self.queue: Deque[Request] = collections.deque()
        self.queued_bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self.outstanding = 0
        self.slots: Deque[_Slot] = collections.deque()
        self.subscribed = False
        self.gone = False
        self.ended: "asyncio.Future[str]" = asyncio.get_running_loop().create_future()

    def end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)


class Multiplexer:
    """Serves any number of clients at once over one held NETCONF session (``shared`` leases).

    Implements :class:`netconf_callhome.protocol.session.SharedServer`: the held session hands
    it every device message after the hello (:meth:`device_message`) and each shared lease
    (:meth:`serve`).
    """

    def __init__(
        self, held: HeldSession, *, cap: int = DEFAULT_CAP, queue_limit: int = DEFAULT_QUEUE_LIMIT
    ) -> None:
        if cap < 1 or queue_limit < 1:
            raise ValueError("cap and queue_limit must be at least 1")
        self.held = held
        self.cap = cap
        self.queue_limit = queue_limit
        self.max_message = held.max_message
        self._clients: List[_Client] = []
        self._numbers = itertools.count(1)
        self._ids = itertools.count(1)
        # Insertion-ordered: the oldest entry answers a reply that lost its message-id.
        self._inflight: Dict[bytes, _Pending] = {}
        self.locks: Dict[str, _Lock] = {}
        self.confirmed: Optional[_ConfirmedCommit] = None  # a client's confirmed commit, pending
        self._turn = 0
        self._pumping = False
        held.closed.add_done_callback(self._device_closed)

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def session_id(self) -> int:
        """The device session's id, named in lock-denied errors (0: not known, RFC 6241 7.5)."""
        hello = self.held.hello
        return hello.session_id if hello is not None and hello.session_id is not None else 0

    # -- the client side -----------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Serve one client until it or the device ends; returns why."""
        hello = self.held.hello
        if hello is None or self.held.closed.done():
            raise LeaseError("the device session of %s is closed" % self.held.device)
        client = _Client(next(self._numbers), writer, self.max_message)
        self._clients.append(client)
        from_client = Framer(self.max_message)
        writer.write(hello.raw + EOM)
        reason = ""
        try:
            while not client.ended.done():
                done, data = await self._until(client, reader.read(_READ))
                if not done:
                    break
                if not data:
                    reason = "client closed the lease"
                    break
                msgs = from_client.feed(data)
                while msgs:
                    msg = msgs.pop(0)
                    if not client.ready:
                        client.ready = True
                        if parse_hello(msg).base11 and hello.base11:
                            client.to_client.use_chunked()
                            msgs = from_client.use_chunked() + msgs
                        continue
                    self._accept(client, msg)
                self._pump()
                # Bound what is read from this client: wait for room in its queue.
                while not client.ended.done() and not client.room.is_set():
                    await self._until(client, client.room.wait())
                if not (await self._until(client, writer.drain()))[0]:
                    break
        except FramingError as exc:
            reason = "client broke NETCONF framing: %s" % exc.message
        except (ConnectionError, OSError) as exc:
            reason = "client connection lost: %s" % exc
        finally:
            client.end(reason or "client closed the lease")
            self._remove(client)
        return client.ended.result()

    async def _until(self, client: _Client, awaitable: Any) -> Tuple[bool, Any]:
        """(True, ``awaitable``'s result), or (False, None) when the client is ended first."""
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait({task, client.ended}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return True, task.result()
        task.cancel()
        return False, None

    def _accept(self, client: _Client, msg: bytes) -> None:
        request = parse_request(msg)  # FramingError ends this client only
        client.queue.append(request)
        client.queued_bytes += len(msg)
        if len(client.queue) >= self.queue_limit or client.queued_bytes >= self.max_message:
            client.room.clear()

    def _remove(self, client: _Client) -> None:
        if client.gone:
            return
        client.gone = True
        if client in self._clients:
            self._clients.remove(client)
        client.queue.clear()
        client.slots.clear()
        # A lock dies with the session that holds it: release what this client held.
        for datastore, lock in list(self.locks.items()):
            if lock.owner is not client:
                continue
            if lock.confirmed:
                self._release(datastore)
            else:
                lock.orphaned = True  # released when the device answers the <lock>, if it granted it
        confirmed = self._pending_confirmed()
        if confirmed is not None and confirmed.owner is client:
            self._cancel_confirmed("its client ended before confirming it")
        if not self.held.closed.done():
            self._pump()

    # -- scheduling ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send queued RPCs to the device: round robin, one per client per turn, ``cap`` each."""
        if self._pumping:
            return
        self._pumping = True
        try:
            progress = True
            while progress and self._clients and not self.held.closed.done():
                progress = False
                count = len(self._clients)
                start = self._turn % count
                order = self._clients[start:] + self._clients[:start]
                self._turn = start + 1
                for client in order:
                    if self._serve_head(client):
                        progress = True
        finally:
            self._pumping = False

    def _serve_head(self, client: _Client) -> bool:
        """Answer the client's queued requests that are answered here; send at most one to the
        device. True when one went to the device."""
        while client.queue and not client.gone:
            request = client.queue[0]
            answer = self._local_answer(client, request)
            if answer is None and client.outstanding >= self.cap:
                return False
            client.queue.popleft()
            client.queued_bytes -= len(request.raw)
            if len(client.queue) < self.queue_limit and client.queued_bytes < self.max_message:
                client.room.set()
            if answer is not None:
                data, end_after = answer
                client.slots.append(_Slot(data, end_after))
                if end_after:
                    client.queue.clear()  # nothing after <close-session> is served
                    client.queued_bytes = 0
                    client.room.set()
                self._flush(client)
                continue
            self._forward(client, request)
            return True
        return False

    def _forward(self, client: _Client, request: Request) -> None:
        lid = b"%d" % next(self._ids)
        if request.base("lock") and request.target and request.target not in self.locks:
            # Held against the others from now on, as the device will see it; dropped again if
            # the device refuses. A second <lock> by the owner goes to the device unrecorded.
            self.locks[request.target] = _Lock(client, lid)
        slot = _Slot()
        client.slots.append(slot)
        client.outstanding += 1
        self._inflight[lid] = _Pending(lid, client, slot, request)
        self._send(request.with_message_id(lid))

    def _send(self, message: bytes) -> None:
        try:
            self.held.send(message)
        except LeaseError:
            pass  # the device session is gone; _device_closed ends every client

    # -- what is answered here -----------------------------------------------------------------

    def _local_answer(self, client: _Client, request: Request) -> Optional[Tuple[bytes, bool]]:
        """(reply, end the client after it) when the listener answers this RPC itself."""
        if request.base("close-session"):
            return ok(request), True
        if request.message_id is None:
            # A device answers so too (RFC 6241 4.1); without an id no reply could be routed.
            return (
                rpc_error(
                    request,
                    error_type="rpc",
                    tag="missing-attribute",
                    message="the <rpc> has no message-id attribute",
                    info="<bad-attribute>message-id</bad-attribute><bad-element>rpc</bad-element>",
                ),
                False,
            )
        if request.base("kill-session"):
            # Every client of a shared lease sees the same device session-id: <kill-session>
            # would either end the session all of them share or reach a session the listener
            # cannot attribute to anyone. Ending a lease is <close-session>'s job.
            return (
                rpc_error(
                    request,
                    error_type="protocol",
                    tag="operation-not-supported",
                    message="kill-session is not supported on a session the listener shares between clients",
                ),
                False,
            )
        if request.namespace == NS_BASE and request.operation in COMMIT_OPERATIONS:
            confirmed = self._pending_confirmed()
            if confirmed is not None and confirmed.owner is not client and "persist-id" not in request.options:
                return (
                    rpc_error(
                        request,
                        error_type="protocol",
                        tag="in-use",
                        message="a confirmed commit of another client of this session is pending: only that "
                        "client can confirm or cancel it (RFC 6241 section 8.4.1)",
                        info="<session-id>%d</session-id>" % self.session_id,
                    ),
                    False,
                )
        other = self._locked_by_other(client, request)
        if other is None:
            return None
        datastore, _lock = other
        if request.base("lock"):
            return (
                rpc_error(
                    request,
                    error_type="protocol",
                    tag="lock-denied",
                    message="the %s datastore is locked by another client of this session" % datastore,
                    info="<session-id>%d</session-id>" % self.session_id,
                ),
                False,
            )
        if request.base("unlock"):
            return (
                rpc_error(
                    request,
                    error_type="protocol",
                    tag="operation-failed",
                    message="the lock on the %s datastore is held by another client of this session" % datastore,
                    info="<session-id>%d</session-id>" % self.session_id,
                ),
                False,
            )
        return (
            rpc_error(
                request,
                error_type="protocol",
                tag="in-use",
                message="the %s datastore is locked by another client of this session" % datastore,
            ),
            False,
        )

    def _locked_by_other(self, client: _Client, request: Request) -> Optional[Tuple[str, _Lock]]:
        if request.base("commit") or request.base("discard-changes"):
            datastore = "candidate"
        elif request.target:
            datastore = request.target
        else:
            return None
        lock = self.locks.get(datastore)
        if lock is None or lock.owner is client:
            return None
        return datastore, lock

    def _release(self, datastore: str) -> None:
        """Unlock a datastore for a client that left (replies swallowed)."""
        self.locks.pop(datastore, None)
        if self.held.closed.done():
            return
        if datastore == "candidate":
            self._internal("<discard-changes/>")
        self._internal("<unlock><target><%s/></target></unlock>" % datastore)
        log.info("event=lease.lock_released device=%s datastore=%s", self.held.device, datastore)

    def _pending_confirmed(self) -> Optional[_ConfirmedCommit]:
        """The pending confirmed commit, forgotten once its confirm timeout has passed (the
        device has rolled it back by then, silently)."""
        if self.confirmed is not None and time.monotonic() > self.confirmed.deadline:
            self.confirmed = None
        return self.confirmed

    def _cancel_confirmed(self, reason: str) -> None:
        """Roll back a client's confirmed commit, as a device does when its session ends."""
        self.confirmed = None
        if self.held.closed.done():
            return
        self._internal("<cancel-commit/>")
        log.info("event=lease.confirmed_commit_cancelled device=%s reason=%r", self.held.device, reason)

    def _internal(self, body: str, answered: "Optional[asyncio.Future[bytes]]" = None) -> None:
        lid = b"%d" % next(self._ids)
        self._inflight[lid] = _Pending(lid, None, None, None, answered)
        self._send(internal_rpc(lid, body))

    # -- liveness --------------------------------------------------------------------------------

    def probe(self) -> "asyncio.Future[bytes]":
        """Send the liveness RPC; the future gets the device's reply (swallowed for clients)."""
        answered: "asyncio.Future[bytes]" = asyncio.get_running_loop().create_future()
        self._internal(LIVENESS_RPC, answered)
        return answered

    async def watch_liveness(
        self, interval: float, timeout: float, on_dead: Optional[Callable[[str], None]] = None
    ) -> None:
        """Until the session closes: probe it after ``interval`` s of silence from the device;
        close it when nothing at all comes back within ``timeout`` s.

        Any byte from the device counts as alive (a long reply still streaming, a notification),
        not only the probe's reply: a device busy with a client's slow RPC answers the probe only
        after it, but it is not dead. A hung device process (SIGSTOP, a deadlock) or a dead path
        sends nothing.
        """
        held = self.held
        while not held.closed.done():
            idle = time.monotonic() - held.last_received
            if idle < interval:
                await asyncio.wait({held.closed}, timeout=interval - idle)
                continue
            mark = held.last_received
            answered = self.probe()
            sent = time.monotonic()
            while not held.closed.done() and not answered.done() and held.last_received == mark:
                remaining = sent + timeout - time.monotonic()
                if remaining <= 0:
                    break
                waits: "set[asyncio.Future[Any]]" = {held.closed, answered}
                await asyncio.wait(waits, timeout=remaining)
            if held.closed.done() or answered.done() or held.last_received != mark:
                continue  # alive (or closed anyway); the idle clock restarts from its last byte
            reason = "no answer to a liveness check within %g s after %.0f s of silence" % (timeout, idle)
            log.warning(
                "event=device.unresponsive device=%s peer=%s transport=%s idle_s=%.0f timeout_s=%g",
                held.device,
                held.peer,
                held.transport,
                idle,
                timeout,
            )
            if on_dead is not None:
                on_dead(reason)
            held.close(reason)
            return

    # -- the device side -----------------------------------------------------------------------

    def device_message(self, msg: bytes) -> None:
        """A message from the device after its hello: a reply to route or a notification."""
        try:
            tag = root_start_tag(msg)
        except FramingError as exc:
            log.debug("event=lease.device_message_dropped device=%s error=%r", self.held.device, exc.message)
            return
        if tag.local == b"notification":
            for subscriber in list(self._clients):
                if subscriber.subscribed and subscriber.ready:
                    self._write(subscriber, msg)
            return
        if tag.local != b"rpc-reply":
            return
        attr = tag.attribute(b"message-id")
        if attr is not None:
            pending = self._inflight.pop(msg[attr.start : attr.end], None)
        elif self._inflight:
            # NETCONF answers in request order (RFC 6241 4.1): an id-less reply (a device's
            # malformed-message error) answers the oldest RPC still outstanding.
            pending = self._inflight.pop(next(iter(self._inflight)))
        else:
            pending = None
        if pending is None:
            return
        if pending.answered is not None and not pending.answered.done():
            pending.answered.set_result(msg)
        self._settle(pending, msg)
        client = pending.client
        if client is None or client.gone or pending.slot is None:
            return  # the listener's own RPC, or its client left: swallowed
        client.outstanding -= 1
        pending.slot.data = restore_reply_id(msg, attr, pending.original, pending.quote) if attr else msg
        self._flush(client)
        self._pump()

    def _settle(self, pending: _Pending, reply: bytes) -> None:
        """What a reply changes: locks granted or released, subscriptions accepted."""
        request = pending.request
        if request is None:
            return
        if request.base("lock"):
            lock = self.locks.get(request.target)
            if lock is None or lock.lid != pending.lid:
                return
            if not reply_is_ok(reply):
                del self.locks[request.target]
            elif lock.orphaned:
                self._release(request.target)
            else:
                lock.confirmed = True
        elif request.base("unlock"):
            lock = self.locks.get(request.target)
            if lock is not None and lock.owner is pending.client and reply_is_ok(reply):
                del self.locks[request.target]
        elif request.base("commit") or request.base("cancel-commit"):
            if pending.client is not None and reply_is_ok(reply):
                self._committed(pending.client, request)
        elif (
            (request.namespace == NS_NOTIFICATION and request.operation == "create-subscription")
            or (request.namespace == NS_SUBSCRIBED and request.operation == "establish-subscription")
        ) and pending.client is not None and not reply_is_error(reply):
            pending.client.subscribed = True

    def _committed(self, client: _Client, request: Request) -> None:
        """The device accepted a client's <commit> or <cancel-commit>."""
        options = request.options
        if request.base("commit") and "confirmed" in options and "persist" not in options:
            try:
                timeout = int(options.get("confirm-timeout") or DEFAULT_CONFIRM_TIMEOUT)
            except ValueError:
                timeout = DEFAULT_CONFIRM_TIMEOUT  # the device accepted it; keep the owner its default time
            self.confirmed = _ConfirmedCommit(client, time.monotonic() + max(timeout, 1))
            if client.gone:  # it left before the device answered: roll back, as its session ended
                self._cancel_confirmed("its client ended before the device accepted it")
        else:
            # A plain commit confirms the pending one; <cancel-commit> rolls it back; a confirmed
            # commit with <persist> belongs to no session.
            self.confirmed = None

    def _flush(self, client: _Client) -> None:
        while client.slots and client.slots[0].data is not None and not client.gone:
            slot = client.slots.popleft()
            assert slot.data is not None
            self._write(client, slot.data)
            if slot.end_after:
                client.end("client closed the session")

    def _write(self, client: _Client, msg: bytes) -> None:
        writer = client.writer
        if client.ended.done() or writer.is_closing():
            return
        writer.write(client.to_client.encode(msg))
        transport = writer.transport
        if transport is not None and transport.get_write_buffer_size() > self.max_message:
            # The client does not read: keeping its replies would hold memory without bound.
            client.end("client does not read its replies (more than %d bytes waiting)" % self.max_message)
            transport.abort()

    def _device_closed(self, fut: "asyncio.Future[str]") -> None:
        reason = "device session closed: %s" % (fut.result() if not fut.cancelled() else "cancelled")
        for client in list(self._clients):
            client.end(reason)
        self._inflight.clear()
        self.locks.clear()
