# SPDX-License-Identifier: GPL-3.0-or-later
"""A device's held call-home session and the leases that hand it to clients.

Two ways to lease, chosen per device:

``channel``  SSH devices that accept another ``netconf`` channel on the held connection get a
             fresh channel per lease; bytes are piped untouched and the client runs its own
             hello with the device. Leases on one device then run side by side.
``shared``   TLS devices (one NETCONF session per connection, RFC 7589) and SSH devices that
             refuse a second channel: the listener keeps the one session it opened and proxies
             whole messages. The client gets the device's original hello; its own hello and its
             ``<close-session>`` are answered here, so the device session outlives the lease.
             Replies to RPCs still outstanding when a lease ends are swallowed, so the next
             lease never sees them. One lease at a time per device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Protocol, Tuple

from netconf_callhome.errors import (
    FramingError,
    HandshakeError,
    LeaseError,
)

from netconf_callhome.protocol.framing import CLIENT_HELLO, Framer, Hello, is_close_session, message_id, ok_reply, parse_hello, reply_id

log = logging.getLogger("netconf_callhome.session")

CHANNEL = "channel"
SHARED = "shared"
_READ = 65536


class Carrier(Protocol):
    """The byte pipe under a held NETCONF session (an SSH channel or a TLS connection)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class HeldSession:
    """The NETCONF session the listener opened on a device's call-home connection."""

    def __init__(
        self,
        *,
        device: str,
        transport: str,
        peer: str,
        fingerprint: str,
        max_hello: int,
        max_message: int,
        open_channel: Optional[Callable[[], Awaitable[Tuple[Any, Any]]]] = None,
    ) -> None:
        self.device = device
        self.transport = transport
        self.peer = peer
        self.fingerprint = fingerprint
        self.mode = SHARED
        self.hello: Optional[Hello] = None
        self.connected_at = time.time()
        self.max_message = max_message
        self._framer = Framer(max_hello)
        self._carrier: Optional[Carrier] = None
        self._hello_waiter: "asyncio.Future[Hello]" = asyncio.get_running_loop().create_future()
        # The waiter may fail before anyone awaits it (connection lost while opening the channel).
        self._hello_waiter.add_done_callback(_retrieve)
        self.closed: "asyncio.Future[str]" = asyncio.get_running_loop().create_future()
        self._sink: Optional[Callable[[bytes], None]] = None
        self._swallow: Dict[bytes, None] = {}
        self._lease_lock = asyncio.Lock()
        self.active_leases = 0
        self.failed = False  # closed because the device broke the protocol, not a plain drop
        # From the SSH transport: opens a new ``netconf`` channel on the device's connection.
        self.open_channel = open_channel

    # -- carrier callbacks ---------------------------------------------------------------------

    def attach(self, carrier: Carrier) -> None:
        self._carrier = carrier
        carrier.write(CLIENT_HELLO + b"]]>]]>")

    def data_received(self, data: bytes) -> None:
        try:
            self._dispatch(self._framer.feed(data))
        except FramingError as exc:
            self.failed = True
            self.close("device broke NETCONF framing: %s" % exc.message)

    def _dispatch(self, messages: "list[bytes]") -> None:
        for msg in messages:
            if not self._hello_waiter.done():
                try:
                    hello = parse_hello(msg)
                except FramingError as exc:
                    self._hello_waiter.set_exception(HandshakeError("bad hello from device: %s" % exc.message))
                    return
                self._framer.max_message = self.max_message
                self.hello = hello
                self._hello_waiter.set_result(hello)
                if hello.base11:
                    self._dispatch(self._framer.use_chunked())
                    return
                continue
            rid = reply_id(msg)
            if rid is not None and rid in self._swallow:
                del self._swallow[rid]
                continue
            if self._sink is not None:
                self._sink(msg)
            # Without a lease, notifications and stray replies are dropped on purpose.

    def connection_lost(self, reason: str) -> None:
        if not self._hello_waiter.done():
            self._hello_waiter.set_exception(HandshakeError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)  # the service watches this future

    # -- lifecycle -----------------------------------------------------------------------------

    async def wait_hello(self) -> Hello:
        hello = await self._hello_waiter
        if self.closed.done():  # the hello came, but the device broke the session right after
            raise HandshakeError(self.closed.result())
        return hello

    def send(self, message: bytes) -> None:
        if self._carrier is None or self.closed.done():
            raise LeaseError("the device session of %s is closed" % self.device)
        self._carrier.write(self._framer.encode(message))

    def close(self, reason: str) -> None:
        if self._carrier is not None:
            self._carrier.close()
        self.connection_lost(reason)

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    # -- leases --------------------------------------------------------------------------------

    async def lease(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Serve one lease on the client's streams until either side ends it; returns why."""
        self.active_leases += 1
        try:
            if self.mode == CHANNEL and self.open_channel is not None:
                try:
                    chan_writer, chan_reader = await self.open_channel()
                except LeaseError:
                    self.mode = SHARED  # the device refused a second channel: fall back for good
                else:
                    return await _pipe(reader, writer, chan_reader, chan_writer, self.closed)
            async with self._lease_lock:
                return await self._shared_lease(reader, writer)
        finally:
            self.active_leases -= 1

    async def _shared_lease(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        assert self.hello is not None
        from_client = Framer(self.max_message)
        to_client = Framer(self.max_message)
        writer.write(self.hello.raw + b"]]>]]>")
        outstanding: Dict[bytes, None] = {}

        def deliver(msg: bytes) -> None:
            rid = reply_id(msg)
            if rid is not None:
                outstanding.pop(rid, None)
            writer.write(to_client.encode(msg))

        got_hello = False
        closed_wait: "asyncio.Future[str]" = asyncio.ensure_future(asyncio.shield(self.closed))
        try:
            while True:
                read: "asyncio.Future[Any]" = asyncio.ensure_future(reader.read(_READ))
                done = (await asyncio.wait({read, closed_wait}, return_when=asyncio.FIRST_COMPLETED))[0]
                if closed_wait in done:
                    read.cancel()
                    return "device session closed: %s" % self.closed.result()
                data = read.result()
                if not data:
                    return "client closed the lease"
                msgs = from_client.feed(data)
                while msgs:
                    msg = msgs.pop(0)
                    if not got_hello:
                        got_hello = True
                        if parse_hello(msg).base11 and self.hello.base11:
                            to_client.use_chunked()
                            msgs = from_client.use_chunked() + msgs
                        # Only now is the client's framing known: device messages before this
                        # point (a notification left running) are dropped as without a lease.
                        self._sink = deliver
                        continue
                    if self._client_message(msg, outstanding, writer, to_client):
                        return "client closed the session"
                await writer.drain()
        except FramingError as exc:
            return "client broke NETCONF framing: %s" % exc.message
        except (ConnectionError, OSError) as exc:
            return "client connection lost: %s" % exc
        finally:
            closed_wait.cancel()
            self._sink = None
            # Replies to RPCs the client abandoned must not reach the next lease.
            self._swallow.update(outstanding)

    def _client_message(
        self, msg: bytes, outstanding: Dict[bytes, None], writer: asyncio.StreamWriter, to_client: Framer
    ) -> bool:
        """Forward one client message; True when it was ``<close-session>`` (answered here)."""
        if is_close_session(msg):
            writer.write(to_client.encode(ok_reply(message_id(msg))))
            return True
        mid = message_id(msg)
        if mid is not None:
            outstanding[mid] = None
        self.send(msg)
        return False


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    chan_reader: asyncio.StreamReader,
    chan_writer: asyncio.StreamWriter,
    device_closed: "asyncio.Future[str]",
) -> str:
    """Copy bytes both ways between a lease client and a dedicated device channel."""

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, label: str) -> str:
        while True:
            data = await src.read(_READ)
            if not data:
                return label
            dst.write(data)
            await dst.drain()

    up = asyncio.ensure_future(copy(reader, chan_writer, "client closed the lease"))
    down = asyncio.ensure_future(copy(chan_reader, writer, "device closed the NETCONF channel"))
    closed_wait = asyncio.ensure_future(asyncio.shield(device_closed))
    try:
        done = (await asyncio.wait({up, down, closed_wait}, return_when=asyncio.FIRST_COMPLETED))[0]
        first = done.pop()
        if first is closed_wait:
            return "device session closed: %s" % device_closed.result()
        exc = first.exception()
        return str(exc) if exc else first.result()
    finally:
        for task in (up, down, closed_wait):
            task.cancel()
        try:
            chan_writer.close()
        except Exception:  # the channel may already be gone with its connection
            pass
